# The CPU-sized Faster R-CNN baseline of tools/compare_rpn.py (configs/quick_faster_rcnn_R18.yaml)
# as a LazyConfig: detectron2's own common/models/mask_rcnn_fpn.py without the mask head, on a
# ResNet-18 FPN (BasicBlock stages of focal_rpn's make_basic_stages) trained from scratch on the
# synthetic shapes dataset. Every value is read from the yaml, so the two recipes cannot drift
# apart (tests/test_lazy_configs.py builds both and compares): the FPN levels too (P3-P7 from
# res5 as RetinaNet's with build_basic_resnet_fpn_backbone, else detectron2's P2-P6).
import os

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from focal_rpn.lazy import yaml_config
from focal_rpn.modeling.backbone import make_basic_stages

from ._quick_training import quick_training

_Y = yaml_config(os.path.join(os.path.dirname(__file__), "..", "quick_faster_rcnn_R18.yaml"))
_R, _FPN, _RPN = _Y.MODEL.RESNETS, _Y.MODEL.FPN, _Y.MODEL.RPN
_ROI, _BOX = _Y.MODEL.ROI_HEADS, _Y.MODEL.ROI_BOX_HEAD

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
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
if _Y.MODEL.BACKBONE.NAME == "build_basic_resnet_fpn_backbone":  # P6, P7 from res5
    model.backbone.top_block = L(LastLevelP6P7)(
        in_channels=_R.RES2_OUT_CHANNELS * 8, out_channels="${..out_channels}", in_feature="res5"
    )
else:  # detectron2's build_resnet_fpn_backbone: P6 by max-pooling P5
    model.backbone.top_block = L(LastLevelMaxPool)()


def _stride(feature):
    """Stride of an FPN level "pK": 2^K."""
    return 2 ** int(feature[1:])


model.proposal_generator.update(
    in_features=list(_RPN.IN_FEATURES),
    batch_size_per_image=_RPN.BATCH_SIZE_PER_IMAGE,
    pre_nms_topk=(_RPN.PRE_NMS_TOPK_TRAIN, _RPN.PRE_NMS_TOPK_TEST),
    post_nms_topk=(_RPN.POST_NMS_TOPK_TRAIN, _RPN.POST_NMS_TOPK_TEST),
    nms_thresh=_RPN.NMS_THRESH,
)
model.proposal_generator.head.update(
    in_channels=_FPN.OUT_CHANNELS,
    num_anchors=len(_Y.MODEL.ANCHOR_GENERATOR.SIZES[0]) * len(_Y.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]),
)
model.proposal_generator.anchor_generator.update(
    sizes=[list(s) for s in _Y.MODEL.ANCHOR_GENERATOR.SIZES],
    aspect_ratios=[list(r) for r in _Y.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS],
    strides=[_stride(f) for f in _RPN.IN_FEATURES],
)

model.roi_heads.update(
    num_classes=_ROI.NUM_CLASSES,
    batch_size_per_image=_ROI.BATCH_SIZE_PER_IMAGE,
    box_in_features=list(_ROI.IN_FEATURES),
)
model.roi_heads.box_pooler.update(
    output_size=_BOX.POOLER_RESOLUTION,
    scales=[1.0 / _stride(f) for f in _ROI.IN_FEATURES],
    sampling_ratio=_BOX.POOLER_SAMPLING_RATIO,
    pooler_type=_BOX.POOLER_TYPE,
)
model.roi_heads.box_head.update(
    input_shape=ShapeSpec(
        channels=_FPN.OUT_CHANNELS, height=_BOX.POOLER_RESOLUTION, width=_BOX.POOLER_RESOLUTION
    ),
    conv_dims=[_BOX.CONV_DIM] * _BOX.NUM_CONV,
    fc_dims=[_BOX.FC_DIM] * _BOX.NUM_FC,
    conv_norm=_BOX.NORM,
)
model.roi_heads.box_predictor.update(
    input_shape=ShapeSpec(channels=_BOX.FC_DIM if _BOX.NUM_FC else _BOX.CONV_DIM),
    test_score_thresh=_ROI.SCORE_THRESH_TEST,
    loss_weight={"loss_box_reg": _BOX.BBOX_REG_LOSS_WEIGHT},
)

dataloader, optimizer, lr_multiplier, train = quick_training(_Y)
