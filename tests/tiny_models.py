"""Helpers for model tests: this repo's configs shrunk to seconds on CPU (no weights)."""
import os

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import focal_rpn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
NUM_CLASSES = 3
IMAGE_SIZE = 96

# (name, config file, extra opts): every model this plugin offers, plus the stock baseline.
MODEL_CONFIGS = [
    ("retinanet_sigmoid", "retinanet_R50.yaml", []),
    ("retinanet_softmax", "retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.ACTIVATION", "softmax"]),
    ("faster_rcnn_rpn", "faster_rcnn_R50_FPN.yaml", []),
    ("fl_rpn_sigmoid", "faster_rcnn_R50_FL-RPN_sigmoid.yaml", []),
    ("fl_rpn_softmax", "faster_rcnn_R50_FL-RPN_softmax.yaml", []),
]


#: The overrides of tiny_cfg, as KEY VALUE pairs (for command lines too).
TINY_OPTS = [
    "MODEL.WEIGHTS", "",
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RETINANET.NUM_CLASSES", NUM_CLASSES,
    "MODEL.RETINANET.NUM_CONVS", 2,
    "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
    "INPUT.MIN_SIZE_TEST", IMAGE_SIZE,
    "INPUT.MAX_SIZE_TEST", IMAGE_SIZE,
    # float32 whatever the CPU ("auto" is bfloat16 on CPUs with native bfloat16): the same
    # numbers on every machine; tests/test_cpu_bf16.py turns it on where it is the subject.
    "MODEL.FOCAL_RETINANET.CPU_BF16", False,
]


def tiny_cfg(config_file, opts=()):
    """The config file with a ResNet-18, few channels, small images, no pretrained weights."""
    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config_file))
    cfg.merge_from_list(TINY_OPTS + list(opts))
    return cfg


def tiny_model(config_file, opts=(), seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(config_file, opts))


def random_boxes(num_boxes, size=IMAGE_SIZE, generator=None):
    """(num_boxes, 4) XYXY boxes inside a size x size image, 8 to size/2 pixels wide."""
    xy = torch.rand(num_boxes, 2, generator=generator) * size / 2
    wh = 8 + torch.rand(num_boxes, 2, generator=generator) * (size / 2 - 8)
    return torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)


def batched_inputs(num_images=2, num_boxes=3, size=IMAGE_SIZE, seed=0):
    """detectron2 model inputs: CHW uint8-valued float images with random ground truth."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(num_images):
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(random_boxes(num_boxes, size, g))
        instances.gt_classes = torch.randint(0, NUM_CLASSES, (num_boxes,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        inputs.append({"image": image, "instances": instances, "height": size, "width": size})
    return inputs


#: Shrinks the command lines of the quick (CPU) recipes to seconds: 64 px images, 2 per batch,
#: no loader workers. Tools that train through train_net (compare, learning_curve) add these.
TINY_RUN_OPTS = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]


def tiny_dataset_args(root, name):
    """A 4-image generated COCO dataset under ``root``, as the tools' arguments that register
    it as ``name`` and train and test on it."""
    from focal_rpn.data.synthetic import make_tiny_coco

    json_file, image_root = make_tiny_coco(root, num_images=4, image_size=64)
    return ["--dataset", f"{name}={json_file}:{image_root}",
            "--dataset-train", name, "--dataset-test", name]

