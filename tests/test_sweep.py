"""focal_rpn.comparison.sweep: a metric against a config value over comparisons (Table 1a)."""
import os

import pytest

from focal_rpn.comparison import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quick_retinanet_R18.yaml")
GAMMA = "MODEL.RETINANET.FOCAL_LOSS_GAMMA"


def doc(entries, runs, common=()):
    return {"entries": [{"name": n, "config_file": CONFIG, "opts": o} for n, o in entries],
            "common_opts": list(common),
            "runs": [{"entry": e, "seed": s, "returncode": rc, "metrics": {"AP": ap}}
                     for e, s, rc, ap in runs]}


def test_values_come_from_the_options_else_from_the_config_file():
    first = doc([("CE", [GAMMA, "0.0", "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.75"]), ("FL", [])],
                [("CE", 0, 0, 60.0), ("FL", 0, 0, 62.0), ("CE", 1, 0, 61.0), ("FL", 1, 0, 64.0)])
    second = doc([("g5", [GAMMA, "5"]), ("g1", [GAMMA, "0.5", GAMMA, "1"])],  # the last one wins
                 [("g5", 0, 0, 50.0), ("g1", 0, 0, 63.0), ("g5", 1, 1, None)])  # failed: left out
    points = sweep.sweep_points([first, second], GAMMA, "AP")
    assert points == {0.0: {0: 60.0, 1: 61.0}, 1.0: {0: 63.0}, 2.0: {0: 62.0, 1: 64.0},
                      5.0: {0: 50.0}}
    assert list(sweep.sweep_points([first], GAMMA, "AP", seeds=[1])) == [0.0, 2.0]
    rows = sweep.sweep_table(points, GAMMA, "AP")
    assert "| 2 | 63.0 ± 1.4 | 0, 1 | 62.0, 64.0 |" in rows


def test_two_comparisons_that_disagree_on_one_run_are_refused():
    a = doc([("FL", [])], [("FL", 0, 0, 62.0)])
    b = doc([("FL again", [GAMMA, "2"])], [("FL again", 0, 0, 61.0)])
    with pytest.raises(ValueError, match="seed 0: two comparisons disagree"):
        sweep.sweep_points([a, b], GAMMA, "AP")


def test_the_figure_is_written(tmp_path):
    points = {0.0: {0: 60.0, 1: 61.0}, 2.0: {0: 62.0, 1: 64.0}}
    sweep.plot_sweep(points, GAMMA, "AP", str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 1000
