"""Registered models: importing this package fills detectron2's registries."""
from .retinanet import FocalRetinaNet
from .rpn import FocalRPN

__all__ = ["FocalRetinaNet", "FocalRPN"]
