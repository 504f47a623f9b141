#!/usr/bin/env python
"""Train / evaluate focal_rpn models (FocalRetinaNet, Faster R-CNN with FL-RPN) with detectron2.

    tools/train_net.py --config-file configs/quick_retinanet_R18.yaml OUTPUT_DIR output/demo
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/demo/model_final.pth
    tools/train_net.py --config-file CFG --resume                  # continue the last checkpoint
    tools/train_net.py --config-file CFG --dataset mine=ann.json:images \
        DATASETS.TRAIN '("mine",)' DATASETS.TEST '("mine",)' MODEL.RETINANET.NUM_CLASSES 3
    torchrun --nproc_per_node 2 tools/train_net.py --config-file CFG   # gloo on CPU, NCCL on GPU

The logic lives in focal_rpn.engine.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from focal_rpn.engine import build_argument_parser, launch_main, main  # noqa: E402


def cli():
    args = build_argument_parser().parse_args()
    print("Command Line Args:", args)
    from focal_rpn.data.datasets import DatasetError
    from focal_rpn.engine.reliability import ConfigError

    try:
        launch_main(main, args)
    except (DatasetError, ConfigError) as e:  # bad data or config: the message says what to do
        sys.exit(f"train_net: error: {e}")


if __name__ == "__main__":
    cli()
