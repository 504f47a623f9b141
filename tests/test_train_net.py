"""tools/train_net.py and focal_rpn.engine: every quick config trains and evaluates on a tiny
generated dataset, --resume continues at the right iteration, dataset errors are clear, and
the faster_coco_eval evaluator gives the same AP as pycocotools."""
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from focal_rpn.data.datasets import DatasetError
from focal_rpn.data.synthetic import make_tiny_coco, register_synthetic_dataset
from focal_rpn.engine import Trainer, build_argument_parser, main, setup, torchrun_env
from focal_rpn.evaluation import FastCOCOEvaluator, faster_coco_eval_available
from focal_rpn.evaluation.coco import COCOEVAL_CLASS_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

TINY = "tiny_engine"  # registered as tiny_engine_train / tiny_engine_val
# Shrinks any quick config to seconds on CPU: 64 px images, 2 images per batch, 2 iterations.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RETINANET.NUM_CONVS", "1",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
    # untrained models score low: keep every detection so that AP is a number, not NaN
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", f'("{TINY}_train",)',
    "DATASETS.TEST", f'("{TINY}_val",)',
]

MODEL_CONFIGS = {
    "focal_retinanet": "quick_retinanet_R18.yaml",
    "faster_rcnn_rpn": "quick_faster_rcnn_R18.yaml",
    "fl_rpn_sigmoid": "quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml",
    "fl_rpn_softmax": "quick_faster_rcnn_R18_FL-RPN_softmax.yaml",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return register_synthetic_dataset(name=TINY, root=root, num_train=8, num_val=4,
                                      image_size=64, image_format="png", progress=False)


def train_net(config, output_dir, *opts, flags=()):
    """Run train_net's main in this process, as `tools/train_net.py FLAGS --config-file ...`."""
    argv = list(flags) + ["--config-file", os.path.join(CONFIGS, config)]
    argv += TINY_OPTS + list(opts) + ["OUTPUT_DIR", str(output_dir)]
    return main(build_argument_parser().parse_args(argv))


def read_metrics(output_dir):
    """metrics.json as (training rows, evaluation rows)."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return ([r for r in rows if "total_loss" in r],
            [r for r in rows if any(k.startswith("bbox/") for k in r)])


def assert_ap_table(bbox):
    assert set(bbox) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} | {
        k for k in bbox if k.startswith("AP-")}  # + per-category AP
    for key in ("AP", "AP50", "AP75"):
        assert math.isfinite(bbox[key]) and 0 <= bbox[key] <= 100, (key, bbox[key])
    assert bbox["AP50"] >= bbox["AP75"]


def test_focal_retinanet_trains_evaluates_and_writes_outputs(tiny_data, tmp_path):
    results = train_net(MODEL_CONFIGS["focal_retinanet"], tmp_path)
    assert_ap_table(results["bbox"])
    assert "box_proposals" not in results  # no RPN in RetinaNet
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    train_rows, eval_rows = read_metrics(tmp_path)
    assert train_rows[-1]["iteration"] == 1
    assert all(math.isfinite(r["loss_cls"]) for r in train_rows)
    # the final evaluation is logged once, after the last iteration
    assert [r["iteration"] for r in eval_rows] == [2]
    assert eval_rows[0]["bbox/AP"] == pytest.approx(results["bbox"]["AP"])
    pictures = sorted(os.listdir(tmp_path / "predictions"))
    assert len(pictures) == 4 and all(p.endswith(".png") for p in pictures)
    with open(tmp_path / "eval_results.json") as f:
        assert "bbox/AP" in json.load(f)
    with open(tmp_path / "run_stats.json") as f:
        stats = json.load(f)
    assert stats["iterations"] == 2 and stats["seconds_per_iter"] > 0
    assert stats["peak_memory_mb"] > 0
    with open(tmp_path / "config.yaml") as f:
        assert "FocalRetinaNet" in f.read()
    # --eval-only on the final checkpoint reproduces the end-of-training evaluation
    again = train_net(MODEL_CONFIGS["focal_retinanet"], tmp_path / "eval",
                      "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), flags=["--eval-only"])
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


@pytest.mark.parametrize("model", ["faster_rcnn_rpn", "fl_rpn_sigmoid", "fl_rpn_softmax"])
def test_faster_rcnn_trains_and_reports_ap_and_proposal_recall(tiny_data, tmp_path, model):
    results = train_net(MODEL_CONFIGS[model], tmp_path)
    assert_ap_table(results["bbox"])
    recall = results["box_proposals"]
    for key in ("AR@100", "AR@1000"):
        assert math.isfinite(recall[key]) and 0 <= recall[key] <= 100
    # 1000 proposals recall at least as much as their first 100
    assert recall["AR@1000"] >= recall["AR@100"]
    with open(tmp_path / "eval_results.json") as f:
        flat = json.load(f)
    assert {"bbox/AP", "box_proposals/AR@100", "box_proposals/AR@1000"} <= set(flat)
    with open(tmp_path / "config.yaml") as f:
        text = f.read()
    if model.startswith("fl_rpn"):
        assert "FocalRPN" in text and model.split("_")[-1] in text


def test_resume_continues_at_the_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "writer_period", 1)  # one metrics.json line per iteration
    train_net(MODEL_CONFIGS["focal_retinanet"], tmp_path,
              "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    assert [m["iteration"] for m in read_metrics(tmp_path)[0]] == [0, 1, 2, 3]
    assert os.path.isfile(tmp_path / "model_0000001.pth")
    train_net(MODEL_CONFIGS["focal_retinanet"], tmp_path,
              "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", flags=["--resume"])
    train_rows, eval_rows = read_metrics(tmp_path)
    assert [m["iteration"] for m in train_rows] == [0, 1, 2, 3, 4, 5]
    assert [m["iteration"] for m in eval_rows] == [4, 6]
    with open(tmp_path / "run_stats.json") as f:
        stats = json.load(f)
    assert stats["start_iter"] == 4 and stats["iterations"] == 2
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5


def test_missing_coco_2017_says_where_and_how_to_run_the_default(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # detectron2's default dataset root is ./datasets
    with pytest.raises(DatasetError) as err:
        train_net("retinanet_R50.yaml", tmp_path / "out",
                  "DATASETS.TRAIN", '("coco_2017_train",)', "DATASETS.TEST", '("coco_2017_val",)')
    message = str(err.value)
    assert "coco" in message and "DETECTRON2_DATASETS" in message
    assert "quick_retinanet_R18.yaml" in message


def test_train_net_command_line_exits_with_the_message_not_a_traceback(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", os.path.join(CONFIGS, "retinanet_R50.yaml"),
         "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert str(tmp_path / "nowhere" / "coco") in proc.stderr
    assert "quick_retinanet_R18.yaml" in proc.stderr


def test_dataset_argument_registers_a_coco_dataset(tmp_path):
    json_file, image_root = make_tiny_coco(tmp_path / "mine", num_images=4, image_size=64)
    results = train_net(
        MODEL_CONFIGS["focal_retinanet"], tmp_path / "out",
        "DATASETS.TRAIN", '("mine_engine",)', "DATASETS.TEST", '("mine_engine",)',
        "SOLVER.MAX_ITER", "1",
        flags=["--dataset", f"mine_engine={json_file}:{image_root}"])
    assert "bbox" in results
    assert MetadataCatalog.get("mine_engine").json_file == os.path.abspath(json_file)


def test_dataset_argument_with_a_wrong_path_names_it(tmp_path):
    missing = str(tmp_path / "no_such" / "annotations.json")
    with pytest.raises(DatasetError, match="no_such"):
        train_net(MODEL_CONFIGS["focal_retinanet"], tmp_path / "out",
                  "DATASETS.TRAIN", '("wrong_engine",)', "DATASETS.TEST", '("wrong_engine",)',
                  flags=["--dataset", f"wrong_engine={missing}:{tmp_path}"])
    assert "wrong_engine" not in DatasetCatalog.list()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_cuda_device_falls_back_to_cpu(tmp_path):
    args = build_argument_parser().parse_args(
        ["--config-file", os.path.join(CONFIGS, "quick_retinanet_R18.yaml"),
         "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path)])
    assert setup(args).MODEL.DEVICE == "cpu"


def test_torchrun_environment_is_detected():
    assert torchrun_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert torchrun_env(env) == {"rank": 3, "world_size": 4, "local_rank": 1,
                                 "local_world_size": 2}


# ----------------------------------------------------------------------------- evaluation


def _fake_outputs(dataset_dicts, seed=0):
    """Detections around the ground truth: jittered boxes, some wrong classes, false positives."""
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for d in dataset_dicts:
        boxes, classes = [], []
        for ann in d["annotations"]:
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            for _ in range(2):
                w, h = box[2] - box[0], box[3] - box[1]
                jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
                boxes.append(np.asarray(box) + jitter)
                classes.append(ann["category_id"] if rng.random() < 0.8 else int(rng.integers(6)))
        for _ in range(3):
            x, y = rng.uniform(0, d["width"] - 20, 2)
            s = rng.uniform(8, 20)
            boxes.append([x, y, x + s, y + s])
            classes.append(int(rng.integers(6)))
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
        inst.scores = torch.tensor(rng.random(len(boxes)), dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        proposals = Instances((d["height"], d["width"]))
        proposals.proposal_boxes = inst.pred_boxes.clone()
        proposals.objectness_logits = inst.scores.clone()
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"instances": inst, "proposals": proposals})
    return inputs, outputs


@pytest.mark.skipif(not faster_coco_eval_available(), reason="faster_coco_eval not installed")
def test_faster_coco_eval_gives_the_same_ap_as_pycocotools(tmp_path):
    _, val = register_synthetic_dataset(name="eval_engine", root=tmp_path, num_train=1,
                                        num_val=40, image_size=128, image_format="png",
                                        progress=False)
    inputs, outputs = _fake_outputs(DatasetCatalog.get(val))
    results = {}
    for backend in ("faster_coco_eval", "pycocotools"):
        evaluator = FastCOCOEvaluator(val, tasks=("bbox",), distributed=False, backend=backend)
        assert evaluator.backend == backend
        evaluator.reset()
        evaluator.process(inputs, outputs)
        results[backend] = evaluator.evaluate()
        # the class that actually computed the AP (on detectron2 main without C++ the stock
        # evaluator would have fallen back to pycocotools for both)
        assert evaluator.cocoeval_used == COCOEVAL_CLASS_NAMES[backend]
    fast, official = results["faster_coco_eval"], results["pycocotools"]
    assert 5 < official["bbox"]["AP"] < 95  # a non-trivial case
    assert fast.keys() == official.keys()
    for task in official:
        assert fast[task].keys() == official[task].keys()
        for key, value in official[task].items():
            assert fast[task][key] == pytest.approx(value, abs=1e-9, nan_ok=True), (task, key)
