"""The benchmark suite's one entry point: focal_rpn against the code users would otherwise run.

Prints one table (case, ours, baseline, ratio = ours / baseline, peak memory, the target of the
case and whether it is met), every pair measured in the same run, alternately, so that the
ratio survives a noisy machine. The rows come from:

* ``bench_losses.py``: the focal losses, forward + backward at RetinaNet scale (120,000 x 80);
* ``bench_models.py``: whole-model training steps / inference, ours vs detectron2's stock model;
* ``bench_demo.py``: ``make demo``'s training step through tools/train_net.py, today's default
  vs the default before 2026-12-07 (float32, OMP_WAIT_POLICY=PASSIVE), alternating processes;
* ``bench_evaluator.py``: COCO box evaluation, faster_coco_eval vs pycocotools;
* ``bench_roi_align.py``: the box ROIPooler forward + backward, FastROIAlign vs detectron2's
  ROIAlign (torchvision's single-threaded CPU roi_align);
* ``bench_winograd.py``: 3x3 convolutions of RetinaNet's head, forward + backward, Winograd
  F(4x4, 3x3) vs ``F.conv2d``.

    .venv/bin/python benchmarks/run.py                 # full sizes (about 14 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # tiny sizes: a smoke test, not a measurement
    .venv/bin/python benchmarks/run.py --only losses --json out.json
    .venv/bin/python benchmarks/run.py --max-isa avx2  # an AVX-512 CPU's kernels held to AVX2

Each module also runs alone (see its docstring for how it times and measures memory).
"""
import argparse
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

import torch

SUITES = ("losses", "models", "demo", "evaluator", "roi_align", "winograd")

#: (case prefix, baseline) -> the largest ours / baseline ratio the project promises.
TARGETS = {
    ("sigmoid focal soft-target", None): 1 / 3,  # soft targets: the issue asks for 3x
    ("sigmoid focal", None): 1 / 5,  # the issue names fvcore; torchvision's is the same math
    ("softmax focal", None): 1 / 3,
    ("retinanet_fp32_train", None): 0.9,  # float32: the targets of issue 19
    ("retinanet_fp32_infer", None): 1.0,
    ("retinanet_train", None): 0.6,  # issue 25: bfloat16 where the CPU has it natively
    ("retinanet_infer", None): 0.6,
    ("demo train_net step", None): 0.5,  # issue 25
    ("fl_rpn_sigmoid_train", None): 1.05,
    ("fl_rpn_softmax_train", None): 1.05,
    ("faster_rcnn_recipe_train", None): 0.7,  # issue 19
    ("faster_rcnn_recipe_infer", None): 1.0,  # not in the issue: never slower than stock
    ("COCO bbox eval", None): 1.0,
    ("roi_align", None): 0.5,  # not in the issue: FastROIAlign must at least halve the time
    ("winograd conv", None): 0.75,  # not in the issue: worth its transforms where it is used
    # issue 19: the default is never slower than stock; 1.05 = the noise of timing one
    # convolution twice (where "auto" chose F.conv2d both sides run the same op)
    ("conv3x3 auto", None): 1.05,
}


#: ``--max-isa``: the environment variables that hold oneDNN (convolutions), ATen's vectorised
#: kernels and MKL (matrix products, Winograd's included) to an instruction set. Each library
#: reads its variable when it first loads, so run.py runs again in a child with them set. What
#: this does not change: the clock, the caches and the memory of the machine; an AVX-512 CPU
#: held to AVX2 is a proxy for an AVX2 machine, not one.
ISA_CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def isa_caps_in_effect() -> str:
    """The ISA-capping variables of this process's environment, "NAME=value ...", or ""."""
    return " ".join(f"{k}={os.environ[k]}" for k in ISA_CAP_VARIABLES if os.environ.get(k))


def _load(name: str):
    """A suite's module: its script's folder, benchmarks/, is on sys.path as this one's is."""
    return importlib.import_module(name)


#: Where MODEL.FOCAL_RETINANET.CPU_BF16 "auto" is float32 (no native bfloat16, or kernels held
#: below it by --max-isa): the default rows promise what the float32 path does, and the demo
#: never slower than before.
TARGETS_WITHOUT_NATIVE_BF16 = {
    ("retinanet_train", None): 0.9,
    ("retinanet_infer", None): 1.0,
    ("demo train_net step", None): 1.0,
}


def target_of(row: Dict, native_bf16: bool = None):
    if native_bf16 is None:
        from focal_rpn.layers.cpu_bf16 import cpu_has_native_bf16

        native_bf16 = cpu_has_native_bf16()
    targets = TARGETS if native_bf16 else {**TARGETS, **TARGETS_WITHOUT_NATIVE_BF16}
    for (prefix, baseline), limit in targets.items():
        if row["case"].startswith(prefix) and baseline in (None, row["baseline"]):
            return limit
    return None


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    caps = isa_caps_in_effect()
    return (
        f"{cpu}, {os.cpu_count()} logical cores, vector ISA {cpu_vector_extensions()}, "
        + (f"kernels held by {caps}, " if caps else "")
        + f"oneDNN {onednn_isa()}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{bf16_line()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), Python {platform.python_version()}, "
        f"load average {load} at the end"
    )


def bf16_line() -> str:
    """What MODEL.FOCAL_RETINANET.CPU_BF16 "auto" does on this machine (focal_rpn.layers.cpu_bf16)."""
    from focal_rpn.layers.cpu_bf16 import cpu_has_native_bf16

    return ("bfloat16 autocast on (native bfloat16)" if cpu_has_native_bf16()
            else "bfloat16 autocast off (no native bfloat16, or oneDNN capped below it)")


def cpu_vector_extensions(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The x86 vector extensions the CPU reports: "AVX2", "AVX-512 (f, bw, vnni, bf16)",
    "AMX (tile, bf16, int8)", joined by " + "; "unknown" without /proc/cpuinfo flags."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    if not flags:
        return "unknown"
    flags = set(flags)
    parts = []
    if "avx2" in flags:
        parts.append("AVX2")
    avx512 = sorted(f[len("avx512"):].lstrip("_") for f in flags if f.startswith("avx512"))
    if avx512:
        parts.append(f"AVX-512 ({', '.join(avx512)})")
    amx = sorted(f[len("amx_"):] for f in flags if f.startswith("amx_"))
    if amx:
        parts.append(f"AMX ({', '.join(amx)})")
    return " + ".join(parts) or "no AVX2"


_ONEDNN_PROBE = (
    "import torch, torch.nn.functional as F; "
    "F.conv2d(torch.randn(2, 256, 32, 32), torch.randn(256, 256, 3, 3), padding=1)"
)


def onednn_isa() -> str:
    """oneDNN's version and the instruction set it dispatches to, from its verbose log of one
    convolution in a child process (ONEDNN_VERBOSE=1), e.g. "v3.12.0, Intel AVX-512 with Intel
    DL Boost and bfloat16 support"; "unavailable" when it cannot be read."""
    import subprocess

    if not torch.backends.mkldnn.is_available():
        return "unavailable (torch built without it)"
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    try:
        out = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True,
                             text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    version = isa = None
    for line in out.splitlines():
        if ",info,oneDNN v" in line and version is None:
            version = line.split("oneDNN ", 1)[1].split()[0]
        elif ",info,cpu,isa:" in line:
            isa = line.split("isa:", 1)[1].strip()
    return f"{version or '?'}, {isa}" if isa else "unavailable"


def run(suites=SUITES, quick: bool = False, repeats: int = None) -> List[Dict]:
    """Rows of every suite, each with ``target`` (max ratio or None) and ``met`` (bool/None)."""
    rows = []
    if "losses" in suites:
        rows += _load("bench_losses").run(
            scale=0.005 if quick else 1.0, repeats=repeats or (1 if quick else 7)
        )
    if "models" in suites:
        rows += _load("bench_models").run(
            scale=0.25 if quick else 1.0, repeats=repeats or (1 if quick else 5),
            memory=not quick,
        )
    if "demo" in suites:
        rows += _load("bench_demo").run(
            iters=24 if quick else 160, rounds=1 if quick else 2, quick=quick
        )
    if "evaluator" in suites:
        rows += _load("bench_evaluator").run(
            num_images=20 if quick else 500, repeats=repeats or (1 if quick else 3)
        )
    if "roi_align" in suites:
        rows += _load("bench_roi_align").run(
            quick=quick, repeats=repeats or (1 if quick else 5), memory=not quick
        )
    if "winograd" in suites:
        rows += _load("bench_winograd").run(
            quick=quick, repeats=repeats or (1 if quick else 5), memory=not quick
        )
    for row in rows:
        row["target"] = target_of(row)
        row["met"] = None if row["target"] is None else bool(row["ratio"] <= row["target"])
    return rows


def _mb(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.0f}"


def format_table(rows: List[Dict]) -> str:
    """A markdown table of the rows."""
    lines = [
        "| case | baseline | ours ms | baseline ms | ratio | target | peak MB ours / baseline |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        target = "-" if r["target"] is None else (
            f"<= {r['target']:.2f} " + ("met" if r["met"] else "**NOT met**")
        )
        lines.append(
            f"| {r['case']} | {r['baseline']} | {r['ours_ms']:.1f} | {r['baseline_ms']:.1f} | "
            f"{r['ratio']:.3f} | {target} | {_mb(r['ours_peak_mb'])} / "
            f"{_mb(r['baseline_peak_mb'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one repeat, no memory workers: a smoke test")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads (the issue's measurements use 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--max-isa", choices=sorted(ISA_CAPS), default=None,
                        help="hold oneDNN, ATen and MKL to this instruction set (a proxy for a "
                        "machine without the newer ones; the machine line says so)")
    args = parser.parse_args(argv)
    if args.max_isa:
        caps = ISA_CAPS[args.max_isa]
        if any(os.environ.get(k) != v for k, v in caps.items()):
            argv = sys.argv[1:] if argv is None else list(argv)
            child = [sys.executable, os.path.abspath(__file__)] + argv
            return subprocess.run(child, env=dict(os.environ, **caps)).returncode
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(args.only, args.quick, args.repeats)
    machine = machine_description()
    print(f"machine: {machine}")
    if "models" in args.only:
        print(_load("bench_models").describe(0.25 if args.quick else 1.0))
        print(_load("bench_models").describe_recipe(0.25 if args.quick else 1.0))
    print(format_table(rows))
    print(f"({time.perf_counter() - start:.0f} s{'; --quick: not a measurement' if args.quick else ''})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "quick": args.quick, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
