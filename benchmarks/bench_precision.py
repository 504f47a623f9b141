"""The levers of issue 25 on the demo recipe's model, one process, alternating: float32,
bfloat16 autocast (MODEL.FOCAL_RETINANET.CPU_BF16), and, with ``--compile``, the same two with
the backbone and the head under ``torch.compile`` (inductor, CPU).

The model is ``focal_rpn.engine.Trainer.build_model`` of configs/quick_retinanet_R18.yaml with
its AdamW; one step = forward, loss, backward, optimizer step on a batch of 8 random 256 px
images with 7 boxes each (``bench_models.make_inputs``), 6 classes. The same weights in every
variant (each its own copy). Compilation is timed apart (the first steps of a compiled
variant) and its step times after it. Prints one JSON line per variant and the ratios to
float32 eager.

    .venv/bin/python benchmarks/bench_precision.py [--repeats 8] [--compile]
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_models  # noqa: E402

REPO = bench_models.REPO


def build(cpu_bf16: bool, compiled: bool, state=None):
    from detectron2.config import get_cfg

    import focal_rpn
    from focal_rpn.engine import Trainer

    cfg = get_cfg()
    focal_rpn.add_focal_rpn_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "quick_retinanet_R18.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.FOCAL_RETINANET.CPU_BF16", cpu_bf16])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    if state is not None:
        model.load_state_dict(state)
    if compiled:
        model.backbone = torch.compile(model.backbone)
        model.head = torch.compile(model.head)
    return model, Trainer.build_optimizer(cfg, model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="also the torch.compile variants (minutes of compilation each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = bench_models.make_inputs(8, 256, True, 0, "cpu", num_classes=6)
    variants = [("float32", False, False), ("bfloat16 autocast", True, False)]
    if args.compile:
        variants += [("float32 + compile", False, True), ("bfloat16 + compile", True, True)]
    reference, _ = build(False, False)
    state = copy.deepcopy(reference.state_dict())
    steps, compile_s = {}, {}
    for name, bf16, compiled in variants:
        model, optimizer = build(bf16, compiled, state)
        steps[name] = bench_models.Step(model, "train", inputs, optimizer)
        start = time.perf_counter()
        steps[name]()  # warm-up (and compilation)
        steps[name]()
        compile_s[name] = time.perf_counter() - start
    times = {name: [] for name in steps}
    for r in range(args.repeats):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["float32"])
    for name in steps:
        median = statistics.median(times[name])
        print(json.dumps({"variant": name, "step_ms": median * 1e3, "ratio_to_float32":
                          median / base, "first_two_steps_s": compile_s[name]}))


if __name__ == "__main__":
    main()
