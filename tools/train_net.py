#!/usr/bin/env python
"""Train / evaluate focal_rpn models (FocalRetinaNet, Faster R-CNN with FL-RPN) with detectron2.

    tools/train_net.py --config-file configs/quick_retinanet_R18.yaml OUTPUT_DIR output/demo
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/demo/model_final.pth
    tools/train_net.py --config-file CFG --resume                  # continue the last checkpoint
    tools/train_net.py --config-file CFG --dataset mine=ann.json:images \
        DATASETS.TRAIN '("mine",)' DATASETS.TEST '("mine",)' MODEL.RETINANET.NUM_CLASSES 3
    torchrun --nproc_per_node 2 tools/train_net.py --config-file CFG   # gloo on CPU, NCCL on GPU
    tools/train_net.py ... --threads 1        # CPU threads per process (default: the free cores)

A mistake in the input (config, dataset, image, weights, output folder) ends with one line
``train_net: error: ...``; ``--debug`` or FOCAL_RPN_DEBUG=1 shows the traceback.
The logic lives in focal_rpn.engine.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from focal_rpn.engine import build_argument_parser, launch_main, main  # noqa: E402
from focal_rpn.engine.user_errors import debug_requested, quietly, run_tool  # noqa: E402


def cli():
    args = build_argument_parser().parse_args()
    print("Command Line Args:", args)
    debug = args.debug or debug_requested()
    # quietly: also in the processes --num-gpus N starts on CPU
    run_tool("train_net", lambda: launch_main(main if debug else quietly(main), args), debug=debug,
             resumable=True)


if __name__ == "__main__":
    cli()
