"""Export FocalRetinaNet and Faster R-CNN with FocalRPN to TorchScript or ONNX, and check them.

Both formats go through detectron2's ``TracingAdapter`` (the model as a function of flat
tensors): TorchScript by ``torch.jit.trace`` (reloaded with ``torch.jit.load``), ONNX by
``torch.onnx.export`` (run with onnxruntime on CPU). ``check_exported`` compares the exported
model with eager PyTorch on the same images: the same number of detections, boxes within
``BOX_ATOL`` pixels, scores within ``SCORE_ATOL``, identical classes.

A traced model is exported for one input size: the image size it was traced with. Images of
another size are refused with :class:`UnsupportedExportError` rather than silently run.

Shapes: an image is a (3, H, W) float tensor in the model's input format (BGR, 0..255), already
resized by the config's test resize (as detectron2's DefaultPredictor does).
"""
import os
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, ListSchema, TupleSchema
from detectron2.modeling import GeneralizedRCNN

from .modeling import FocalRetinaNet, FocalRPN

__all__ = [
    "BOX_ATOL",
    "SCORE_ATOL",
    "FORMATS",
    "ExportCheckError",
    "UnsupportedExportError",
    "check_exportable",
    "check_exported",
    "export",
    "measure_latency",
]

FORMATS = ("torchscript", "onnx")
#: What runs each format's exported model.
RUNTIME_NAMES = {"torchscript": "torchscript", "onnx": "onnxruntime"}
#: Largest allowed difference of an exported model's boxes from eager, in pixels.
BOX_ATOL = 1e-3
#: Largest allowed difference of an exported model's scores from eager.
SCORE_ATOL = 1e-4
ONNX_OPSET = 17  # >= 16: ROIAlign with aligned=True (detectron2's ROIAlignV2)


class UnsupportedExportError(ValueError):
    """The model, format or input is a combination this exporter does not support."""


class ExportCheckError(AssertionError):
    """The exported model's outputs differ from eager PyTorch's."""


def check_exportable(model: nn.Module, fmt: str) -> None:
    """Raise UnsupportedExportError unless ``model`` is a FocalRetinaNet or a box-only
    GeneralizedRCNN with a FocalRPN, and ``fmt`` one of FORMATS."""
    if fmt not in FORMATS:
        raise UnsupportedExportError(f"--format {fmt!r} is not supported; allowed: {list(FORMATS)}")
    if isinstance(model, FocalRetinaNet):
        return
    if isinstance(model, GeneralizedRCNN):
        generator = type(model.proposal_generator).__name__
        if not isinstance(model.proposal_generator, FocalRPN):
            raise UnsupportedExportError(
                f"GeneralizedRCNN with proposal generator {generator} is not supported: "
                "this exporter takes FocalRetinaNet or Faster R-CNN with FocalRPN "
                "(PROPOSAL_GENERATOR.NAME 'FocalRPN')"
            )
        heads = model.roi_heads
        for extra in ("mask_on", "keypoint_on"):
            if getattr(heads, extra, False):
                raise UnsupportedExportError(
                    f"Faster R-CNN with FocalRPN and ROI heads with {extra}=True is not "
                    "supported: this exporter checks boxes, scores and classes only"
                )
        return
    raise UnsupportedExportError(
        f"model {type(model).__name__} is not supported: this exporter takes FocalRetinaNet "
        "(META_ARCHITECTURE 'FocalRetinaNet') or Faster R-CNN with FocalRPN "
        "(GeneralizedRCNN, PROPOSAL_GENERATOR.NAME 'FocalRPN')"
    )


def _inference(model, inputs):
    """Detections (list of Instances, in the coordinates of the input image) of a list of
    input dicts {"image": (3, H, W)}."""
    if isinstance(model, GeneralizedRCNN):
        return model.inference(inputs, do_postprocess=False)
    return [output["instances"] for output in model(inputs)]


def tracing_adapter(model: nn.Module, image: Tensor) -> TracingAdapter:
    """detectron2's TracingAdapter: ``adapter(image)`` returns the detections as a tuple of
    tensors (see :func:`output_names`).

    A FocalRetinaNet with CPU bfloat16 autocast is switched to float32 (``cpu_bf16 = False``)
    first: exported graphs are float32, and the eager outputs they are checked against must be
    too (bfloat16 moves scores by about 1e-2, past the checks' tolerances)."""
    if getattr(model, "cpu_bf16", False) is not False:
        model.cpu_bf16 = False
    # eval(): torch.onnx.export restores the adapter's own mode afterwards, recursively
    return TracingAdapter(model, [{"image": image}], _inference).eval()


def output_names(adapter: TracingAdapter) -> List[str]:
    """The names of the flat outputs of ``adapter`` (called once), e.g. ``["0.pred_boxes",
    "0.pred_classes", "0.scores", "0.image_size"]``."""
    def walk(schema, prefix):
        if isinstance(schema, DictSchema):  # also InstancesSchema: fields, then image_size
            names = []
            for key, sub, size in zip(schema.keys, schema.schemas, schema.sizes):
                sub_names = walk(sub, f"{prefix}{key}.")
                names += sub_names if len(sub_names) == size else [f"{prefix}{key}"] * size
            if type(schema).__name__ == "InstancesSchema":
                names.append(f"{prefix}image_size")
            return names
        if isinstance(schema, (ListSchema, TupleSchema)):
            names = []
            for i, (sub, size) in enumerate(zip(schema.schemas, schema.sizes)):
                sub_names = walk(sub, f"{prefix}{i}.")
                names += sub_names if len(sub_names) == size else [f"{prefix}{i}"] * size
            return names
        return [prefix.rstrip(".")]

    return walk(adapter.outputs_schema, "")


def export(model: nn.Module, fmt: str, image: Tensor, output_dir: str):
    """Export ``model`` (eval mode, CPU) traced on ``image`` (3, H, W) to ``output_dir``.

    Returns:
        (path of the exported file, runner): ``runner(image)`` runs the reloaded exported model
        (TorchScript: ``torch.jit.load``; ONNX: an onnxruntime CPU session) and returns its
        flat outputs as a tuple of CPU tensors.
    """
    check_exportable(model, fmt)
    model.eval()
    os.makedirs(output_dir, exist_ok=True)
    adapter = tracing_adapter(model, image)
    with torch.no_grad():
        adapter(*adapter.flattened_inputs)  # fills adapter.outputs_schema
    names = output_names(adapter)
    size = tuple(image.shape[-2:])
    if fmt == "torchscript":
        path = os.path.join(output_dir, "model.ts")
        with torch.no_grad():
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        traced.save(path)
        loaded = torch.jit.load(path)

        def run(img):
            _check_size(img, size, fmt)
            with torch.no_grad():
                return tuple(loaded(img))

        return path, run
    import onnxruntime

    path = os.path.join(output_dir, "model.onnx")
    export_kwargs = {"dynamo": False} if "dynamo" in _onnx_export_params() else {}
    with torch.no_grad():
        torch.onnx.export(
            adapter, adapter.flattened_inputs, path, input_names=["image"],
            output_names=[f"output{i}:{n}" for i, n in enumerate(names)],
            opset_version=ONNX_OPSET, **export_kwargs,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch's
    session = onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )

    def run(img):
        _check_size(img, size, fmt)
        outputs = session.run(None, {"image": img.detach().cpu().numpy()})
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)

    return path, run


def _onnx_export_params():
    import inspect

    return inspect.signature(torch.onnx.export).parameters


def _check_size(image: Tensor, size: Tuple[int, int], fmt: str) -> None:
    if tuple(image.shape[-2:]) != size:
        raise UnsupportedExportError(
            f"--format {fmt} was exported for input size {size[0]}x{size[1]} (the traced "
            f"image); an image of {image.shape[-2]}x{image.shape[-1]} is a dynamic input size, "
            "which a traced export does not support: export once per input size"
        )


def eager_runner(model: nn.Module, image: Tensor) -> Callable[[Tensor], Tuple[Tensor, ...]]:
    """``runner(image)``: eager PyTorch's flat outputs, in the exported models' layout."""
    adapter = tracing_adapter(model.eval(), image)

    def run(img):
        with torch.no_grad():
            return tuple(t.detach().cpu() for t in adapter(img))

    return run


def _tolerance(name: str):
    if name.endswith("boxes"):
        return BOX_ATOL, "px"
    if name.endswith("scores"):
        return SCORE_ATOL, ""
    return 0, ""  # classes, image size: exact


def check_exported(eager, exported, images: Sequence[Tensor], names: Sequence[str]) -> Dict:
    """Compare two runners on ``images``; raise ExportCheckError naming the first output that
    differs. Returns {"images": n, "detections": total, "max_box_diff": px,
    "max_score_diff": x}."""
    max_diff = {"boxes": 0.0, "scores": 0.0}
    detections = 0
    for index, image in enumerate(images):
        expected, got = eager(image), exported(image)
        if len(expected) != len(got):
            raise ExportCheckError(
                f"image {index}: the exported model returns {len(got)} outputs, eager "
                f"{len(expected)}"
            )
        for name, e, g in zip(names, expected, got):
            if tuple(e.shape) != tuple(g.shape):
                raise ExportCheckError(
                    f"image {index}: output {name} has shape {tuple(g.shape)} exported, "
                    f"{tuple(e.shape)} eager (a different number of detections)"
                )
            if name.endswith("scores"):
                detections += e.shape[0]
            if e.numel() == 0:
                continue
            atol, unit = _tolerance(name)
            diff = (e.double() - g.double()).abs().max().item()
            for kind in max_diff:
                if name.endswith(kind):
                    max_diff[kind] = max(max_diff[kind], diff)
            if not diff <= atol:
                raise ExportCheckError(
                    f"image {index}: output {name} differs from eager by {diff:.3g}{unit} "
                    f"(allowed {atol:g}{unit})"
                )
    return {
        "images": len(images),
        "detections": detections,
        "max_box_diff": max_diff["boxes"],
        "max_score_diff": max_diff["scores"],
    }


def measure_latency(runners: Dict[str, Callable], images: Sequence[Tensor], runs: int = 5,
                    warmup: int = 1) -> Dict[str, float]:
    """Images per second of each runner: 1 / median over ``runs`` rounds of the time per image.
    The runners take turns within each round (same images, same machine load)."""
    for _ in range(warmup):
        for run in runners.values():
            run(images[0])
    per_image = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            for image in images:
                run(image)
            per_image[name].append((time.perf_counter() - start) / len(images))
    return {name: 1.0 / statistics.median(times) for name, times in per_image.items()}
