"""Registered models: importing this package fills detectron2's registries."""
from .backbone import build_basic_resnet_fpn_backbone
from .retinanet import FocalRetinaNet
from .rpn import FocalRPN

__all__ = ["FocalRetinaNet", "FocalRPN", "build_basic_resnet_fpn_backbone"]
