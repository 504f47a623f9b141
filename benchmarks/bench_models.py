"""Whole-model benchmarks: focal_rpn's models against detectron2's stock ones.

Cases (``scale=1.0``; every model is built from this repo's configs with a ResNet-18 FPN,
random initialisation, FrozenBN and frozen stem/res2 as detectron2's defaults, 80 classes as on
COCO, random 256 x 256 images with 7 random ground-truth boxes each, as COCO's mean):

* ``retinanet_train``: FocalRetinaNet (sigmoid) vs detectron2's ``RetinaNet`` (same cfg with
  ``MODEL.META_ARCHITECTURE = "RetinaNet"``, same weights), one training step = forward, loss,
  backward and an SGD step, batch 4.
* ``retinanet_infer``: the same two models in eval mode under ``torch.no_grad()``, batch 4.
  FocalRetinaNet with MODEL.FOCAL_RETINANET.CPU_BF16 "auto" (the default), i.e. bfloat16
  autocast of the backbone and head where the CPU computes bfloat16 natively (the machine line
  names its vector ISA), float32 elsewhere; detectron2's RetinaNet in float32.
* ``retinanet_fp32_train`` / ``retinanet_fp32_infer``: the same with CPU_BF16 False (the
  path of a CPU without native bfloat16).
* ``fl_rpn_sigmoid_train`` / ``fl_rpn_softmax_train``: Faster R-CNN R18-FPN with FocalRPN vs
  with detectron2's standard ``RPN`` (same cfg otherwise), training step, batch 8.
* ``faster_rcnn_recipe_train``: the CPU Faster R-CNN recipe of the comparison
  (``configs/quick_faster_rcnn_R18.yaml``, read when the case runs: its backbone, widths,
  classes, batch ``SOLVER.IMS_PER_BATCH``, image size ``INPUT.MIN_SIZE_TRAIN`` and optimizer),
  end to end: the model of ``focal_rpn.engine.Trainer.build_model`` (FastROIAlign and the rest)
  vs the model of detectron2's ``DefaultTrainer.build_model``, same weights and inputs, one
  training step each with the recipe's optimizer (``Trainer.build_optimizer`` for both: stock
  detectron2 has no AdamW) at learning rate 0.
* ``faster_rcnn_recipe_infer``: the same two models behind detectron2's ``DefaultPredictor``
  (its resize and format conversion; its ``model`` is the Trainer-built one for ours), one
  random ``INPUT.MIN_SIZE_TEST`` BGR image per call; ms per image, images per second in the
  JSON (``ours_images_per_s``, ``baseline_images_per_s``).

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
    fp32 = ["MODEL.FOCAL_RETINANET.CPU_BF16", False]
    bf16 = ["MODEL.FOCAL_RETINANET.CPU_BF16", "auto"]  # the default: bfloat16 where native
    return {
        "retinanet_train": (
            ("retinanet_R50.yaml", bf16), ("retinanet_R50.yaml", stock_retinanet), "train", 4,
        ),
        "retinanet_infer": (
            ("retinanet_R50.yaml", bf16), ("retinanet_R50.yaml", stock_retinanet), "infer", 4,
        ),
        # the float32 path (where the CPU has no native bfloat16, "auto" is this one)
        "retinanet_fp32_train": (
            ("retinanet_R50.yaml", fp32), ("retinanet_R50.yaml", stock_retinanet), "train", 4,
        ),
        "retinanet_fp32_infer": (
            ("retinanet_R50.yaml", fp32), ("retinanet_R50.yaml", stock_retinanet), "infer", 4,
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
    "retinanet_fp32_train": "d2 RetinaNet",
    "retinanet_fp32_infer": "d2 RetinaNet",
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


def describe_recipe(scale: float = 1.0) -> str:
    """One line naming the recipe cases' configuration, as read from RECIPE_CONFIG now."""
    cfg = recipe_cfg(scale)
    return (
        f"faster_rcnn_recipe: configs/{RECIPE_CONFIG}: {cfg.MODEL.BACKBONE.NAME}, "
        f"R{cfg.MODEL.RESNETS.DEPTH} (stem {cfg.MODEL.RESNETS.STEM_OUT_CHANNELS} ch), "
        f"FPN {cfg.MODEL.FPN.OUT_CHANNELS} ch on {','.join(cfg.MODEL.RPN.IN_FEATURES)}, "
        f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes, batch {cfg.SOLVER.IMS_PER_BATCH} of "
        f"{cfg.INPUT.MIN_SIZE_TRAIN[0]} px, {cfg.SOLVER.OPTIMIZER}; inference "
        f"{cfg.INPUT.MIN_SIZE_TEST} px, 1 image per DefaultPredictor call"
    )


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


def make_inputs(num_images, size, train=True, seed=0, device="cpu", num_classes=NUM_CLASSES):
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
            instances.gt_classes = torch.randint(0, num_classes, (n,), generator=g).to(device)
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

    def __init__(self, model, mode, inputs, optimizer=None):
        self.model = model
        self.mode = mode
        self.inputs = inputs
        if mode == "train":
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            self.optimizer = optimizer or torch.optim.SGD(
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


#: The CPU Faster R-CNN recipe of the comparison (tools/compare_rpn.py), read at run time.
RECIPE_CONFIG = "quick_faster_rcnn_R18.yaml"
RECIPE_CASES = ("faster_rcnn_recipe_train", "faster_rcnn_recipe_infer")
RECIPE_BASELINES = {
    "faster_rcnn_recipe_train": "d2 DefaultTrainer model",
    "faster_rcnn_recipe_infer": "d2 DefaultPredictor, stock model",
}


def recipe_cfg(scale=1.0, device="cpu"):
    """The recipe's config as train_net reads it (detectron2's defaults, focal_rpn's nodes, the
    file), on ``device``, random weights, learning rate 0 (repeated steps stay comparable).
    ``scale < 1`` (smoke tests): 2 images of 128 px."""
    from detectron2.config import get_cfg

    import focal_rpn

    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, RECIPE_CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, "SOLVER.BASE_LR", 0.0])
    if scale < 1.0:
        cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", 2, "INPUT.MIN_SIZE_TRAIN", (128,),
                             "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 128,
                             "INPUT.MAX_SIZE_TEST", 128])
    return cfg


def build_recipe_pair(cfg):
    """(ours, stock): ``focal_rpn.engine.Trainer.build_model(cfg)`` and detectron2's
    ``DefaultTrainer.build_model(cfg)``, the stock one loaded with ours' weights (strict)."""
    from detectron2.engine import DefaultTrainer

    from focal_rpn.engine import Trainer

    torch.manual_seed(0)
    ours = Trainer.build_model(cfg)
    torch.manual_seed(0)
    base = DefaultTrainer.build_model(cfg)
    base.load_state_dict(ours.state_dict(), strict=True)
    return ours, base


class PredictorStep:
    """One ``DefaultPredictor`` call per image of ``images`` (HWC uint8 BGR numpy arrays)."""

    def __init__(self, cfg, model, images):
        from detectron2.engine import DefaultPredictor

        self.predictor = DefaultPredictor(cfg)
        model.eval()
        self.predictor.model = model  # its own stock model for the baseline, ours otherwise
        self.images = images

    def __call__(self):
        for image in self.images:
            self.predictor(image)


def recipe_rows(scale=1.0, repeats=5, device="cpu"):
    """The rows of RECIPE_CASES (no memory columns)."""
    import numpy as np

    from focal_rpn.engine import Trainer

    cfg = recipe_cfg(scale, device)
    ours, base = build_recipe_pair(cfg)
    size = cfg.INPUT.MIN_SIZE_TRAIN[0]
    batch = cfg.SOLVER.IMS_PER_BATCH
    inputs = make_inputs(batch, size, True, 0, device, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    warmup = 2 if scale >= 1.0 else 1
    rows = []
    steps = [Step(m, "train", inputs, Trainer.build_optimizer(cfg, m)) for m in (ours, base)]
    ours_ms, base_ms = time_alternating(*steps, repeats, warmup=warmup, device=device)
    rows.append(_row("faster_rcnn_recipe_train", ours_ms, base_ms))
    del steps
    g = np.random.default_rng(0)
    test_size = cfg.INPUT.MIN_SIZE_TEST
    images = [g.integers(0, 256, (test_size, test_size, 3), dtype=np.uint8) for _ in range(batch)]
    stock_predictor_cfg = cfg.clone()
    steps = [PredictorStep(cfg, ours, images), PredictorStep(stock_predictor_cfg, base, images)]
    ours_ms, base_ms = time_alternating(*steps, repeats, warmup=warmup, device=device)
    row = _row("faster_rcnn_recipe_infer", ours_ms / len(images), base_ms / len(images))
    row["ours_images_per_s"] = 1e3 / row["ours_ms"]
    row["baseline_images_per_s"] = 1e3 / row["baseline_ms"]
    rows.append(row)
    return rows


def _row(case, ours_ms, base_ms):
    return {
        "case": case,
        "ours_ms": ours_ms,
        "baseline": RECIPE_BASELINES.get(case) or BASELINE_NAMES[case],
        "baseline_ms": base_ms,
        "ratio": ours_ms / base_ms,
        "ours_peak_mb": float("nan"),
        "baseline_peak_mb": float("nan"),
    }


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
    cases = list(cases or CASES + RECIPE_CASES)
    for case in [c for c in cases if c not in RECIPE_CASES]:
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
    if any(case in RECIPE_CASES for case in cases):
        rows += [r for r in recipe_rows(scale, repeats, device) if r["case"] in cases]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cases", nargs="*", default=None, choices=CASES + RECIPE_CASES)
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
