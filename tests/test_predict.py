"""tools/predict.py: a tiny random RetinaNet over two tiny images writes pictures and a JSON."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from focal_rpn.data import make_tiny_coco, synthetic_class_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(REPO, "tools", "predict.py")


def load_predict_module():
    spec = importlib.util.spec_from_file_location("focal_rpn_predict_tool", PREDICT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(config yaml, weights) of a stock RetinaNet R18-FPN, random init, 64 px test inputs."""
    root = tmp_path_factory.mktemp("model")
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CLASSES = len(synthetic_class_names())
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("focal_synth_train",), ("focal_synth_val",)
    cfg.OUTPUT_DIR = str(root)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # confident logits, so that detections pass --score-thresh 0.5
        model.head.cls_score.bias.fill_(2.0)
    DetectionCheckpointer(model, save_dir=str(root)).save("tiny")
    config_file = root / "tiny_retinanet.yaml"
    config_file.write_text(cfg.dump())
    return str(config_file), str(root / "tiny.pth")


def test_predict_writes_pictures_and_json(tiny_model, tmp_path):
    config_file, weights = tiny_model
    _, image_root = make_tiny_coco(tmp_path / "data", num_images=2, image_size=64)
    out = tmp_path / "out"
    cmd = [
        sys.executable, PREDICT, "--config-file", config_file, "--weights", weights,
        "--input", image_root, "--output", str(out), "--score-thresh", "0.5",
        "TEST.DETECTIONS_PER_IMAGE", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "predictions.json").read_text())
    assert [os.path.basename(r["file"]) for r in results] == ["000001.png", "000002.png"]
    names = synthetic_class_names()
    for r in results:
        n = len(r["boxes"])
        assert 1 <= n <= 3
        assert len(r["scores"]) == len(r["classes"]) == len(r["class_names"]) == n
        assert (r["width"], r["height"]) == (64, 64)
        for (x0, y0, x1, y1), score, c, name in zip(
            r["boxes"], r["scores"], r["classes"], r["class_names"]
        ):
            assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64
            assert 0.5 <= score <= 1.0
            assert name == names[c]
        picture = cv2.imread(str(out / r["picture"]))
        assert picture is not None and picture.shape == (64, 64, 3)


def test_input_listing_and_errors(tmp_path):
    predict = load_predict_module()
    _, image_root = make_tiny_coco(tmp_path / "d", num_images=2, image_size=64)
    one = os.path.join(image_root, "000001.png")
    assert predict.list_inputs([image_root, one]) == [one, os.path.join(image_root, "000002.png")]
    assert predict.list_inputs([os.path.join(image_root, "*2.png")]) == [
        os.path.join(image_root, "000002.png")
    ]
    with pytest.raises(SystemExit, match="no such file"):
        predict.list_inputs([str(tmp_path / "missing.jpg")])
    with pytest.raises(SystemExit, match="has no images"):
        predict.list_inputs([str(tmp_path)])
    assert predict.picture_names(["a/x.jpg", "b/x.png", "y.jpg"]) == ["x.png", "x_2.png", "y.png"]

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):
        predict.resolve_weights(str(tmp_path / "nope.pth"), cfg)
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(SystemExit, match="pass --weights"):
        predict.resolve_weights(None, cfg)
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert predict.resolve_weights(None, cfg) == str(tmp_path / "model_final.pth")
