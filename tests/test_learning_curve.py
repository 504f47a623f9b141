"""tools/learning_curve.py at tiny settings: the demo recipe shrunk to seconds, trained at 2 and
4 iterations on a tiny generated dataset. Checks that each point is a run of its own with the
recipe's schedule shape at that length, that the table and the document hold each run's own
evaluation, and what a second call into the same folder reuses, adds and moves aside."""
import json
import os
import sys

import pytest
import yaml

from focal_rpn.comparison import ComparisonError
from focal_rpn.comparison.learning_curve import parse_iters
from focal_rpn.comparison.runs import fixed_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import learning_curve  # noqa: E402
from tiny_models import TINY_RUN_OPTS, tiny_dataset_args  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "quick_retinanet_R18.yaml")
# the demo recipe shrunk to seconds: a 16-channel FPN and head, TINY_RUN_OPTS
TINY_OPTS = [
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # untrained: keep detections, AP is a number
] + TINY_RUN_OPTS


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset_args(tmp_path_factory.mktemp("curve_data") / "data", "curve_tiny")


@pytest.fixture(scope="module")
def curve(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("curve") / "out"
    rc = learning_curve.main(["--config-file", CONFIG, "--iters", "4,2", "--seeds", "0",
                              "--output-dir", str(out)] + tiny_data + TINY_OPTS)
    with open(out / "curve.json") as f:
        return rc, out, json.load(f)


def _config(run_dir):
    with open(os.path.join(run_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def test_every_point_is_its_own_run_with_the_schedule_shape(curve):
    rc, out, doc = curve
    assert rc == 0
    assert [p["iters"] for p in doc["points"]] == [2, 4]
    for name in ["curve.md", "curve.png"]:
        assert (out / name).stat().st_size > 300, name
    for iters in (2, 4):
        cfg = _config(out / f"it{iters}" / "seed0")
        assert cfg["SOLVER"]["MAX_ITER"] == iters
        assert cfg["SOLVER"]["TIME_BUDGET_MINUTES"] == 0
        # the recipe's steps at 80% and 93% of 3000 iterations, moved to the same fractions
        expected = [s for s in (round(2400 * iters / 3000), round(2800 * iters / 3000)) if 0 < s < iters]
        assert list(cfg["SOLVER"]["STEPS"]) == expected
        with open(out / f"it{iters}" / "seed0" / "run_stats.json") as f:
            assert json.load(f)["iterations"] == iters


def test_table_and_document_hold_each_runs_own_evaluation(curve):
    _, out, doc = curve
    for run in doc["runs"]:
        with open(os.path.join(run["run_dir"], "eval_results.json")) as f:
            results = json.load(f)
        assert run["metrics"]["AP"] == pytest.approx(results["bbox/AP"])
    for point in doc["points"]:
        (run,) = [r for r in doc["runs"] if r["iters"] == point["iters"]]
        assert point["AP"]["mean"] == pytest.approx(run["metrics"]["AP"])
        assert point["AP"]["std"] is None  # one seed: no spread claimed
    table = (out / "curve.md").read_text()
    for run in doc["runs"]:
        assert f"| {run['iters']} | 0 | {run['metrics']['AP']:.1f} |" in table


def test_second_call_reuses_finished_runs_adds_seeds_and_moves_others_aside(curve, tiny_data):
    _, out, _ = curve
    kept = out / "it2" / "seed0" / "model_final.pth"
    mtime = kept.stat().st_mtime_ns
    # it4/seed0 with other options: must not be reused, must not be deleted
    rc = learning_curve.main(["--config-file", CONFIG, "--iters", "2,4", "--seeds", "0,1",
                              "--output-dir", str(out)] + tiny_data + TINY_OPTS +
                             ["SOLVER.BASE_LR", "0.001"])
    assert rc == 0
    # it2/seed0 also differs now (BASE_LR): moved aside, retrained
    assert kept.stat().st_mtime_ns != mtime
    aside = [p for p in (out / "it2").iterdir() if p.name.startswith("seed0.previous-")]
    assert len(aside) == 1 and (aside[0] / "model_final.pth").exists()
    with open(out / "curve.json") as f:
        doc = json.load(f)
    assert sorted((r["iters"], r["seed"]) for r in doc["runs"]) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert all(p["AP"]["n"] == 2 for p in doc["points"])
    mtime = kept.stat().st_mtime_ns
    rc = learning_curve.main(["--config-file", CONFIG, "--iters", "2", "--seeds", "0",
                              "--output-dir", str(out)] + tiny_data + TINY_OPTS +
                             ["SOLVER.BASE_LR", "0.001"])
    assert rc == 0 and kept.stat().st_mtime_ns == mtime  # identical finished run: reused


@pytest.mark.parametrize("spec", ["", "0,5", "3,3", "a,b", "-2"])
def test_bad_iters_are_refused_naming_the_value(spec):
    with pytest.raises(ComparisonError, match="--iters"):
        parse_iters(spec)


def test_unknown_config_key_fails_before_any_training(tmp_path, capsys, tiny_data):
    rc = learning_curve.main(["--config-file", CONFIG, "--iters", "2", "--output-dir",
                              str(tmp_path / "out")] + tiny_data + ["SOLVER.NO_SUCH_KEY", "1"])
    assert rc == 2 and "NO_SUCH_KEY" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_point_is_the_recipes_schedule_shape_at_its_length():
    from focal_rpn.engine import build_config
    import argparse

    cfg = build_config(argparse.Namespace(config_file=CONFIG, opts=[]))
    sched = fixed_schedule(cfg, 750)
    assert sched["max_iter"] == 750
    assert sched["steps"] == tuple(round(s * 750 / cfg.SOLVER.MAX_ITER) for s in cfg.SOLVER.STEPS)
    assert sched["warmup_iters"] == round(cfg.SOLVER.WARMUP_ITERS * 750 / cfg.SOLVER.MAX_ITER)


def test_an_edited_config_file_is_never_taken_for_its_earlier_run(tmp_path, tiny_data):
    """Same path, same options, other content (here its _BASE_ file): retrained, the earlier
    run moved aside."""
    import shutil

    for name in ("quick_retinanet_R18.yaml", "Base-RetinaNet.yaml"):
        shutil.copy(os.path.join(REPO, "configs", name), tmp_path / name)
    config = str(tmp_path / "quick_retinanet_R18.yaml")
    argv = ["--config-file", config, "--iters", "2", "--output-dir", str(tmp_path / "out")] + tiny_data + TINY_OPTS
    assert learning_curve.main(argv) == 0
    weights = tmp_path / "out" / "it2" / "seed0" / "model_final.pth"
    mtime = weights.stat().st_mtime_ns
    assert learning_curve.main(argv) == 0 and weights.stat().st_mtime_ns == mtime  # reused
    base = tmp_path / "Base-RetinaNet.yaml"
    base.write_text(base.read_text().replace("PRIOR_PROB: 0.01", "PRIOR_PROB: 0.02"))
    assert learning_curve.main(argv) == 0
    assert weights.stat().st_mtime_ns != mtime
    assert [p.name.startswith("seed0.previous-") for p in (tmp_path / "out" / "it2").iterdir()].count(True) == 1
