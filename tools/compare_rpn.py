#!/usr/bin/env python
"""FL-RPN against the standard RPN: Faster R-CNN three times (standard RPN, FL-RPN sigmoid,
FL-RPN softmax), same data, backbone and schedule, over seeds. A preset of tools/compare.py,
with the same outputs in --output-dir (comparison.md, comparison.json, comparison.png,
proposal_recall.png, rpn_losses.png, losses.png, <model>/seed<S>/).

    tools/compare_rpn.py                                   # embedded dataset, quick R18 configs
    tools/compare_rpn.py --seeds 0,1,2,3,4 --output-dir output/cmp5
    tools/compare_rpn.py --dataset p_train=train.json:imgs --dataset p_val=val.json:imgs \
        --dataset-train p_train --dataset-test p_val    # your photos: the quick configs fit
                                                        # classes, input size and anchors to them
    tools/compare_rpn.py --configs R50 --dataset mine=ann.json:imgs \\
        --dataset-train mine --dataset-test mine MODEL.ROI_HEADS.NUM_CLASSES 3

Default length: the whole comparison in at most about 45 minutes (--total-minutes 45) on any
machine and any dataset: the first run (standard RPN, seed 0) trains for 78% of 45 / 9
minutes or the configs' 600 iterations, whichever ends first, and every other run the
iterations it reached, so that all nine train the same schedule. --iters N fixes
the length instead (the same on every machine). The report states, per metric, the smallest
difference the seeds can detect and the seeds a 2-point difference would need: see
docs/comparisons.md, "FL-RPN against standard Faster R-CNN".
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from focal_rpn.comparison import ComparisonError, Entry, run_comparison  # noqa: E402
from focal_rpn.comparison.cli import DEFAULT_TOTAL_MINUTES, add_comparison_arguments  # noqa: E402

CONFIG_SETS = {
    "quick": [
        ("RPN", "configs/quick_faster_rcnn_R18.yaml"),
        ("FL-RPN sigmoid", "configs/quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml"),
        ("FL-RPN softmax", "configs/quick_faster_rcnn_R18_FL-RPN_softmax.yaml"),
    ],
    "R50": [
        ("RPN", "configs/faster_rcnn_R50_FPN.yaml"),
        ("FL-RPN sigmoid", "configs/faster_rcnn_R50_FL-RPN_sigmoid.yaml"),
        ("FL-RPN softmax", "configs/faster_rcnn_R50_FL-RPN_softmax.yaml"),
    ],
}
#: Seeds of the default comparison (see the module docstring for its measured duration).
DEFAULT_SEEDS = "0,1,2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="quick", choices=sorted(CONFIG_SETS),
                   help="quick: the CPU ResNet-18 recipe (default); R50: the ResNet-50 FPN configs (GPU)")
    add_comparison_arguments(p, default_seeds=DEFAULT_SEEDS, default_output="output/compare_rpn")
    args = p.parse_args(argv)
    if args.configs == "quick" and args.iters is None and args.time_budget_minutes is None \
            and args.total_minutes is None:
        args.total_minutes = DEFAULT_TOTAL_MINUTES  # the quick configs' schedule is fixed
    return args


def main(argv=None):
    args = parse_args(argv)
    entries = [Entry(name, os.path.join(REPO, path), []) for name, path in CONFIG_SETS[args.configs]]
    try:
        return run_comparison(entries, args, title="compare_rpn")
    except ComparisonError as e:
        print(f"compare_rpn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
