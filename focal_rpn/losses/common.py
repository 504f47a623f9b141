"""What the focal losses share: argument checks and the dtype they compute in.

The checks run before any kernel and never synchronise with the device (except
:func:`_check_label_range`: one reduction over the (R,) labels). They take the public function's
name ``fn`` for their messages, and check ``logits`` (R, K) or (R, C) against ``labels`` (R,)
int64, or dense ``logits`` / ``targets`` of any one shape. float16 / bfloat16 inputs are
computed in float32 (:func:`_compute_dtype`).
"""
import math
from typing import Tuple

import torch
from torch import Tensor

_REDUCTIONS = ("none", "mean", "sum")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# argument checks (no device synchronisation)
# ---------------------------------------------------------------------------------------------
def _check_reduction(fn: str, reduction, allowed=_REDUCTIONS) -> None:
    if not isinstance(reduction, str) or reduction not in allowed:
        raise ValueError(
            f"{fn}: reduction={reduction!r} is not supported; expected one of "
            + ", ".join(repr(r) for r in allowed)
        )


def _check_alpha_gamma(fn: str, alpha, gamma) -> Tuple[float, float]:
    try:
        alpha_f = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: alpha={alpha!r} must be a real number") from None
    try:
        gamma_f = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: gamma={gamma!r} must be a real number") from None
    if math.isnan(alpha_f) or alpha_f > 1:
        raise ValueError(
            f"{fn}: alpha={alpha!r} is not allowed; expected a value in [0, 1], "
            "or a negative value to turn alpha weighting off"
        )
    if not math.isfinite(gamma_f) or gamma_f < 0:
        raise ValueError(f"{fn}: gamma={gamma!r} is not allowed; expected a finite value >= 0")
    return alpha_f, gamma_f


def _check_float(fn: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(
            f"{fn}: {name} has dtype {t.dtype}; expected a floating point dtype "
            "(float16, bfloat16, float32 or float64)"
        )


def _check_labels(fn: str, logits: Tensor, labels, what: str) -> None:
    if not isinstance(labels, Tensor):
        raise ValueError(f"{fn}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise ValueError(
            f"{fn}: labels has dtype {labels.dtype}; expected torch.int64 (values {what})"
        )
    if logits.dim() != 2:
        raise ValueError(
            f"{fn}: logits has shape {tuple(logits.shape)}; expected 2 dimensions (R, classes)"
        )
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"{fn}: labels has shape {tuple(labels.shape)}; expected ({logits.shape[0]},) "
            f"to match logits of shape {tuple(logits.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(
            f"{fn}: labels is on {labels.device} but logits on {logits.device}; "
            "expected the same device"
        )


def _check_label_range(fn: str, labels: Tensor, low: int, high: int, what: str) -> None:
    """Values of labels in [low, high]. One reduction and one host sync (cheap: labels is 1-D)."""
    if labels.numel() == 0:
        return
    lo, hi = torch.aminmax(labels)
    lo, hi = int(lo), int(hi)
    if lo < low or hi > high:
        raise ValueError(
            f"{fn}: labels has values in [{lo}, {hi}]; expected values in [{low}, {high}] ({what})"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype
