"""Layers for CPU speed behind detectron2's and PyTorch's interfaces: a multithreaded
ROIAlign and Winograd 3x3 convolutions."""
from .roi_align import FastROIAlign, roi_align_cpu, use_fast_roi_align
from .winograd import WinogradConv2d, use_winograd_convs, winograd_conv3x3, winograd_pays_off

__all__ = [
    "FastROIAlign",
    "roi_align_cpu",
    "use_fast_roi_align",
    "WinogradConv2d",
    "use_winograd_convs",
    "winograd_conv3x3",
    "winograd_pays_off",
]
