# FL-RPN (Chen, Song, Jiang, PRCV 2018), softmax form, as configs/faster_rcnn_R50_FL-RPN_softmax.yaml:
# faster_rcnn_R50_FPN.py with focal_rpn's FocalRPN (every labelled anchor, focal loss alpha 0.25,
# gamma 2, weight lambda 0.1, divided by the number of positive anchors). Same data and schedule.
from detectron2.config import LazyCall as L

from focal_rpn import FocalRPN

from .faster_rcnn_R50_FPN import dataloader, lr_multiplier, model, optimizer, train

model.proposal_generator = L(FocalRPN)(
    **model.proposal_generator,
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    focal_loss_weight=0.1,
    activation="softmax",
)
train.output_dir = "./output/lazy/faster_rcnn_R50_FL-RPN_softmax"
