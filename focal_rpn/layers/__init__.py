"""Layers: a multithreaded CPU ROIAlign behind detectron2's ``ROIAlign`` interface."""
from .roi_align import FastROIAlign, roi_align_cpu, use_fast_roi_align

__all__ = ["FastROIAlign", "roi_align_cpu", "use_fast_roi_align"]
