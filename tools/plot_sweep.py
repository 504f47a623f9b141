#!/usr/bin/env python
"""A metric against one config value over the entries of one or more comparisons, as a figure
and a markdown table (focal_rpn.comparison.sweep). RetinaNet's Table 1a, box AP against gamma:

    tools/plot_sweep.py output/ablation/comparison.json output/gamma/comparison.json \\
        --key MODEL.RETINANET.FOCAL_LOSS_GAMMA --metric AP --seeds 0,1 --output ap_vs_gamma.png
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from focal_rpn.comparison.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
