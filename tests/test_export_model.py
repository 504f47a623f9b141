"""tools/export_model.py: both models in both formats export, reload and match eager PyTorch;
the check fails on outputs that differ; unsupported combinations fail by name."""
import os
import re
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer

from focal_rpn.export import (
    ExportCheckError,
    UnsupportedExportError,
    check_exported,
    eager_runner,
    export,
    output_names,
    tracing_adapter,
)
from tiny_models import IMAGE_SIZE, REPO, TINY_OPTS, tiny_model

sys.path.insert(0, os.path.join(REPO, "tools"))
import export_model  # noqa: E402

sys.path.pop(0)

MODELS = [
    ("retinanet_R50.yaml", []),
    # bfloat16 on CPU: exported in float32 and checked against the float32 eager model
    ("retinanet_R50.yaml", ["MODEL.FOCAL_RETINANET.CPU_BF16", True]),
    ("faster_rcnn_R50_FL-RPN_sigmoid.yaml", []),
    ("faster_rcnn_R50_FL-RPN_softmax.yaml", []),
]


def confident(model):
    """Make a random RetinaNet detect something (its prior gives scores of 0.01 < 0.05)."""
    if hasattr(model, "head"):
        with torch.no_grad():
            model.head.cls_score.bias.add_(4.0)
    return model


def saved_weights(config_file, tmp_path, opts=()):
    model = confident(tiny_model(config_file, opts))
    DetectionCheckpointer(model, str(tmp_path)).save("weights")
    return str(tmp_path / "weights.pth")


def run_cli(config_file, weights, fmt, output, *extra, opts=()):
    argv = ["--config-file", os.path.join(REPO, "configs", config_file), "--weights", weights,
            "--format", fmt, "--output", str(output), *extra, "--num-images", "2", "--runs", "1"]
    return export_model.main(argv + [str(o) for o in TINY_OPTS + list(opts)])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("config_file,opts", MODELS)
def test_export_and_check(config_file, opts, fmt, tmp_path, capsys):
    weights = saved_weights(config_file, tmp_path, opts)
    # one case also exports and checks the other format and times all three
    latency_all = config_file == "retinanet_R50.yaml" and fmt == "onnx" and not opts
    extra = ["--latency-all"] if latency_all else []
    rc = run_cli(config_file, weights, fmt, tmp_path / "out", *extra, opts=opts)
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    formats = ["torchscript", "onnx"] if latency_all else [fmt]
    for f in formats:
        assert (tmp_path / "out" / ("model.ts" if f == "torchscript" else "model.onnx")).is_file()
    checks = re.findall(r"check passed on 2 images \((\d+) detections\)", out.out)
    assert len(checks) == len(formats) and all(int(n) > 0 for n in checks), out.out
    runtimes = {"torchscript": "torchscript", "onnx": "onnxruntime"}
    for name in ["eager"] + [runtimes[f] for f in formats]:
        assert re.search(rf"^  {name} +\d+\.\d+ images/s", out.out, re.M), out.out


def sample_image(seed=0, size=IMAGE_SIZE):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=g).float()


@pytest.mark.parametrize("config_file,fmt", [("faster_rcnn_R50_FL-RPN_softmax.yaml", "torchscript")])
def test_check_fails_when_outputs_differ(config_file, fmt, tmp_path):
    model = confident(tiny_model(config_file)).eval()
    images = [sample_image(0), sample_image(1)]
    _, exported = export(model, fmt, images[0], str(tmp_path))
    adapter = tracing_adapter(model, images[0])
    with torch.no_grad():
        adapter(images[0])
    names = output_names(adapter)
    report = check_exported(eager_runner(model, images[0]), exported, images, names)
    assert report["detections"] > 0
    # perturb the eager model's weights: the exported one (old weights) must now fail
    predictor = model.head if hasattr(model, "head") else model.roi_heads.box_predictor
    with torch.no_grad():
        for p in predictor.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with pytest.raises(ExportCheckError, match="differs from eager|shape"):
        check_exported(eager_runner(model, images[0]), exported, images, names)


def test_exported_model_refuses_another_input_size(tmp_path):
    model = confident(tiny_model("retinanet_R50.yaml")).eval()
    _, exported = export(model, "torchscript", sample_image(), str(tmp_path))
    with pytest.raises(UnsupportedExportError, match="96x96.*64x80.*dynamic input size"):
        exported(torch.zeros(3, 64, 80))


def write_image(path, height, width):
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))
    return str(path)


@pytest.mark.parametrize(
    "config_file,opts,fmt,extra,message",
    [
        ("retinanet_R50.yaml", ["MODEL.META_ARCHITECTURE", "RetinaNet"], "onnx", [],
         "model RetinaNet is not supported"),
        ("faster_rcnn_R50_FPN.yaml", [], "torchscript", [],
         "proposal generator RPN is not supported"),
        ("retinanet_R50.yaml", [], "tflite", [], "--format 'tflite' is not supported"),
        ("retinanet_R50.yaml", [], "onnx", ["IMAGES"], "dynamic input size is not supported"),
    ],
)
def test_unsupported_combination_fails_by_name(config_file, opts, fmt, extra, message, tmp_path,
                                               capsys):
    weights = saved_weights(config_file, tmp_path, opts)
    if extra == ["IMAGES"]:  # two images that the test resize leaves at different sizes
        extra = ["--sample-image", write_image(tmp_path / "a.png", 96, 96),
                 write_image(tmp_path / "b.png", 96, 48)]
    rc = run_cli(config_file, weights, fmt, tmp_path / "out", *extra, opts=opts)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err, err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
