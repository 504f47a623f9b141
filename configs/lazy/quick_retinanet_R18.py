# The demo recipe (configs/quick_retinanet_R18.yaml, `make demo`) as a LazyConfig: detectron2's
# own common/models/retinanet.py with FocalRetinaNet on a quarter-width ResNet-18 FPN, trained
# from scratch on the synthetic shapes dataset with AdamW. Every value is read from the yaml, so
# the two recipes cannot drift apart (tests/test_lazy_configs.py builds both and compares).
# Not carried over: SOLVER.TIME_BUDGET_MINUTES (a hook of focal_rpn's tools/train_net.py, which
# detectron2's lazyconfig_train_net.py does not run): MAX_ITER iterations are trained instead.
import os

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from focal_rpn import FocalRetinaNet
from focal_rpn.lazy import yaml_config
from focal_rpn.modeling.backbone import make_basic_stages

from ._quick_training import quick_training

_Y = yaml_config(os.path.join(os.path.dirname(__file__), "..", "quick_retinanet_R18.yaml"))
_R, _FPN, _HEAD, _ANCHORS = _Y.MODEL.RESNETS, _Y.MODEL.FPN, _Y.MODEL.RETINANET, _Y.MODEL.ANCHOR_GENERATOR

model = L(FocalRetinaNet)(
    **model_zoo.get_config("common/models/retinanet.py").model,
    activation=_Y.MODEL.FOCAL_RETINANET.ACTIVATION,
    winograd=_Y.MODEL.FOCAL_RETINANET.WINOGRAD,
    channels_last=_Y.MODEL.FOCAL_RETINANET.CHANNELS_LAST,
)
model.num_classes = _HEAD.NUM_CLASSES
model.backbone.bottom_up.stem.update(out_channels=_R.STEM_OUT_CHANNELS, norm=_R.NORM)
model.backbone.bottom_up.update(
    stages=L(make_basic_stages)(
        depth=_R.DEPTH, stem_out_channels=_R.STEM_OUT_CHANNELS,
        res2_out_channels=_R.RES2_OUT_CHANNELS, norm=_R.NORM,
    ),
    out_features=list(_R.OUT_FEATURES),
    freeze_at=_Y.MODEL.BACKBONE.FREEZE_AT,
)
model.backbone.update(in_features=list(_FPN.IN_FEATURES), out_channels=_FPN.OUT_CHANNELS)
model.backbone.top_block.in_channels = _R.RES2_OUT_CHANNELS * 8  # res5
model.head.update(
    input_shape=[ShapeSpec(channels=_FPN.OUT_CHANNELS)] * len(_HEAD.IN_FEATURES),
    conv_dims=[_FPN.OUT_CHANNELS] * _HEAD.NUM_CONVS,
    norm=_HEAD.NORM,
    prior_prob=_HEAD.PRIOR_PROB,
    num_anchors=len(_ANCHORS.SIZES[0]) * len(_ANCHORS.ASPECT_RATIOS[0]),
)
model.anchor_generator.sizes = [list(sizes) for sizes in _ANCHORS.SIZES]
model.update(
    focal_loss_alpha=_HEAD.FOCAL_LOSS_ALPHA,
    focal_loss_gamma=_HEAD.FOCAL_LOSS_GAMMA,
    smooth_l1_beta=_HEAD.SMOOTH_L1_LOSS_BETA,
)

dataloader, optimizer, lr_multiplier, train = quick_training(_Y)
