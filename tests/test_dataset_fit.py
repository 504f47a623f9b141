"""INPUT.FIT_TO_DATASET (focal_rpn.data.fit, focal_rpn.engine.dataset_fit): the CPU recipes
follow a user dataset's image sizes, box sizes and classes, log what they chose, keep what the
command line set, and leave the embedded dataset alone; and a photo-shaped dataset (varied
sizes, portrait and landscape, JPEG) goes through tools/compare.py with every output."""
import json
import math
import os
import sys

import numpy as np
import pytest
import yaml

from focal_rpn.data import fit
from focal_rpn.data.photos import write_photo_dataset
from focal_rpn.engine import build_argument_parser, build_config, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_RETINANET = os.path.join(REPO, "configs", "quick_retinanet_R18.yaml")
sys.path.insert(0, os.path.join(REPO, "tools"))
import compare  # noqa: E402

BUDGET = 256.0 * 256.0  # the quick recipes' pixel budget


def stats_of(image_sizes, boxes, classes=("a",)):
    """DataStats of images (w, h) and boxes (image index, w, h)."""
    return fit.DataStats(np.asarray(image_sizes, float), np.asarray([b[1:] for b in boxes], float),
                         np.asarray([b[0] for b in boxes], int), list(classes))


# ----------------------------------------------------------------------------- the rules


def test_square_images_at_the_budget_keep_the_recipes_size():
    stats = stats_of([(256, 256)] * 10, [(i, 30, 30) for i in range(10)])
    assert fit.fit_input_size(stats, BUDGET) == (256, 256)


def test_landscape_photos_spend_the_budget_on_their_aspect_and_keep_it():
    stats = stats_of([(800, 600)] * 10, [(i, 200, 150) for i in range(10)])
    short, longest = fit.fit_input_size(stats, BUDGET)
    assert short % 32 == 0 and short <= math.sqrt(BUDGET / (4 / 3)) + 1e-9
    assert longest >= short * 4 / 3 - 32  # the longer side is not cut to a square


def test_small_objects_raise_the_size_but_never_past_the_pixel_cap():
    big = stats_of([(800, 600)] * 10, [(i, 200, 150) for i in range(10)])
    tiny = stats_of([(800, 600)] * 10, [(i, 8, 8) for i in range(10)])
    short_big, _ = fit.fit_input_size(big, BUDGET)
    short_tiny, _ = fit.fit_input_size(tiny, BUDGET)
    assert short_tiny > short_big
    cap = math.sqrt(BUDGET / (4 / 3)) * math.sqrt(fit.MAX_PIXEL_FACTOR)
    assert short_tiny <= cap


def test_portrait_and_landscape_share_one_rule():
    land = stats_of([(800, 600)] * 5, [(i, 60, 60) for i in range(5)])
    port = stats_of([(600, 800)] * 5, [(i, 60, 60) for i in range(5)])
    assert fit.fit_input_size(land, BUDGET) == fit.fit_input_size(port, BUDGET)


def test_anchor_coverage_by_shape():
    anchors = fit.anchor_shapes([[32.0]], [[0.5, 1.0, 2.0]])
    assert anchors.shape == (3, 2)
    assert np.allclose(anchors.prod(axis=1), 32.0 ** 2)  # area = size ** 2
    assert np.allclose(anchors[:, 1] / anchors[:, 0], [0.5, 1.0, 2.0])  # ratio = h / w
    boxes = np.array([[32.0, 32.0], [45.0, 22.6], [200.0, 200.0], [32.0, 5.0]])
    # the same square, a 1:2 box of the same area, far too large, far too thin
    assert fit.anchor_coverage(boxes, anchors) == pytest.approx(0.5)
    assert fit.anchor_coverage(np.zeros((0, 2)), anchors) == 1.0


def test_anchors_are_kept_unless_another_size_clearly_covers_more():
    sizes, ratios = [[16.0], [32.0], [64.0]], [[0.5, 1.0, 2.0]]
    matched = np.array([[16.0, 16.0], [32.0, 32.0], [64.0, 64.0]] * 5)
    assert fit.fit_anchor_scale(matched, sizes, ratios)[0] == 1.0
    large = matched * 2.0  # every box twice an anchor's side: x1 covers one in three
    factor, coverage = fit.fit_anchor_scale(large, sizes, ratios)
    assert coverage[1.0] < fit.GOOD_COVERAGE and coverage[2.0] == 1.0
    # the smallest change that reaches GOOD_COVERAGE: x1.5 (IoU (24/32)**2 = 0.56), not x2
    assert factor == 1.5 and coverage[1.5] >= fit.GOOD_COVERAGE


def test_a_command_line_key_is_kept_and_reported():
    cfg = build_config(build_argument_parser().parse_args(["--config-file", QUICK_RETINANET]))
    stats = stats_of([(800, 600)] * 4, [(i, 100, 80) for i in range(4)], classes=("x", "y", "z"))
    chosen = fit.fit_recipe(cfg, stats, "MODEL.RETINANET.NUM_CLASSES",
                            user_keys=["INPUT.MIN_SIZE_TRAIN", "MODEL.RETINANET.NUM_CLASSES"])
    assert "INPUT.MIN_SIZE_TRAIN" not in chosen.options and "INPUT.MAX_SIZE_TRAIN" in chosen.options
    assert set(chosen.kept) == {"INPUT.MIN_SIZE_TRAIN", "MODEL.RETINANET.NUM_CLASSES"}


# ----------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_photos") / "photos"
    paths = write_photo_dataset(root, {"train": 10, "val": 4}, num_classes=3, seed=3)
    return ["--dataset", f"fit_photos_train={paths['train']}:{paths['image_dir']}",
            "--dataset", f"fit_photos_val={paths['val']}:{paths['image_dir']}"], paths


TINY_TRAIN = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS",
              "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
              "SOLVER.TIME_BUDGET_MINUTES", "0", "DATALOADER.NUM_WORKERS", "0",
              "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]


def _train(tmp_path, photos, *extra):
    args, _ = photos
    out = tmp_path / "run"
    argv = ["--config-file", QUICK_RETINANET] + args + TINY_TRAIN + [
        "DATASETS.TRAIN", '("fit_photos_train",)', "DATASETS.TEST", '("fit_photos_val",)',
        "OUTPUT_DIR", str(out)] + list(extra)
    main(build_argument_parser().parse_args(argv))
    with open(out / "config.yaml") as f:
        return yaml.safe_load(f), (out / "log.txt").read_text()


def test_training_on_photos_fits_classes_and_input_size_and_logs_it(tmp_path, photos):
    # no NUM_CLASSES on the command line: the recipe's 6 becomes the data's 3
    cfg, log = _train(tmp_path, photos)
    assert cfg["MODEL"]["RETINANET"]["NUM_CLASSES"] == 3
    train = json.loads(open(photos[1]["train"]).read())
    stats = fit.data_stats([train])
    short, longest = fit.fit_input_size(stats, BUDGET)
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [short] and cfg["INPUT"]["MAX_SIZE_TEST"] == longest
    # config.yaml holds the fitted values as they are: reading it again changes nothing
    assert cfg["INPUT"]["FIT_TO_DATASET"] is False
    assert "INPUT.FIT_TO_DATASET: 10 training images" in log and "anchors" in log
    assert "MODEL.RETINANET.NUM_CLASSES 3" in log


def test_the_command_line_wins_over_the_fit(tmp_path, photos):
    cfg, log = _train(tmp_path, photos, "INPUT.MIN_SIZE_TRAIN", "(96,)",
                      "MODEL.RETINANET.NUM_CLASSES", "4")
    assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [96] and cfg["MODEL"]["RETINANET"]["NUM_CLASSES"] == 4
    assert "kept the command line's" in log and "INPUT.MIN_SIZE_TRAIN" in log


def test_the_embedded_dataset_is_left_as_the_recipe_says():
    from focal_rpn.engine.dataset_fit import fit_config_to_dataset

    args = build_argument_parser().parse_args(["--config-file", QUICK_RETINANET])
    cfg = build_config(args)
    before = cfg.dump()
    chosen = fit_config_to_dataset(cfg, args)
    assert chosen.options == {} and "embedded dataset" in chosen.lines[0]
    cfg.INPUT.FIT_TO_DATASET = True  # only the flag itself was turned off for config.yaml
    assert cfg.dump() == before


# ----------------------------------------------------------------------------- compare.py


def test_a_photo_shaped_dataset_goes_through_compare_with_every_output(tmp_path, photos, capsys):
    args, _ = photos
    out = tmp_path / "cmp"
    rc = compare.main(["--config", QUICK_RETINANET, "--variant", "CE: MODEL.RETINANET.FOCAL_LOSS_GAMMA 0.0 "
                       "MODEL.RETINANET.FOCAL_LOSS_ALPHA 0.75", "--variant", "FL:",
                       "--iters", "3", "--seeds", "0,1", "--bootstrap", "10", "--output-dir", str(out),
                       "--dataset-train", "fit_photos_train", "--dataset-test", "fit_photos_val"]
                      + args + TINY_TRAIN[:8] + ["DATALOADER.NUM_WORKERS", "0",
                                                 "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    assert rc == 0
    # the fit of every run, once at the start
    assert "==> INPUT.FIT_TO_DATASET (every run): 10 training images" in capsys.readouterr().out
    for name in ("comparison.md", "comparison.json", "comparison.png", "losses.png"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "comparison.json").read_text())
    assert [r["returncode"] for r in doc["runs"]] == [0, 0, 0, 0]
    for run in doc["runs"]:
        assert run["metrics"]["AP"] is not None
        for name in ("config.yaml", "model_final.pth", "eval_results.json"):
            assert os.path.isfile(os.path.join(run["output_dir"], name)), (run["output_dir"], name)
        with open(os.path.join(run["output_dir"], "config.yaml")) as f:
            assert yaml.safe_load(f)["MODEL"]["RETINANET"]["NUM_CLASSES"] == 3  # fitted
    d = doc["differences"]["FL"]["AP"]
    assert d["bootstrap_interval"] is not None and d["detectable"] is not None


def test_data_without_a_usable_box_gets_no_fit_and_no_traceback():
    cfg = build_config(build_argument_parser().parse_args(["--config-file", QUICK_RETINANET]))
    for stats in (stats_of(np.zeros((0, 2)), []), stats_of([(640, 480)], [])):
        chosen = fit.fit_recipe(cfg, stats, "MODEL.RETINANET.NUM_CLASSES")
        assert chosen.options == {} and "no usable box" in chosen.lines[0]


def test_a_bad_dataset_stops_a_comparison_before_any_run_with_one_line(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = compare.main(["--config", QUICK_RETINANET, "--variant", "A:", "--variant", "B:",
                       "--iters", "2", "--seeds", "0", "--output-dir", str(out),
                       "--dataset", f"bad={tmp_path / 'missing.json'}:{tmp_path}",
                       "--dataset-train", "bad", "--dataset-test", "bad"])
    err = capsys.readouterr().err
    assert rc == 2 and "compare: error:" in err and "missing.json" in err
    assert "Traceback" not in err and not out.exists()  # refused before the folder is made
