"""tools/compare.py and its FL-RPN preset tools/compare_rpn.py at tiny settings.

A two-seed comparison of the three Faster R-CNN models on a tiny generated COCO dataset is run
once (module fixture); the tests check every output, recompute the statistics of
comparison.json from its own per-seed numbers with numpy / scipy, and check that verdicts follow
the intervals. Smaller comparisons check the equal schedule under a time budget, the --variant
parsing and what a re-run into the same --output-dir does.
"""
import json
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from focal_rpn.comparison import ComparisonError, parse_variant
from focal_rpn.comparison.runs import build_entries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import compare  # noqa: E402
from tiny_models import TINY_RUN_OPTS, tiny_dataset_args  # noqa: E402
import compare_rpn  # noqa: E402

ITERS = 3
SEEDS = [0, 1]
MODELS = ["RPN", "FL-RPN sigmoid", "FL-RPN softmax"]
KEYS = ["rpn", "fl_rpn_sigmoid", "fl_rpn_softmax"]
# The quick configs shrunk to seconds: small heads, and TINY_RUN_OPTS (64 px images, 2 per batch).
TINY_OPTS = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # untrained: keep detections, AP is a number
] + TINY_RUN_OPTS


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset_args(tmp_path_factory.mktemp("compare_data") / "data", "cmp_tiny")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("compare_rpn") / "out"
    cwd = tmp_path_factory.mktemp("compare_cwd")  # the configs' relative OUTPUT_DIRs land here
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        rc = compare_rpn.main(["--output-dir", str(out), "--iters", str(ITERS), "--seeds", "0,1",
                               "--bootstrap", "30"] + tiny_data + TINY_OPTS)
    finally:
        os.chdir(previous)
    with open(out / "comparison.json") as f:
        return rc, out, json.load(f), cwd


def test_every_output_is_written_and_every_run_succeeds(comparison):
    rc, out, doc, _ = comparison
    assert rc == 0
    for name in ["comparison.md", "comparison.json", "comparison.png", "proposal_recall.png",
                 "rpn_losses.png", "losses.png"]:
        assert (out / name).stat().st_size > 1000, name
    assert [e["name"] for e in doc["entries"]] == MODELS and doc["baseline"] == "RPN"
    assert doc["seeds"] == SEEDS
    assert sorted((r["entry"], r["seed"]) for r in doc["runs"]) == sorted(
        (m, s) for m in MODELS for s in SEEDS)
    for run in doc["runs"]:
        assert run["returncode"] == 0 and not run["reused"]
        key = KEYS[MODELS.index(run["entry"])]
        assert run["output_dir"] == str(out / key / f"seed{run['seed']}")
        with open(os.path.join(run["output_dir"], "config.yaml")) as f:
            cfg = f.read()
        assert ("FocalRPN" in cfg) == (run["entry"] != "RPN")
        assert f"MAX_ITER: {ITERS}" in cfg and f"SEED: {run['seed']}" in cfg


def test_nothing_is_written_outside_the_output_dir(comparison):
    *_, cwd = comparison
    assert list(cwd.iterdir()) == []  # e.g. no classes.json in a config's default OUTPUT_DIR


def test_per_run_numbers_are_each_runs_own_evaluation(comparison):
    _, _, doc, _ = comparison
    for run in doc["runs"]:
        with open(os.path.join(run["output_dir"], "eval_results.json")) as f:
            own = json.load(f)
        m = run["metrics"]
        for metric in ["AP", "AP50", "AP75", "APs", "APm", "APl"]:
            expected = own[f"bbox/{metric}"]
            assert (m[metric] is None) if math.isnan(expected) else m[metric] == pytest.approx(expected)
        # focal_rpn's recall equals detectron2's box_proposals AR where both exist
        for metric in ["AR@100", "AR@1000"]:
            assert m[metric] == pytest.approx(own[f"box_proposals/{metric}"], abs=1e-4)
        assert m["AR@10"] <= m["AR@100"] <= m["AR@1000"] <= 100
        assert run["iterations"] == ITERS
        assert 0 < m["seconds_per_iter"] < run["wall_seconds"]
        assert 200 < m["peak_memory_mb"] < 64 * 1024


def test_summaries_and_t_intervals_equal_a_recomputation_from_the_per_seed_numbers(comparison):
    _, _, doc, _ = comparison
    per_seed = {}
    for run in doc["runs"]:
        for metric, v in run["metrics"].items():
            per_seed.setdefault((run["entry"], metric), {})[run["seed"]] = v
    checked = 0
    for name in MODELS:
        for metric, summary in doc["summary"][name].items():
            values = [per_seed[(name, metric)][s] for s in SEEDS]
            assert summary["per_seed"] == values
            if any(v is None for v in values):
                continue
            assert summary["mean"] == pytest.approx(np.mean(values))
            assert summary["std"] == pytest.approx(np.std(values, ddof=1))
            checked += 1
    for name in MODELS[1:]:
        for metric, d in doc["differences"][name].items():
            base = [per_seed[("RPN", metric)][s] for s in SEEDS]
            var = [per_seed[(name, metric)][s] for s in SEEDS]
            if any(v is None for v in base + var):
                continue
            diffs = np.array(var) - np.array(base)
            assert d["per_seed"] == pytest.approx(list(diffs))
            assert d["mean"] == pytest.approx(diffs.mean())
            half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
            assert d["t_interval"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], abs=1e-9)
            table = doc["bootstrap_differences"][name].get(metric)
            if table is not None:
                table = np.array(table, dtype=float)  # (resamples, seeds)
                assert table.shape == (30, len(SEEDS))
                # the seeds drawn again in every resample of the images (seed_draw 1)
                picks = np.random.default_rng(doc["bootstrap"]["seed_draw"]).integers(
                    0, len(SEEDS), size=table.shape)
                reps = np.take_along_axis(table, picks, axis=1).mean(axis=1)
                assert d["bootstrap_interval"] == pytest.approx(list(np.percentile(reps, [2.5, 97.5])))
                checked += 1
    assert checked > 20


def test_the_stored_bootstrap_table_is_each_seeds_paired_difference_on_the_drawn_images(comparison):
    from focal_rpn.comparison import bootstrap

    _, _, doc, _ = comparison
    assert doc["bootstrap"]["method"] == "hierarchical" and doc["bootstrap"]["seeds"] == SEEDS
    gt = json.loads(open(doc_test_json(doc)).read())
    draws = bootstrap.draw_image_sets(len(gt["images"]), 30, seed=doc["bootstrap"]["image_seed"])[:3]
    table = doc["bootstrap_differences"]["FL-RPN softmax"]["AP50"]
    for column, seed in enumerate(SEEDS):
        dets = {}
        for run in doc["runs"]:
            if run["seed"] == seed and run["entry"] in ("RPN", "FL-RPN softmax"):
                path = os.path.join(run["output_dir"], "inference", doc["test_dataset"],
                                    "coco_instances_results.json")
                dets[run["entry"]] = json.loads(open(path).read())
        aps = bootstrap.bootstrap_box_ap(gt, dets, draws)
        for b in range(len(draws)):
            expected = aps["FL-RPN softmax"][b]["AP50"] - aps["RPN"][b]["AP50"]
            assert table[b][column] == pytest.approx(expected, abs=1e-9)


def doc_test_json(doc):
    """The test dataset's json: the tiny dataset's --dataset argument names it."""
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(doc["test_dataset"]).json_file


def test_verdicts_follow_the_intervals(comparison):
    _, _, doc, _ = comparison
    for name in MODELS[1:]:
        for metric, d in doc["differences"][name].items():
            intervals = [iv for iv in (d["t_interval"], d["bootstrap_interval"]) if iv is not None]
            if any(lo <= 0 <= hi for lo, hi in intervals) or not intervals:
                assert d["verdict"].startswith("no difference detectable with 2 seeds") or \
                    d["verdict"] == "not measured", (name, metric)
            elif all(lo > 0 for lo, _ in intervals):
                assert d["verdict"] == "higher"
            elif all(hi < 0 for _, hi in intervals):
                assert d["verdict"] == "lower"


def test_markdown_shows_means_with_spread_and_each_verdict(comparison):
    _, out, doc, _ = comparison
    text = (out / "comparison.md").read_text()
    ap = doc["summary"]["FL-RPN sigmoid"]["AP"]
    assert f"| FL-RPN sigmoid | {ap['mean']:.1f} ± {ap['std']:.1f} |" in text
    d = doc["differences"]["FL-RPN softmax"]["AR@100"]
    assert f"| FL-RPN softmax | AR@100 | {d['mean']:.1f} |" in text and d["verdict"] in text
    assert "(failed" not in text and "Warning" not in text


def test_proposal_recall_plot_has_a_curve_per_model(comparison):
    import matplotlib.image
    from matplotlib.colors import to_rgb

    _, out, _, _ = comparison
    image = matplotlib.image.imread(out / "proposal_recall.png")[..., :3]
    for i in range(len(MODELS)):
        colour = np.array(to_rgb(f"C{i}"))
        assert np.sum(np.all(np.abs(image - colour) < 0.02, axis=-1)) > 20, f"model {i} missing"


def test_every_model_trains_the_iterations_the_budgeted_first_run_reached(tmp_path, tiny_data):
    out = tmp_path / "out"
    variants = ["--variant", "FL:", "--variant", "CE: MODEL.RETINANET.FOCAL_LOSS_GAMMA 0.0"]
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "5000", "SOLVER.STEPS", "(4000,)",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "MODEL.RETINANET.NUM_CLASSES", "6"]
    rc = compare.main(["--config", "configs/quick_retinanet_R18.yaml", "--output-dir", str(out),
                       "--time-budget-minutes", "0.08", "--seeds", "0", "--bootstrap", "0"]
                      + variants + tiny_data + opts)
    assert rc == 0
    doc = json.loads((out / "comparison.json").read_text())
    counts = [r["iterations"] for r in doc["runs"]]
    assert len(counts) == 2 and counts[0] == counts[1] == doc["schedule"]["max_iter"]
    assert 60 <= counts[0] < 5000  # the budget's calibration, then what fitted in 4.8 s
    assert doc["iterations_equal"] and doc["time_budget_minutes"] == pytest.approx(0.08)
    assert doc["schedule"]["steps"] == [round(4000 * counts[0] / 5000)]
    second = (out / "ce" / "seed0" / "config.yaml").read_text()
    assert f"MAX_ITER: {counts[0]}" in second and "TIME_BUDGET_MINUTES: 0" in second


@pytest.mark.parametrize("spec,complaint", [
    ("no colon here", "malformed"),
    (": MODEL.RPN.NMS_THRESH 0.6", "malformed"),
    ("B: MODEL.RPN.NMS_THRESH", "has no value"),
    ("B: model.rpn.nms_thresh 0.6", "is not a config key"),
    ("B: SOLVER.STEPS '(1, 2)", "malformed"),
])
def test_a_malformed_variant_is_refused_naming_it(spec, complaint, capsys):
    with pytest.raises(ComparisonError, match=complaint) as e:
        parse_variant(spec)
    assert repr(spec) in str(e.value)
    rc = compare.main(["--config", "configs/quick_retinanet_R18.yaml", "--variant", "A:", "--variant", spec])
    assert rc == 2 and repr(spec) in capsys.readouterr().err


def test_variants_parse_into_names_and_options():
    assert parse_variant("FL:") == ("FL", [])
    assert parse_variant("CE: MODEL.RETINANET.FOCAL_LOSS_GAMMA 0 SOLVER.STEPS '(1, 2)'") == (
        "CE", ["MODEL.RETINANET.FOCAL_LOSS_GAMMA", "0", "SOLVER.STEPS", "(1, 2)"])
    entries = build_entries(["configs/quick_retinanet_R18.yaml"], ["CE: SOLVER.BASE_LR 0.1", "FL:"])
    assert [(e.name, e.key, e.opts) for e in entries] == [("CE", "ce", ["SOLVER.BASE_LR", "0.1"]), ("FL", "fl", [])]
    with pytest.raises(ComparisonError, match="must differ"):
        build_entries(["configs/quick_retinanet_R18.yaml"], ["A b:", "a-B:"])
    with pytest.raises(ComparisonError, match="at least two"):
        build_entries(["configs/quick_retinanet_R18.yaml"], [])


def test_an_unknown_key_in_a_variant_fails_before_any_training(tmp_path, capsys):
    rc = compare.main(["--config", "configs/quick_retinanet_R18.yaml", "--output-dir", str(tmp_path / "o"),
                       "--variant", "A:", "--variant", "B: MODEL.RETINANET.FOCAL_GAMMA 0"])
    err = capsys.readouterr().err
    assert rc == 2 and "B (" in err and "FOCAL_GAMMA" in err
    assert not (tmp_path / "o").exists()


def test_a_rerun_never_shows_an_earlier_runs_numbers(tmp_path, tiny_data, capsys):
    out = tmp_path / "out"
    base = ["--config", "configs/quick_faster_rcnn_R18.yaml", "--output-dir", str(out), "--iters", "2",
            "--seeds", "0", "--bootstrap", "0"] + tiny_data
    assert compare.main(base + ["--variant", "A:", "--variant", "B:"] + TINY_OPTS) == 0
    first = json.loads((out / "comparison.json").read_text())
    # the same folder again: refused, nothing touched
    assert compare.main(base + ["--variant", "A:", "--variant", "B:"] + TINY_OPTS) == 2
    assert "already holds an earlier comparison" in capsys.readouterr().err
    assert json.loads((out / "comparison.json").read_text()) == first
    # --skip-existing: A reused; B now fails at training (1 class for a 3-class dataset)
    rc = compare.main(base + ["--skip-existing", "--variant", "A:",
                              "--variant", "B: MODEL.ROI_HEADS.NUM_CLASSES 1"] + TINY_OPTS)
    assert rc == 1
    doc = json.loads((out / "comparison.json").read_text())
    a, b = doc["runs"]
    assert a["reused"] and a["metrics"] == first["runs"][0]["metrics"]
    assert b["returncode"] != 0 and all(v is None for v in b["metrics"].values())
    assert doc["summary"]["B"]["AP"]["mean"] is None
    assert "B seed 0 failed" in (out / "comparison.md").read_text()
    moved = [p.name for p in (out / "b").iterdir() if p.name.startswith("seed0.previous-")]
    assert len(moved) == 1 and (out / "b" / moved[0] / "eval_results.json").exists()
