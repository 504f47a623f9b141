"""bfloat16 autocast on CPUs that compute in bfloat16 natively.

oneDNN runs bfloat16 convolutions with the AVX-512-BF16 dot-product instructions (and AMX tiles
where the CPU has them); on such a CPU the convolutions of a training step take about half of
their float32 time (docs/benchmarks.md). On a CPU without them oneDNN emulates bfloat16 with
float32 arithmetic plus conversions, which is slower than float32: there bfloat16 stays off.

What runs in bfloat16 under :func:`cpu_bf16_autocast`: the convolutions and matrix products
(PyTorch's CPU autocast list) and what follows them up to the next float32 op (batch norm's
output, ReLU, the FPN's sums). What a model keeps in float32 is its own choice:
``FocalRetinaNet`` casts the head's outputs to float32 and turns autocast off for anchor
matching, the focal loss, its normaliser, the box regression loss and box decoding.

Modes, as for the Winograd and channels-last keys: "auto" (the default: on a CPU with native
bfloat16, for a model on CPU), True (bfloat16 autocast on CPU whatever the CPU: for tests and
measurements) or False.

Tiny images stay float32 (:func:`strided_convs_fit_bf16`): oneDNN's bfloat16 weight gradient of
a strided convolution is wrong when the convolution's input is one pixel wide or high (torch
2.14.1 on AVX-512-BF16, 2026-12-07: a 3x3 stride-2 convolution on a 1x1 map, RetinaNet's P7 of a
64-pixel image, gets gradients of 1e11, inf or NaN that change from call to call, where float32
gives 3e-8; its output and its input gradient are right). Whatever runs on wider maps is right.
"""
import contextlib
import logging
import os
from typing import Iterable, Optional

import torch

from ..config import check_auto_mode

__all__ = [
    "check_cpu_bf16_mode",
    "cpu_bf16_autocast",
    "cpu_has_native_bf16",
    "cpu_bf16_on",
    "float32_outputs",
    "strided_convs_fit_bf16",
]

logger = logging.getLogger(__name__)

#: /proc/cpuinfo flags of x86 instructions that compute in bfloat16 (Intel Cooper Lake and
#: later, AMD Zen 4 and later): AVX-512 BF16 dot products, AMX bfloat16 tiles.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

#: ONEDNN_MAX_CPU_ISA values (upper case) that allow oneDNN's bfloat16 instructions; any other
#: cap (AVX2, AVX512_CORE, AVX512_CORE_VNNI, ...) makes oneDNN emulate bfloat16.
ONEDNN_ISAS_WITH_BF16 = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX",
                         "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
                         "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


def check_cpu_bf16_mode(key, value):
    """MODEL.FOCAL_RETINANET.CPU_BF16: "auto" (also None, the default), True or False;
    ValueError naming ``key`` otherwise."""
    return check_auto_mode(
        key, value, "\"auto\" (bfloat16 autocast on a CPU with native bfloat16, the default), "
        "True (bfloat16 autocast on any CPU) or False (float32)"
    )


def strided_convs_fit_bf16(height: int, width: int, max_stride: int) -> bool:
    """Whether an image batch of ``height`` x ``width`` pixels keeps the input of every strided
    convolution of a backbone at least 2 pixels high and wide, so that oneDNN's bfloat16
    weight gradients are right (see the module docstring). ``max_stride``: the stride of the
    backbone's coarsest output (128 for RetinaNet's P7). The last stride-2 convolution reads
    the map of stride ``max_stride / 2``, which is 2 pixels or more on a side only where the
    side exceeds ``max_stride / 2`` pixels: 64 for P3-P7."""
    return min(height, width) > max_stride // 2


def _cpu_flags(cpuinfo: str) -> Optional[set]:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo", environ=os.environ) -> bool:
    """Whether this CPU computes bfloat16 natively and oneDNN may use it: a flag of
    :data:`NATIVE_BF16_FLAGS` in ``cpuinfo``, oneDNN in this torch build, and no
    ``ONEDNN_MAX_CPU_ISA`` cap below the bfloat16 instructions (``benchmarks/run.py --max-isa
    avx2`` sets one). False where the flags cannot be read (not Linux): off is the safe side."""
    if not torch.backends.mkldnn.is_available():
        return False
    flags = _cpu_flags(cpuinfo)
    if not flags or not any(flag in flags for flag in NATIVE_BF16_FLAGS):
        return False
    cap = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA")
    return cap is None or cap.strip().upper() in ONEDNN_ISAS_WITH_BF16


_logged_decisions = set()


def cpu_bf16_on(key, value, device, native: Optional[bool] = None) -> bool:
    """A CPU_BF16 value (checked as :func:`check_cpu_bf16_mode`) settled for a model on
    ``device`` (torch.device or a string such as MODEL.DEVICE): "auto" is True on CPU where
    :func:`cpu_has_native_bf16` (or ``native``, for tests); never True off the CPU (GPU mixed
    precision is detectron2's SOLVER.AMP). The decision of "auto" is logged once per outcome."""
    mode = check_cpu_bf16_mode(key, value)
    on_cpu = torch.device(device).type == "cpu"
    if mode != "auto":
        return bool(mode) and on_cpu
    native = cpu_has_native_bf16() if native is None else native
    decision = on_cpu and native
    if (decision, str(device)) not in _logged_decisions:
        _logged_decisions.add((decision, str(device)))
        logger.info(
            "%s 'auto' -> %s (%s)", key, decision,
            "bfloat16 autocast: this CPU computes bfloat16 natively" if decision else
            ("float32: not a CPU model" if not on_cpu else
             "float32: this CPU has no native bfloat16 (or oneDNN is capped below it)"),
        )
    return decision


def cpu_bf16_autocast(enabled: bool):
    """``torch.autocast("cpu", dtype=torch.bfloat16)`` when ``enabled``; otherwise a context
    that changes nothing (an autocast already active, such as SOLVER.AMP's on CUDA, stays)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def float32_outputs(tensors: Iterable) -> list:
    """Lists (nested one level, as a dense head's ``[[logits per level], [deltas per level]]``)
    with every low-precision floating tensor cast to float32; other tensors as they are."""
    def cast(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float32 \
                and t.dtype != torch.float64:
            return t.float()
        return t

    return [[cast(t) for t in x] if isinstance(x, (list, tuple)) else cast(x) for x in tensors]
