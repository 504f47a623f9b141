"""Whole-model benchmarks: focal_rpn's models against detectron2's stock ones.

Cases (``scale=1.0``; every model is built from this repo's configs with a ResNet-18 FPN,
random initialisation, FrozenBN and frozen stem/res2 as detectron2's defaults, 80 classes as on
COCO, random 256 x 256 images with 7 random ground-truth boxes each, as COCO's mean):

* ``retinanet_train``: FocalRetinaNet (sigmoid) vs detectron2's ``RetinaNet`` (same cfg with
  ``MODEL.META_ARCHITECTURE = "RetinaNet"``, same weights), one training step = forward, loss,
  backward and an SGD step, batch 4.
* ``retinanet_infer``: the same two models in eval mode under ``torch.no_grad()``, batch 4.
* ``fl_rpn_sigmoid_train`` / ``fl_rpn_softmax_train``: Faster R-CNN R18-FPN with FocalRPN vs
  with detectron2's standard ``RPN`` (same cfg otherwise), training step, batch 8.

Timing: both models of a case live in one process; after warm-up steps, ours and the baseline
run alternately (ours first on even repeats, the baseline first on odd ones) so that drift of a
shared machine hits both; each row reports the median over the repeats, and the ratio is
median(ours) / median(baseline).

Peak memory: each (case, model) runs again in a fresh subprocess (``python bench_models.py
--worker CASE VARIANT``) that builds the model and runs one warm-up step, then
* ``*_peak_mb`` (the table's column): the peak of the tensor bytes allocated during one step,
  as in the other suites (bench_losses' ``peak_memory_mb``: on CPU ``torch.profiler``'s memory
  records, on CUDA ``torch.cuda.max_memory_allocated``). Deterministic: the step's
  activations, gradients and temporaries, not the weights or optimizer state held before it;
  memory a library allocates outside PyTorch (oneDNN's scratch buffers) is not counted.
* ``*_rss_mb`` (JSON only): the process's peak resident set size over two more steps
  (``VmHWM``, reset after the warm-up: interpreter, libraries, both models' weights, optimizer
  state and the steps' memory, all together, allocator slack included). What the system sees,
  but it moves by +-10 MB between identical workers.

Run ``python benchmarks/bench_models.py [--scale S] [--repeats R]`` for this file's rows alone.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
NUM_CLASSES = 80
BOXES_PER_IMAGE = 7
LEARNING_RATE = 0.0  # the SGD step runs in full, but random weights cannot diverge over repeats


def _cases():
    """name -> (ours config file + opts, baseline config file + opts, mode, batch size)."""
    stock_retinanet = ["MODEL.META_ARCHITECTURE", "RetinaNet"]
    return {
        "retinanet_train": (
            ("retinanet_R50.yaml", []), ("retinanet_R50.yaml", stock_retinanet), "train", 4,
        ),
        "retinanet_infer": (
            ("retinanet_R50.yaml", []), ("retinanet_R50.yaml", stock_retinanet), "infer", 4,
        ),
        "fl_rpn_sigmoid_train": (
            ("faster_rcnn_R50_FL-RPN_sigmoid.yaml", []), ("faster_rcnn_R50_FPN.yaml", []),
            "train", 8,
        ),
        "fl_rpn_softmax_train": (
            ("faster_rcnn_R50_FL-RPN_softmax.yaml", []), ("faster_rcnn_R50_FPN.yaml", []),
            "train", 8,
        ),
    }


CASES = tuple(_cases())
BASELINE_NAMES = {
    "retinanet_train": "d2 RetinaNet",
    "retinanet_infer": "d2 RetinaNet",
    "fl_rpn_sigmoid_train": "d2 RPN",
    "fl_rpn_softmax_train": "d2 RPN",
}


def image_size(scale: float) -> int:
    """256 px at scale 1; a multiple of 32 (the FPN's size divisibility), at least 64."""
    return max(64, int(round(256 * scale / 32)) * 32)


def batch_size(case: str, scale: float) -> int:
    full = _cases()[case][3]
    return full if scale >= 1.0 else max(1, min(full, int(round(full * scale))))


def describe(scale: float = 1.0) -> str:
    """One line naming the benchmark configuration."""
    size = image_size(scale)
    if scale >= 1.0:
        return (
            f"models: ResNet-18 FPN (256 ch), {NUM_CLASSES} classes, {size}x{size} px, "
            f"{BOXES_PER_IMAGE} gt boxes/img; RetinaNet batch 4, Faster R-CNN batch 8, SGD"
        )
    return f"models: ResNet-18 FPN (32 ch, 1 head conv), {NUM_CLASSES} classes, {size}x{size} px"


def build_cfg(config_file, opts=(), scale=1.0, device="cpu"):
    from detectron2.config import get_cfg

    import focal_rpn

    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config_file))
    size = image_size(scale)
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS", "",
            "MODEL.DEVICE", device,
            "MODEL.RESNETS.DEPTH", 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
            "MODEL.RETINANET.NUM_CLASSES", NUM_CLASSES,
            "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES,
            "INPUT.MIN_SIZE_TEST", size,
            "INPUT.MAX_SIZE_TEST", size,
        ]
    )
    if scale < 1.0:  # smoke sizes: seconds, not representative
        cfg.merge_from_list(
            [
                "MODEL.FPN.OUT_CHANNELS", 32,
                "MODEL.RETINANET.NUM_CONVS", 1,
                "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
                "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
                "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
                "MODEL.RPN.POST_NMS_TOPK_TEST", 200,
            ]
        )
    cfg.merge_from_list(list(opts))
    return cfg


def make_inputs(num_images, size, train=True, seed=0, device="cpu"):
    """detectron2 inputs: random uint8-valued float CHW images, random boxes and classes."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, size, size), generator=g).float().to(device)
        item = {"image": image, "height": size, "width": size}
        if train:
            n = BOXES_PER_IMAGE
            xy = torch.rand(n, 2, generator=g) * size * 0.75
            wh = 8 + torch.rand(n, 2, generator=g) * (size / 2 - 8)
            boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
            instances = Instances((size, size))
            instances.gt_boxes = Boxes(boxes.to(device))
            instances.gt_classes = torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device)
            item["instances"] = instances
        inputs.append(item)
    return inputs


def build_pair(case, scale=1.0, device="cpu"):
    """(ours, baseline) models of ``case`` with the same weights where they share parameters."""
    from detectron2.modeling import build_model

    (ours_file, ours_opts), (base_file, base_opts), _, _ = _cases()[case]
    torch.manual_seed(0)
    ours = build_model(build_cfg(ours_file, ours_opts, scale, device))
    torch.manual_seed(0)
    base = build_model(build_cfg(base_file, base_opts, scale, device))
    # Same weights wherever the two have the same parameter (FocalRPN's objectness conv may
    # have another shape or bias): the comparison is then one of code paths only.
    ours_state = ours.state_dict()
    shared = {
        k: v for k, v in base.state_dict().items()
        if k in ours_state and ours_state[k].shape == v.shape
    }
    ours.load_state_dict(shared, strict=False)
    if getattr(getattr(ours, "proposal_generator", None), "activation", None) == "softmax":
        _copy_objectness_into_softmax_pairs(ours.proposal_generator, base.proposal_generator)
    return ours, base


def _copy_objectness_into_softmax_pairs(focal_rpn, rpn):
    """Give softmax FocalRPN the baseline's objectness: logit(object) = the baseline's logit,
    logit(background) = 0, so p(object) and the proposals are the same. Otherwise the two
    models propose different boxes, and roi_align's cost (which grows with the box area at
    detectron2's adaptive sampling ratio) would make the comparison one of random weights."""
    from focal_rpn.modeling.rpn import BACKGROUND, OBJECT

    pairs = focal_rpn.rpn_head.objectness_logits
    single = rpn.rpn_head.objectness_logits
    with torch.no_grad():
        weight = pairs.weight.view(-1, 2, *pairs.weight.shape[1:])
        weight[:, OBJECT] = single.weight
        weight[:, BACKGROUND] = 0.0
        bias = pairs.bias.view(-1, 2)
        bias[:, OBJECT] = single.bias
        bias[:, BACKGROUND] = 0.0


def build_one(case, variant, scale=1.0, device="cpu"):
    """The ``variant`` ("ours" or "baseline") model of :func:`build_pair` alone (both are built
    in either case, so that the peak memory of the two workers counts the same)."""
    ours, base = build_pair(case, scale, device)
    return ours if variant == "ours" else base


class Step:
    """A callable that runs one training step (or one inference) of ``model``."""

    def __init__(self, model, mode, inputs):
        self.model = model
        self.mode = mode
        self.inputs = inputs
        if mode == "train":
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.SGD(
                params, lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4
            )
        else:
            model.eval()

    def __call__(self):
        from detectron2.utils.events import EventStorage

        if self.mode == "train":
            with EventStorage():
                losses = self.model(copy.copy(self.inputs))
            loss = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        else:
            with torch.no_grad():
                self.model(self.inputs)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_alternating(step_ours, step_base, repeats, warmup=2, device="cpu"):
    """Median milliseconds of ours and the baseline, run alternately after ``warmup`` each."""
    for _ in range(warmup):
        step_ours()
        step_base()
    _sync(device)
    times = {"ours": [], "base": []}
    for r in range(repeats):
        order = (("ours", step_ours), ("base", step_base))
        for name, step in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times["ours"]), statistics.median(times["base"])


def _measure_peak(case, variant, scale, device):
    """Runs in the worker subprocess: {"peak_mb": tensor bytes at the peak of one step,
    "rss_mb": the process's peak resident set over two more steps}, in MiB, after a warm-up
    step (see the module docstring)."""
    import bench_losses  # a sibling: benchmarks/ is on sys.path when a script here runs

    from focal_rpn.engine.hooks import peak_memory_mb, reset_peak_memory

    mode = _cases()[case][2]
    model = build_one(case, variant, scale, device)
    inputs = make_inputs(batch_size(case, scale), image_size(scale), mode == "train", 0, device)
    step = Step(model, mode, inputs)
    step()
    tensor_peak = bench_losses.peak_memory_mb(step, torch.device(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    reset_peak_memory(device)
    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"peak_mb": tensor_peak, "rss_mb": peak_memory_mb(device)}


def measure_peaks(case, variant, scale=1.0, device="cpu", threads=None):
    """:func:`_measure_peak` of ``case``/``variant`` in a fresh subprocess; NaNs if it failed."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", case, variant,
        "--scale", str(scale), "--device", device,
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.stderr.write(f"[bench_models] memory worker {case}/{variant} failed:\n{proc.stderr}\n")
    return {"peak_mb": float("nan"), "rss_mb": float("nan")}


def run(scale=1.0, repeats=5, cases=None, device=None, memory=True):
    """Rows {case, ours_ms, baseline, baseline_ms, ratio, ours_peak_mb, baseline_peak_mb,
    ours_rss_mb, baseline_rss_mb} (the memory keys NaN without ``memory``)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for case in cases or CASES:
        mode = _cases()[case][2]
        ours, base = build_pair(case, scale, device)
        inputs = make_inputs(batch_size(case, scale), image_size(scale), mode == "train", 0, device)
        ours_ms, base_ms = time_alternating(
            Step(ours, mode, inputs), Step(base, mode, inputs), repeats,
            warmup=2 if scale >= 1.0 else 1, device=device,
        )
        del ours, base
        row = {
            "case": case,
            "ours_ms": ours_ms,
            "baseline": BASELINE_NAMES[case],
            "baseline_ms": base_ms,
            "ratio": ours_ms / base_ms,
            "ours_peak_mb": float("nan"),
            "baseline_peak_mb": float("nan"),
        }
        if memory:
            threads = torch.get_num_threads()
            for variant in ("ours", "baseline"):
                peaks = measure_peaks(case, variant, scale, device, threads)
                row[f"{variant}_peak_mb"] = peaks["peak_mb"]
                row[f"{variant}_rss_mb"] = peaks["rss_mb"]
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cases", nargs="*", default=None, choices=CASES)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        case, variant = args.worker
        print(json.dumps(_measure_peak(case, variant, args.scale, args.device or "cpu")))
        return
    for row in run(args.scale, args.repeats, args.cases, args.device, not args.no_memory):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
