# The COCO 1x training of detectron2's own lazy baselines (common/data/coco.py, common/optim.py,
# common/coco_schedule.py, common/train.py) for the R50 configs here: batch 16, 90k iterations,
# lr x0.1 at 60k and 80k. Changed: datasets through focal_rpn.lazy.dataset_names (so a
# "NAME=JSON:IMAGE_DIR" spec registers a COCO-format dataset), COCO AP by focal_rpn's
# FastCOCOEvaluator (the Python-only detectron2 has no C++ COCOeval), no masks, CPU fallback.
# Not a config to train by itself: it has no model.
import torch

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from focal_rpn.evaluation import FastCOCOEvaluator
from focal_rpn.lazy import dataset_names

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
dataloader.train.dataset.names = L(dataset_names)(specs="coco_2017_train")
dataloader.test.dataset.names = L(dataset_names)(specs="coco_2017_val")
dataloader.evaluator = L(FastCOCOEvaluator)(dataset_name="${..test.dataset.names}")

optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x

train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.device = "cuda" if torch.cuda.is_available() else "cpu"
