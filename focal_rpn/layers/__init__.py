"""Layers for CPU speed behind detectron2's and PyTorch's interfaces: a multithreaded
ROIAlign, Winograd 3x3 convolutions, the RetinaNet head's per-level BatchNorm in one fused op,
and huge-page backed buffers for large fresh tensors."""
from .hugepages import empty_hugepage_backed
from .level_batch_norm import LevelBatchNorm, use_level_batch_norms
from .roi_align import FastROIAlign, roi_align_cpu, use_fast_roi_align
from .winograd import (
    TUNER,
    ConvPathTuner,
    WinogradConv2d,
    use_winograd_convs,
    winograd_conv3x3,
    winograd_pays_off,
    winograd_supported,
)

__all__ = [
    "empty_hugepage_backed",
    "LevelBatchNorm",
    "use_level_batch_norms",
    "FastROIAlign",
    "roi_align_cpu",
    "use_fast_roi_align",
    "WinogradConv2d",
    "use_winograd_convs",
    "winograd_conv3x3",
    "winograd_pays_off",
    "winograd_supported",
    "ConvPathTuner",
    "TUNER",
]
