"""tools/compare_rpn.py at tiny settings: three Faster R-CNN runs (standard RPN, FL-RPN sigmoid,
FL-RPN softmax) on a tiny generated COCO dataset, and every output checked for its contents:
comparison.md (the table), comparison.json (the numbers, equal to each run's own results) and
rpn_losses.png (the two RPN loss panels with the three runs)."""
import json
import math
import os
import statistics
import sys

import numpy as np
import pytest

from focal_rpn.data.synthetic import make_tiny_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import compare_rpn  # noqa: E402

ITERS = 3
MODELS = {  # key -> model name in the table
    "rpn": "Faster R-CNN (RPN)",
    "fl_rpn_sigmoid": "FL-RPN sigmoid",
    "fl_rpn_softmax": "FL-RPN softmax",
}
HEADER = ["model", "box AP", "AP50", "AP75", "APs", "APm", "APl", "proposal AR@100",
          "proposal AR@1000", "s/iter", "peak RSS (MiB)"]
# Shrinks the quick R18 configs to seconds: 64 px images, 2 per batch, small heads.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # untrained: keep detections, AP is a number
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_rpn")
    json_file, image_root = make_tiny_coco(root / "data", num_images=4, image_size=64)
    out = root / "out"
    rc = compare_rpn.main([
        "--output-dir", str(out), "--iters", str(ITERS),
        "--dataset", f"cmp_tiny={json_file}:{image_root}",
        "--dataset-train", "cmp_tiny", "--dataset-test", "cmp_tiny",
    ] + TINY_OPTS)
    return rc, out


def _table(markdown):
    """The markdown table as (header cells, rows of cells)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert set("".join(cells[1])) <= set("-:"), "second table line must be the separator"
    return cells[0], cells[2:]


def _eval_results(run_dir):
    with open(os.path.join(run_dir, "eval_results.json")) as f:
        return json.load(f)


def test_every_run_succeeds_and_json_holds_each_runs_results(comparison):
    rc, out = comparison
    assert rc == 0
    with open(out / "comparison.json") as f:
        report = json.load(f)
    assert report["iters"] == ITERS and report["seed"] == 0
    assert [m["key"] for m in report["models"]] == list(MODELS)
    for m in report["models"]:
        assert m["returncode"] == 0 and m["model"] == MODELS[m["key"]]
        # the numbers are the run's own evaluation, read from its folder
        own = _eval_results(m["output_dir"])
        for metric in ["AP", "AP50", "AP75", "APs", "APm", "APl"]:
            expected = own[f"bbox/{metric}"]
            if math.isnan(expected):
                assert m[metric] is None, metric
            else:
                assert m[metric] == pytest.approx(expected), metric
        for metric in ["AR@100", "AR@1000"]:
            assert m[metric] == pytest.approx(own[f"box_proposals/{metric}"])
            assert 0 <= m[metric] <= 100
        assert m["AR@1000"] >= m["AR@100"]
        assert 0 <= m["AP"] <= 100  # SCORE_THRESH_TEST 0: a number even untrained
        assert m["iterations"] == ITERS
        assert 0 < m["seconds_per_iter"] < m["wall_seconds"]
        assert m["memory_kind"] == "max_rss" and 200 < m["peak_memory_mb"] < 64 * 1024
        with open(os.path.join(m["output_dir"], "config.yaml")) as f:
            cfg = f.read()
        assert ("FocalRPN" in cfg) == (m["key"] != "rpn")
        assert f"MAX_ITER: {ITERS}" in cfg


def test_markdown_table_has_every_column_and_the_json_numbers(comparison):
    _, out = comparison
    with open(out / "comparison.json") as f:
        models = json.load(f)["models"]
    header, rows = _table((out / "comparison.md").read_text())
    assert header == HEADER
    assert [r[0] for r in rows] == list(MODELS.values())  # no "(failed ...)" mark
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@100", "AR@1000",
            "seconds_per_iter", "peak_memory_mb"]
    for row, m in zip(rows, models):
        assert len(row) == len(HEADER)
        for cell, key in zip(row[1:], keys):
            if m[key] is None:
                assert cell == "n/a", key
            else:
                tolerance = 0.5 if key == "peak_memory_mb" else 0.051
                assert float(cell) == pytest.approx(m[key], abs=tolerance), key


def test_loss_curves_are_every_iteration_of_each_run(comparison):
    _, out = comparison
    with open(out / "comparison.json") as f:
        models = json.load(f)["models"]
    for m in models:
        with open(os.path.join(m["output_dir"], "loss_curves.json")) as f:
            curves = json.load(f)
        with open(os.path.join(m["output_dir"], "metrics.json")) as f:
            logged = [json.loads(line) for line in f if "loss_rpn_cls" in line]
        for loss in ["loss_rpn_cls", "loss_rpn_loc"]:
            points = curves[loss]
            assert [it for it, _ in points] == list(range(ITERS))
            values = [v for _, v in points]
            assert all(math.isfinite(v) and v > 0 for v in values)
            # detectron2's metrics.json row = median over its window of the same values
            for row in logged:
                window = values[: row["iteration"] + 1][-20:]
                assert row[loss] == pytest.approx(statistics.median(window), rel=1e-6)
            assert m[f"final_{loss}"] == pytest.approx(sum(values) / len(values))
    # the three models were trained differently: their RPN classification losses differ
    finals = [m["final_loss_rpn_cls"] for m in models]
    assert finals[0] != pytest.approx(finals[1], rel=0.05)


def test_loss_plot_shows_the_three_runs_in_two_panels(comparison):
    import matplotlib.image
    from matplotlib.colors import to_rgb

    _, out = comparison
    image = matplotlib.image.imread(out / "rpn_losses.png")[..., :3]
    height, width, _ = image.shape
    assert width > 2 * height > 400  # two panels side by side
    for half in (image[:, : width // 2], image[:, width // 2:]):  # loss_rpn_cls, loss_rpn_loc
        for i in range(len(MODELS)):  # one colour per run (legend + curve)
            colour = np.array(to_rgb(f"C{i}"))
            pixels = np.sum(np.all(np.abs(half - colour) < 0.02, axis=-1))
            assert pixels > 20, f"colour of run {i} missing from a panel"
