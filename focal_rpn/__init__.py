"""focal_rpn: RetinaNet and FL-RPN for detectron2.

``import focal_rpn`` registers ``FocalRetinaNet`` (META_ARCH_REGISTRY) and ``FocalRPN``
(PROPOSAL_GENERATOR_REGISTRY); ``add_focal_rpn_config(cfg)`` adds their config nodes.
"""
from . import losses
from .config import add_focal_rpn_config
from .modeling import FocalRetinaNet, FocalRPN

__version__ = "0.1.0"

__all__ = ["add_focal_rpn_config", "losses", "FocalRetinaNet", "FocalRPN", "__version__"]
