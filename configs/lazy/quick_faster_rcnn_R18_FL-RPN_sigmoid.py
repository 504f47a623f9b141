# FL-RPN (sigmoid) on the quick CPU recipe (configs/quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml):
# quick_faster_rcnn_R18.py with focal_rpn's FocalRPN, its values read from the yaml.
import os

from detectron2.config import LazyCall as L

from focal_rpn import FocalRPN
from focal_rpn.lazy import yaml_config

from .quick_faster_rcnn_R18 import dataloader, lr_multiplier, model, optimizer, train

_Y = yaml_config(
    os.path.join(os.path.dirname(__file__), "..", "quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml")
)
_FOCAL = _Y.MODEL.FOCAL_RPN

model.proposal_generator = L(FocalRPN)(
    **model.proposal_generator,
    focal_loss_alpha=_FOCAL.ALPHA,
    focal_loss_gamma=_FOCAL.GAMMA,
    focal_loss_weight=_FOCAL.LOSS_WEIGHT,
    activation=_FOCAL.ACTIVATION,
    prior_prob=_FOCAL.PRIOR_PROB,
)
train.output_dir = _Y.OUTPUT_DIR.replace("./output/", "./output/lazy/")
