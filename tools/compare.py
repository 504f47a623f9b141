#!/usr/bin/env python
"""Compare configs or config variants over seeds: tools/compare.py --help.

    tools/compare.py --config A.yaml --config B.yaml --seeds 0,1,2
    tools/compare.py --config C.yaml --variant "CE: MODEL.RETINANET.FOCAL_LOSS_GAMMA 0" --variant "FL:"

The logic lives in focal_rpn.comparison.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from focal_rpn.comparison import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
