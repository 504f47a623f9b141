"""The public focal losses (Lin et al., "Focal Loss for Dense Object Detection", 2017): argument
checks, then the kernels of :mod:`.sigmoid` and :mod:`.softmax`.

* :func:`sigmoid_focal_loss`: logits and targets of any one shape (e.g. (R, K));
* :func:`sigmoid_focal_loss_with_labels`: logits (R, K), int64 labels (R,) in [-1, K];
* :func:`softmax_focal_loss`: logits (R, C), int64 labels (R,) in [-1, C - 1].
"""
import torch
from torch import Tensor

from .common import (
    _check_alpha_gamma,
    _check_float,
    _check_label_range,
    _check_labels,
    _check_reduction,
)
from .sigmoid import (
    _binary_target_positions,
    _sigmoid_focal_composed,
    _sigmoid_labels_kernel,
    _sigmoid_soft_kernel,
    _sigmoid_sparse_kernel,
    _SigmoidFocalLabelsFn,
    _SigmoidFocalPositionsFn,
    _SigmoidFocalSoftFn,
)
from .softmax import _softmax_kernel, _SoftmaxFocalFn

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_with_labels", "softmax_focal_loss"]


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Sigmoid focal loss with dense targets; same signature and values as fvcore's.

    ``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)`` elementwise, with ``p = sigmoid(logits)``,
    ``p_t = p * t + (1 - p) * (1 - t)`` and ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``;
    for soft targets the log term is the binary cross entropy with logits.

    Args:
        logits: float tensor of any shape (e.g. (R, K)); float16/bfloat16 are computed in
            float32 internally and the result is returned in the input dtype.
        targets: tensor of the same shape as ``logits`` with values in [0, 1] (1 positive,
            0 negative; soft values allowed).
        alpha: weight of positives in [0, 1] (negatives get ``1 - alpha``); a negative value
            turns alpha weighting off.
        gamma: focusing parameter >= 0; 0 gives the (alpha-weighted) binary cross entropy.
        reduction: "none" (loss of the shape of ``logits``), "mean" (a scalar; 0 for empty
            input) or "sum" (a scalar).

    Returns:
        Tensor of the dtype of ``logits``: shape of ``logits`` for "none", else a scalar.

    Finite for logits of any finite magnitude (e.g. +-1e4); gradients are finite too, also at
    ``p_t = 1`` with gamma = 0 or gamma < 1.

    Computed by fused kernels with the gradient in closed form (``once_differentiable``):
    targets of only 0 and 1 with at most ``SPARSE_TARGET_FRACTION`` ones (detection) go to the
    kernel of :func:`sigmoid_focal_loss_with_labels` at their positions (found with two passes
    over the targets and two host synchronisations); other targets to the soft-target kernel.
    Targets that require a gradient go through the plain composition of autograd ops.
    """
    fn = "sigmoid_focal_loss"
    _check_float(fn, "logits", logits)
    if not isinstance(targets, Tensor):
        raise ValueError(f"{fn}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"{fn}: targets has shape {tuple(targets.shape)}; expected the shape of logits "
            f"{tuple(logits.shape)}"
        )
    if targets.device != logits.device:
        raise ValueError(
            f"{fn}: targets is on {targets.device} but logits on {logits.device}; "
            "expected the same device"
        )
    alpha, gamma = _check_alpha_gamma(fn, alpha, gamma)
    _check_reduction(fn, reduction)

    if targets.requires_grad and torch.is_grad_enabled():
        # gradients for the targets too: plain autograd through the composition
        return _sigmoid_focal_composed(logits, targets, alpha, gamma, reduction)
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    x = logits.reshape(-1, 1)  # (M, 1): every entry a row of one class
    flat_pos = _binary_target_positions(targets)
    if flat_pos is not None:
        if need_grad:
            loss = _SigmoidFocalPositionsFn.apply(x, flat_pos, alpha, gamma, reduction)
        else:
            no_rows = flat_pos.new_empty((0,))
            loss, _ = _sigmoid_sparse_kernel(x, flat_pos, no_rows, alpha, gamma, reduction, False)
    elif need_grad:
        loss = _SigmoidFocalSoftFn.apply(x, targets.reshape(-1, 1), alpha, gamma, reduction)
    else:
        loss, _ = _sigmoid_soft_kernel(x, targets.reshape(-1, 1), alpha, gamma, reduction, False)
    return loss.view(logits.shape) if reduction == "none" else loss


def sigmoid_focal_loss_with_labels(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> Tensor:
    """Sigmoid focal loss with integer class labels: the fast path of the models.

    Equal to ``sigmoid_focal_loss(logits, one_hot(labels, K + 1)[:, :K], alpha, gamma)`` over
    the non-ignored rows, computed by a custom autograd Function that evaluates the gradient in
    closed form during the forward pass (in cache-sized row chunks, one ``exp`` and one ``log``
    per element, no full-size temporaries besides the gradient itself). Positives are sparse (at
    most one per row): every entry is first computed as a negative, then the R label positions
    are fixed up.

    Args:
        logits: (R, K) float tensor (float16/bfloat16 computed in float32).
        labels: (R,) int64 tensor, values in [-1, K]: ``k < K`` means class k is the positive
            class of the row, ``K`` background (all K targets 0), ``-1`` ignored (the row
            contributes 0 loss and gets 0 gradient).
        alpha: weight of positives in [0, 1] (negatives get ``1 - alpha``); negative: off.
        gamma: focusing parameter >= 0.
        reduction: "sum" (default, a scalar), "mean" (a scalar: the sum divided by the number
            of non-ignored elements, (number of rows with label >= 0) * K; 0 if there are
            none) or "none" ((R, K) losses, zero on ignored rows).

    Returns:
        Tensor of the dtype of ``logits``.

    The backward is ``once_differentiable`` (no double backward). Labels outside [-1, K]
    raise ValueError (checked with one host synchronisation).
    """
    fn = "sigmoid_focal_loss_with_labels"
    _check_float(fn, "logits", logits)
    _check_labels(fn, logits, labels, "in [-1, K]: -1 ignored, K background")
    alpha, gamma = _check_alpha_gamma(fn, alpha, gamma)
    _check_reduction(fn, reduction)
    K = logits.shape[1]
    _check_label_range(fn, labels, -1, K, f"-1 ignored, 0..{K - 1} classes, {K} background")
    if logits.requires_grad and torch.is_grad_enabled():
        return _SigmoidFocalLabelsFn.apply(logits, labels, alpha, gamma, reduction)
    loss, _ = _sigmoid_labels_kernel(logits, labels, alpha, gamma, reduction, False)
    return loss


def softmax_focal_loss(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    background_index: int = -1,
) -> Tensor:
    """Softmax focal loss over C mutually exclusive classes (one of them background).

    Per row r with label t: ``p_t = softmax(logits[r])[t]`` and
    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``, where ``alpha_t = 1 - alpha`` if t is the
    background class and ``alpha`` for a foreground class (so alpha keeps its sigmoid meaning:
    the weight of positives). A negative alpha turns weighting off (alpha_t = 1). gamma = 0
    gives cross entropy weighted by alpha_t.

    Relation to the sigmoid loss: for C = 2 with logits (b, o), ``softmax(b, o)[o] =
    sigmoid(o - b)``, so ``softmax_focal_loss(logits, labels, background_index=0)`` equals
    ``sigmoid_focal_loss(logits[:, 1] - logits[:, 0], (labels == 1).float())`` (values and
    gradients, the gradient w.r.t. b being minus that w.r.t. o).

    Implemented as a custom autograd Function with the closed-form gradient
    ``dFL/dx_j = f (delta_tj - p_j)``, ``f = -alpha_t (1 - p_t)^gamma (1 - gamma p_t log(p_t) /
    (1 - p_t))``: the forward keeps only the exponentials (one exp per element, shifted by the
    row max only in rows that need it) and per-row scalars; the backward scales them in place.

    Args:
        logits: (R, C) float tensor (float16/bfloat16 computed in float32).
        labels: (R,) int64 tensor, values in [-1, C - 1]; -1 = ignored (0 loss, 0 gradient).
        alpha: weight in [0, 1] of foreground rows (background rows get 1 - alpha); negative:
            off.
        gamma: focusing parameter >= 0.
        reduction: "none" ((R,) losses, 0 for ignored rows), "mean" (sum over the non-ignored
            rows divided by their number; 0 if there are none) or "sum".
        background_index: the background class, in [-C, C - 1]; default -1 = C - 1 (the
            detectron2 convention, classes 0..C-2 foreground). FL-RPN uses 0 with logits
            ordered (background, object).

    Returns:
        Tensor of the dtype of ``logits``: (R,) for "none", else a scalar. The backward is
        ``once_differentiable``.
    """
    fn = "softmax_focal_loss"
    _check_float(fn, "logits", logits)
    _check_labels(fn, logits, labels, "in [-1, C - 1]: -1 ignored")
    alpha, gamma = _check_alpha_gamma(fn, alpha, gamma)
    _check_reduction(fn, reduction)
    C = logits.shape[1]
    if isinstance(background_index, bool) or not isinstance(background_index, int):
        raise ValueError(
            f"{fn}: background_index={background_index!r} must be an int in [{-C}, {C - 1}]"
        )
    if not -C <= background_index < C:
        raise ValueError(
            f"{fn}: background_index={background_index!r} is out of range; expected an int in "
            f"[{-C}, {C - 1}] for logits with C={C} classes"
        )
    bg = background_index % C
    _check_label_range(fn, labels, -1, C - 1, f"-1 ignored, 0..{C - 1} classes")
    if logits.requires_grad and torch.is_grad_enabled():
        return _SoftmaxFocalFn.apply(logits, labels, alpha, gamma, reduction, bg)
    loss, _ = _softmax_kernel(logits, labels, alpha, gamma, reduction, bg, False)
    return loss
