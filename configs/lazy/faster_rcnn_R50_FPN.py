# Baseline: Faster R-CNN R50-FPN with detectron2's standard RPN (256 anchors per image sampled
# 1:1, binary cross entropy), as configs/faster_rcnn_R50_FPN.yaml: detectron2's own
# common/models/mask_rcnn_fpn.py without the mask head, lr 0.02, COCO 1x schedule.
from detectron2 import model_zoo

from ._coco_1x import dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
model.backbone.bottom_up.freeze_at = 2
train.output_dir = "./output/lazy/faster_rcnn_R50_FPN"
