# RetinaNet R50-FPN (Lin et al.), as configs/retinanet_R50.yaml: detectron2's own
# common/models/retinanet.py with focal_rpn's FocalRetinaNet (sigmoid focal loss), lr 0.01,
# COCO 1x schedule.
# Train with detectron2's tools/lazyconfig_train_net.py after `import focal_rpn` (docs/configs.md:
# "LazyConfig (Python) configs").
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from focal_rpn import FocalRetinaNet

from ._coco_1x import dataloader, lr_multiplier, optimizer, train

model = L(FocalRetinaNet)(
    **model_zoo.get_config("common/models/retinanet.py").model,
    activation="sigmoid",  # "softmax": also softmax_prior_prob=0.01, head.num_classes=81
)
model.backbone.bottom_up.freeze_at = 2
optimizer.lr = 0.01
train.output_dir = "./output/lazy/retinanet_R50"
