#!/usr/bin/env python
"""Box AP against training iterations for one config: each point its own run (the config's
schedule shape at that length), over seeds. Outputs in --output-dir: curve.md, curve.json,
curve.png and it<N>/seed<S>/.

    tools/learning_curve.py                                    # the demo recipe, seed 0
    tools/learning_curve.py --iters 750 --seeds 0,1,2          # adds seeds to the same folder
    tools/learning_curve.py --config-file configs/quick_faster_rcnn_R18.yaml \\
        --iters 300,600,1200 --output-dir output/curve_frcnn

The default (250, 500, 750, 1500, 3000 iterations, seed 0) trains 6000 iterations in all:
about an hour at 0.6 s per iteration.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from focal_rpn.comparison.learning_curve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
