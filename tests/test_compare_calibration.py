"""A/A calibration of tools/compare.py at tiny settings (issue 24).

Training is deterministic, so one config compared with itself at the same seeds differs by
exactly 0 and proves nothing. Here the second arm trains the same config with other seeds
(``--seed-offset``): every difference is chance, and the verdicts must say "higher" or
"lower" no more often than their nominal 5% (at most one metric of this comparison)."""
import json
import os
import sys

import pytest

from focal_rpn.comparison import ComparisonError
from focal_rpn.comparison.results import BOX_METRICS
from focal_rpn.comparison.runs import apply_seed_offsets, build_entries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import compare  # noqa: E402
from tiny_models import TINY_RUN_OPTS, tiny_dataset_args  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "quick_retinanet_R18.yaml")
SEEDS = [0, 1, 2]
OFFSET = 1000
TINY_OPTS = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
             "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"] + TINY_RUN_OPTS


@pytest.fixture(scope="module")
def a_a(tmp_path_factory):
    data = tiny_dataset_args(tmp_path_factory.mktemp("aa_data") / "data", "aa_tiny")
    out = tmp_path_factory.mktemp("aa") / "out"
    rc = compare.main(["--config", CONFIG, "--variant", "A:", "--variant", "A again:",
                       "--seed-offset", f"A again={OFFSET}", "--seeds", "0,1,2", "--iters", "4",
                       "--bootstrap", "30", "--output-dir", str(out)] + data + TINY_OPTS)
    with open(out / "comparison.json") as f:
        return rc, out, json.load(f)


def test_the_offset_arm_trains_other_seeds_and_differs_by_chance(a_a):
    rc, out, doc = a_a
    assert rc == 0
    assert [e["seed_offset"] for e in doc["entries"]] == [0, OFFSET]
    for seed in SEEDS:
        with open(out / "a_again" / f"seed{seed}" / "config.yaml") as f:
            assert f"SEED: {seed + OFFSET}\n" in f.read()
        with open(out / "a" / f"seed{seed}" / "config.yaml") as f:
            assert f"SEED: {seed}\n" in f.read()
    ap = doc["differences"]["A again"]["AP"]["per_seed"]
    assert any(d != 0 for d in ap), "other seeds must train other models"
    assert "SEED = seed + 1000" in (out / "comparison.md").read_text()


def test_chance_alone_gets_a_direction_in_at_most_one_metric(a_a):
    _, _, doc = a_a
    # accuracy metrics (RetinaNet has no proposals); time and memory are the machine's noise
    verdicts = {m: d["verdict"] for m, d in doc["differences"]["A again"].items()
                if m in BOX_METRICS}
    directional = [m for m, v in verdicts.items() if v in ("higher", "lower")]
    assert len(verdicts) == len(BOX_METRICS)
    assert len(directional) <= max(1, round(0.05 * len(verdicts))), verdicts


def test_a_seed_offset_must_name_an_entry_and_a_non_negative_integer():
    entries = build_entries([CONFIG], ["A:", "B:"])
    for spec, match in [("C=5", "no entry named 'C'"), ("B=x", "K an integer"), ("B=-1", ">= 0"),
                        ("B", "NAME=K")]:
        with pytest.raises(ComparisonError, match=match):
            apply_seed_offsets(entries, [spec])
    apply_seed_offsets(entries, ["B=7"])
    assert [e.seed_offset for e in entries] == [0, 7]
