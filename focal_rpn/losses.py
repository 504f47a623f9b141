"""Focal losses (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Pure functions of tensors (no detectron2 state):

* :func:`sigmoid_focal_loss` -- dense targets, the drop-in equivalent of fvcore's
  ``sigmoid_focal_loss`` (same signature and values), numerically stable and usable with
  float16 / bfloat16 inputs; 0/1 targets are routed to the label kernel below, soft targets
  to a fused closed-form kernel of their own.
* :func:`sigmoid_focal_loss_with_labels` -- the fast path used by the models: integer labels
  instead of one-hot targets, a custom autograd Function whose gradient is computed in closed
  form during the forward pass, in cache-sized row chunks.
* :func:`softmax_focal_loss` -- a true softmax focal loss over C classes, also a custom
  autograd Function with a closed-form gradient.

Notation: ``x`` is a logit, ``s = sigmoid(x)``, ``sp(x) = softplus(x) = log(1 + exp(x)) =
-log(1 - s)``. For a target ``t`` in {0, 1} the probability of the true class is ``p_t = s`` if
``t = 1`` else ``1 - s``, and the focal loss is ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with
``alpha_t = alpha`` for positives and ``1 - alpha`` for negatives. Hence, per element:

* negative (``t = 0``): ``FL = (1 - alpha) s^gamma sp(x)``,
  ``dFL/dx = (1 - alpha) s^gamma (gamma (1 - s) sp(x) + s)``;
* positive (``t = 1``): ``FL = alpha (1 - s)^gamma sp(-x)``,
  ``dFL/dx = -alpha (1 - s)^gamma (gamma s sp(-x) + 1 - s)``.

Neither gradient has a ``(1 - p_t)^(gamma - 1)`` factor, so gamma = 0 (and gamma < 1) are safe.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .layers.hugepages import empty_hugepage_backed

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_with_labels", "softmax_focal_loss"]

_REDUCTIONS = ("none", "mean", "sum")
_LOW_PRECISION = (torch.float16, torch.bfloat16)

#: Elements per row chunk of the fused kernels. On CPU a chunk's scratch buffers (about six of
#: them) stay in the L2/L3 caches; on CUDA chunking only bounds the scratch memory.
CPU_CHUNK_ELEMENTS = 1 << 18
CUDA_CHUNK_ELEMENTS = 1 << 23


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


#: softmax: the smallest row sum of unshifted exponentials kept (smaller sums are recomputed
#: with the row max subtracted, before their terms lose precision as subnormals).
_EXP_SUM_MIN = {torch.float32: 1e-30, torch.float64: 1e-290}


def _chunk_elements(device: torch.device) -> int:
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else CUDA_CHUNK_ELEMENTS


# ---------------------------------------------------------------------------------------------
# 1. dense sigmoid focal loss
# ---------------------------------------------------------------------------------------------
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


#: Dense targets whose nonzero entries are at most this fraction of all are checked for being
#: exactly 1 and then go to the sparse (label position) kernel; others to the soft kernel.
SPARSE_TARGET_FRACTION = 1 / 16


def _binary_target_positions(targets: Tensor) -> Optional[Tensor]:
    """The flat positions (P,) of the ones of ``targets`` if it holds only 0 and 1 and at most
    ``SPARSE_TARGET_FRACTION`` ones (detection: ~1%), else None.

    Two passes over the targets (count, then positions) and one host sync per pass; the
    positions are only materialised when few, so soft targets never allocate an index per
    entry.
    """
    flat = targets.reshape(-1)
    if flat.numel() == 0:
        return None
    if int(torch.count_nonzero(flat)) > SPARSE_TARGET_FRACTION * flat.numel():
        return None
    pos = torch.nonzero(flat).view(-1)  # sorted ascending
    if not bool((flat[pos] == 1).all()):
        return None
    return pos


def _sigmoid_focal_composed(logits, targets, alpha, gamma, reduction) -> Tensor:
    """The focal loss as a composition of autograd ops (differentiable in the targets too,
    and twice differentiable)."""
    out_dtype = logits.dtype
    x = logits.to(_compute_dtype(out_dtype))
    t = targets.to(x.dtype)
    # binary cross entropy sp(x) - t x, written without cancellation for t in {0, 1}
    # (torch's binary_cross_entropy_with_logits loses relative precision for x << 0, t = 0)
    ce = (1 - t) * F.softplus(x) + t * F.softplus(-x)
    loss = ce
    if gamma != 0:
        # 1 - p_t = p (1 - t) + (1 - p) t, with 1 - p = sigmoid(-x) exact for large x.
        m = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
        if gamma == 1:
            mod = m
        elif gamma == 2:
            mod = m * m
        else:
            # m^gamma with a finite gradient at m = 0 (where the true derivative of the loss
            # is 0 as well: p is exactly 0 or 1, so dm/dx = 0).
            nz = m > 0
            mod = torch.where(nz, torch.where(nz, m, torch.ones_like(m)) ** gamma, 0.0)
        loss = loss * mod
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    if reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# 1b. soft targets: fused closed-form kernel
# ---------------------------------------------------------------------------------------------
def _soft_chunk(
    xc: Tensor,
    tc: Tensor,
    alpha: float,
    gamma: float,
    scratch: List[Tensor],
    g_out: Optional[Tensor],
    l_out: Optional[Tensor],
) -> Tensor:
    """Focal terms of one flat chunk: logits xc (m,), targets tc (m,) in [0, 1].

    With s = sigmoid(x), the cross entropy ce = sp(-|x|) + relu(x) - t x (the exact
    (1 - t) sp(x) + t sp(-x) without cancellation), m = 1 - p_t = t + s (1 - 2 t), and
    alpha_t = 1/2 + (1/2 - alpha) (1 - 2 t) (1 without alpha weighting):

        FL = alpha_t m^gamma ce,
        dFL/dx = alpha_t m^(gamma - 1) (gamma s (1 - s) (1 - 2 t) ce + m (s - t)).

    (dm/dx = s (1 - s) (1 - 2 t), dce/dx = s - t.) Where m = 0 (s = t in {0, 1}: saturated)
    the first term is 0 for every gamma. Writes the loss terms into l_out and the gradient into
    g_out (each if given); scratch: five (m,) buffers. Returns the sum of the loss terms.
    """
    a, b, c, d, e = scratch
    s = torch.sigmoid(xc, out=a)
    ce = _softplus_neg_abs(xc, b, c, d)
    r = torch.clamp(xc, min=0.0, out=c)
    ce.add_(r.addcmul_(tc, xc, value=-1.0))
    w = torch.mul(tc, -2.0, out=c).add_(1.0)  # 1 - 2 t
    m = torch.addcmul(tc, s, w, out=d)  # 1 - p_t
    at = torch.mul(w, 0.5 - alpha, out=e).add_(0.5) if alpha >= 0 else None
    if g_out is not None:
        if gamma != 0:
            # k = gamma s (1 - s) (1 - 2 t) ce, in g_out
            torch.addcmul(s, s, s, value=-1.0, out=g_out).mul_(w).mul_(ce)
        h = torch.sub(s, tc, out=c)  # s - t (w is not needed any more)
        if gamma == 0:
            g_out.copy_(h)
        else:
            h.mul_(m)
            g_out.mul_(gamma).add_(h)
            if gamma == 2:
                g_out.mul_(m)
            elif gamma != 1:
                mg1 = torch.pow(m, gamma - 1.0, out=a)  # s is not needed any more
                if gamma < 1:
                    mg1.masked_fill_(m == 0, 0.0)
                g_out.mul_(mg1)
        if at is not None:
            g_out.mul_(at)
    # loss terms: m^gamma ce alpha_t, in l_out or a free scratch buffer
    lt = l_out if l_out is not None else a
    if gamma == 0:
        lt.copy_(ce)
    else:
        if gamma == 1:
            lt.copy_(m)
        elif gamma == 2:
            torch.mul(m, m, out=lt)
        else:
            torch.pow(m, gamma, out=lt)
        lt.mul_(ce)
    if at is not None:
        lt.mul_(at)
    return lt.sum()


def _sigmoid_soft_kernel(
    logits: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str, need_grad: bool
):
    """Dense sigmoid focal loss of logits (M, 1) and targets (M, 1) in [0, 1], in chunks.

    Returns (loss, state), state = (G, empty positions, empty, M) or None: G (M, 1) the
    gradient of the summed loss, in the layout of :func:`_sparse_backward`.
    """
    M = logits.shape[0]
    cdt = _compute_dtype(logits.dtype)
    device = logits.device
    xflat = logits.detach().contiguous().view(-1)
    tflat = targets.detach().contiguous().view(-1)
    chunk = _chunk_elements(device)
    G = empty_hugepage_backed((M, 1), cdt, device) if need_grad else None
    L = torch.empty((M, 1), dtype=cdt, device=device) if reduction == "none" else None
    m_max = min(chunk, M)
    scratch = [torch.empty(m_max, dtype=cdt, device=device) for _ in range(5)]
    partial = []
    for i in range(0, M, chunk):
        j = min(i + chunk, M)
        xc = xflat[i:j].to(cdt)
        tc = tflat[i:j].to(cdt)
        partial.append(
            _soft_chunk(
                xc, tc, alpha, gamma, [buf[: j - i] for buf in scratch],
                G.view(-1)[i:j] if G is not None else None,
                L.view(-1)[i:j] if L is not None else None,
            )
        )
    if reduction == "none":
        loss = L.to(logits.dtype)
    else:
        acc_dtype = torch.float64
        total = (torch.stack(partial).to(acc_dtype).sum() if partial
                 else torch.zeros((), dtype=acc_dtype, device=device))
        if reduction == "mean":
            total = total / max(M, 1)
        loss = total.to(logits.dtype)
    if not need_grad:
        return loss, None
    none = torch.empty((0,), dtype=torch.int64, device=device)
    return loss, (G, none, G.new_empty((0,)), M)


class _ClosedFormFocalFn(torch.autograd.Function):
    """The sigmoid focal Functions whose kernel computes the loss and, in the same pass, the
    gradient in closed form (the state that :func:`_sparse_backward` scales).

    A subclass sets ``kernel(logits, target, alpha, gamma, reduction, need_grad) -> (loss,
    state)`` and ``alpha_weights_negatives`` (False where the kernel's gradient already holds
    alpha). The backward consumes the state; a second backward through the same graph
    recomputes it.
    """

    alpha_weights_negatives = True

    @staticmethod
    def kernel(logits, target, alpha, gamma, reduction, need_grad):
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx, logits, target, alpha, gamma, reduction):
        loss, state = cls.kernel(logits, target, alpha, gamma, reduction, True)
        ctx.save_for_backward(logits, target)
        ctx.conf = (alpha, gamma, reduction)
        ctx.state = state
        return loss

    @classmethod
    @once_differentiable
    def backward(cls, ctx, grad_out):
        logits, target = ctx.saved_tensors
        alpha, gamma, reduction = ctx.conf
        state = ctx.state
        ctx.state = None  # the buffer is consumed (scaled in place) below
        if state is None:
            _, state = cls.kernel(logits, target, alpha, gamma, reduction, True)
        negatives_alpha = alpha if cls.alpha_weights_negatives else -1.0
        grad = _sparse_backward(state, grad_out, negatives_alpha, reduction, logits.dtype)
        return grad, None, None, None, None


class _SigmoidFocalSoftFn(_ClosedFormFocalFn):
    """sigmoid focal loss of logits (M, 1) with soft targets (M, 1) in [0, 1]."""

    kernel = staticmethod(_sigmoid_soft_kernel)
    alpha_weights_negatives = False  # alpha is already in the kernel's gradient


# ---------------------------------------------------------------------------------------------
# 2. sigmoid focal loss with integer labels: fused closed-form kernel
# ---------------------------------------------------------------------------------------------
def _positive_terms(xp: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor]:
    """Loss and d loss / dx of positives (target 1) at logits xp (P,), in xp's dtype."""
    s = torch.sigmoid(xp)
    q = torch.sigmoid(-xp)  # 1 - s, exact for large xp
    spn = F.softplus(-xp)  # -log(s)
    if gamma == 0:
        loss, grad = spn, -q
    else:
        qg = q * q if gamma == 2 else q.pow(gamma)
        loss = qg * spn
        grad = -qg * (gamma * s * spn + q)
    if alpha >= 0:
        loss, grad = alpha * loss, alpha * grad
    return loss, grad


def _split_points(sorted_rows: Tensor, starts: Tensor) -> Tensor:
    return torch.searchsorted(sorted_rows, starts)


def _softplus_neg_abs(x: Tensor, out: Tensor, tmp: Tensor, tmp2: Tensor) -> Tensor:
    """sp(-|x|) = log1p(exp(-|x|)) of x (m,) into out, accurate to a few ulps for every x.

    ATen's softplus and log1p are not vectorised on CPU (about 10 ns per element, 10x exp or
    log); this uses exp and log only: with e = exp(-|x|) in (0, 1] and u = 1 + e rounded,
    log1p(e) = log(u) - c / u to second order in the rounding error c = (u - 1) - e (exact in
    floating point, as u - 1 is). tmp, tmp2: (m,) scratch.
    """
    e = torch.abs(x, out=tmp).neg_().exp_()
    u = torch.add(e, 1.0, out=out)
    c = torch.sub(u, 1.0, out=tmp2).sub_(e)
    c.div_(u)
    return u.log_().sub_(c)


def _softplus_threshold(dtype: torch.dtype) -> float:
    """softplus(x) is taken as x above this: the neglected log1p(exp(-x)) is below the rounding
    of x (exp(-20) / 20 < 2^-24 for float32, exp(-40) / 40 < 2^-53 for float64)."""
    return 40.0 if dtype == torch.float64 else 20.0


def _negative_chunk(
    xc: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    gamma: float,
    g_out: Optional[Tensor],
    l_out: Optional[Tensor],
    zero_flat: Optional[Tensor],
    zero_rows: Optional[Tensor],
    K: int,
) -> Tensor:
    """Negative-target focal terms of one flat chunk xc (m,) (every entry taken as a negative).

    a, b, c: (m,) scratch buffers. Writes the unscaled loss ``s^gamma sp(x)`` into l_out (if
    given) and the unscaled gradient ``s^gamma (gamma (1 - s) sp(x) + s)`` into g_out (if
    given); entries at flat positions zero_flat and in rows zero_rows (of K entries each) get 0.
    Returns the sum of the loss terms (0-dim tensor, unscaled); the caller applies (1 - alpha).

    Few whole-chunk ATen calls (gamma = 2 with gradient: softplus, sigmoid, mul, mul, sum,
    addcmul, add, mul): every call is a parallel region, i.e. a synchronisation point of the intra-op
    threads, which costs far more than the arithmetic on a loaded machine. softplus (=
    log1p(exp(x)), x above the threshold) and sigmoid are accurate to a few ulps for every
    finite x, so no term loses relative precision.
    """
    # sp(x) = relu(x) + sp(-|x|); l_out is free until the loss terms are written
    sp = _softplus_neg_abs(xc, b, a, c)
    sp.add_(torch.clamp(xc, min=0.0, out=a))
    s = torch.sigmoid(xc, out=a) if (g_out is not None or gamma in (1.0, 2.0)) else None
    # w = s^gamma, written where it is used next: the gradient buffer, else the loss buffer
    w = g_out if g_out is not None else (l_out if l_out is not None else a)
    if gamma == 0:
        w.fill_(1.0)
    elif gamma == 1:
        if w is not s:
            w.copy_(s)
    elif gamma == 2:
        torch.mul(s, s, out=w)
    else:  # s^gamma = exp(gamma log s), log s = x - sp(x)
        torch.sub(xc, sp, out=w)
        w.mul_(gamma).exp_()
    _zero(w, zero_flat, zero_rows, K)
    # (torch.dot would save a pass but accumulates in float32: 1e-6 relative error at 4e4
    # terms; sum() is pairwise)
    lt = torch.mul(w, sp, out=l_out if l_out is not None else c)
    total = lt.sum()
    if g_out is not None:
        sp.addcmul_(s, sp, value=-1.0)  # sp (1 - s)
        torch.add(s, sp, alpha=gamma, out=sp)  # s + gamma sp (1 - s)
        g_out.mul_(sp)
    return total


def _zero(flat: Tensor, zero_flat: Optional[Tensor], zero_rows: Optional[Tensor], K: int) -> None:
    if zero_flat is not None and zero_flat.numel():
        flat.index_fill_(0, zero_flat, 0.0)
    if zero_rows is not None and zero_rows.numel():
        flat.view(-1, K).index_fill_(0, zero_rows, 0.0)


def _sigmoid_labels_kernel(
    logits: Tensor, labels: Tensor, alpha: float, gamma: float, reduction: str, need_grad: bool
):
    """Forward (and the unscaled closed-form gradient) of sigmoid_focal_loss_with_labels:
    :func:`_sigmoid_sparse_kernel` at the label positions, the ignored rows excluded."""
    K = logits.shape[1]
    pos_rows = torch.nonzero((labels >= 0) & (labels < K)).view(-1)
    ign_rows = torch.nonzero(labels < 0).view(-1)
    flat_pos = pos_rows * K + labels[pos_rows]
    return _sigmoid_sparse_kernel(logits, flat_pos, ign_rows, alpha, gamma, reduction, need_grad)


def _sigmoid_sparse_kernel(
    logits: Tensor,
    flat_pos: Tensor,
    ign_rows: Tensor,
    alpha: float,
    gamma: float,
    reduction: str,
    need_grad: bool,
):
    """Sigmoid focal loss of logits (R, K) whose targets are 1 at the flat positions flat_pos
    (P,) (sorted ascending, at most a few per cent of the entries) and 0 elsewhere; the rows
    ign_rows (sorted) are ignored (0 loss and gradient, not counted by "mean").

    Returns (loss, state) where state = (G, flat_pos, grad_pos, n_valid) or None:
    G (R, K) holds d(sum of negative terms without (1 - alpha))/dx, zero at positives and
    ignored rows; grad_pos (P,) the alpha-weighted gradient at the flat positive positions.
    """
    R, K = logits.shape
    cdt = _compute_dtype(logits.dtype)
    device = logits.device
    x = logits.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    xflat = x.view(-1)

    # chunk borders of the positives and ignored rows; one host sync for the bookkeeping
    rows_per_chunk = max(1, _chunk_elements(device) // max(K, 1))
    bounds = list(range(0, R, rows_per_chunk)) + [R]
    starts = torch.tensor(bounds, dtype=torch.int64, device=device)
    splits = torch.cat([_split_points(flat_pos, starts * K), _split_points(ign_rows, starts)])
    splits = splits.tolist()
    nb = starts.numel()
    pos_split, ign_split = splits[:nb], splits[nb:]
    n_valid = R - ign_rows.numel()

    G = empty_hugepage_backed((R, K), cdt, device) if need_grad else None  # see hugepages.py
    L = torch.empty((R, K), dtype=cdt, device=device) if reduction == "none" else None
    m_max = min(rows_per_chunk, R) * K
    scr_a = torch.empty(m_max, dtype=cdt, device=device)
    scr_b = torch.empty(m_max, dtype=cdt, device=device)
    scr_c = torch.empty(m_max, dtype=cdt, device=device)
    partial = []
    for ci in range(nb - 1):
        r0, r1 = bounds[ci], bounds[ci + 1]
        xc = xflat[r0 * K : r1 * K]
        if xc.dtype != cdt:
            xc = xc.to(cdt)
        zf = flat_pos[pos_split[ci] : pos_split[ci + 1]] - r0 * K
        zr = ign_rows[ign_split[ci] : ign_split[ci + 1]] - r0
        partial.append(
            _negative_chunk(
                xc,
                scr_a[: xc.numel()],
                scr_b[: xc.numel()],
                scr_c[: xc.numel()],
                gamma,
                G.view(-1)[r0 * K : r1 * K] if G is not None else None,
                L.view(-1)[r0 * K : r1 * K] if L is not None else None,
                zf,
                zr,
                K,
            )
        )

    wneg = (1.0 - alpha) if alpha >= 0 else 1.0
    loss_pos, grad_pos = _positive_terms(xflat[flat_pos].to(cdt), alpha, gamma)
    if reduction == "none":
        if wneg != 1.0:
            L.mul_(wneg)
        L.view(-1)[flat_pos] = loss_pos
        loss = L.to(logits.dtype)
    else:
        acc_dtype = torch.float64
        neg = torch.stack(partial).to(acc_dtype).sum() if partial else torch.zeros((), dtype=acc_dtype, device=device)
        total = neg * wneg + loss_pos.to(acc_dtype).sum()
        if reduction == "mean":
            total = total / max(n_valid * K, 1)
        loss = total.to(logits.dtype)
    state = (G, flat_pos, grad_pos, n_valid) if need_grad else None
    return loss, state


class _SigmoidFocalLabelsFn(_ClosedFormFocalFn):
    """sigmoid focal loss of logits (R, K) with integer labels (R,)."""

    kernel = staticmethod(_sigmoid_labels_kernel)


def _sigmoid_positions_kernel(logits, flat_pos, alpha, gamma, reduction, need_grad):
    """:func:`_sigmoid_sparse_kernel` with targets 1 at ``flat_pos`` (flat indices into the
    (R, K) logits), 0 elsewhere, and no ignored rows."""
    no_rows = flat_pos.new_empty((0,))
    return _sigmoid_sparse_kernel(logits, flat_pos, no_rows, alpha, gamma, reduction, need_grad)


class _SigmoidFocalPositionsFn(_ClosedFormFocalFn):
    """sigmoid focal loss of logits (R, K) with targets 1 at flat_pos, 0 elsewhere (the dense
    path for 0/1 targets)."""

    kernel = staticmethod(_sigmoid_positions_kernel)


def _sparse_backward(state, grad_out: Tensor, alpha: float, reduction: str, dtype) -> Tensor:
    """d loss / d logits (R, K) from the state of :func:`_sigmoid_sparse_kernel` (whose G
    buffer it scales in place and returns) and the gradient of the loss."""
    G, flat_pos, grad_pos, n_valid = state
    R, K = G.shape
    wneg = (1.0 - alpha) if alpha >= 0 else 1.0
    go = grad_out.to(G.dtype)
    if reduction == "none":
        G.mul_(go)
        if wneg != 1.0:
            G.mul_(wneg)
        G.view(-1)[flat_pos] = grad_pos * go.reshape(-1)[flat_pos]
    else:
        norm = 1.0 / max(n_valid * K, 1) if reduction == "mean" else 1.0
        if go.device.type == "cpu":
            g = float(go)
            if g * wneg * norm != 1.0:
                G.mul_(g * wneg * norm)
            G.view(-1)[flat_pos] = grad_pos * (g * norm)
        else:  # no host sync
            G.mul_(go * (wneg * norm))
            G.view(-1)[flat_pos] = grad_pos * (go * norm)
    return G.to(dtype)


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


# ---------------------------------------------------------------------------------------------
# 3. softmax focal loss: fused closed-form kernel
# ---------------------------------------------------------------------------------------------
def _softmax_kernel(
    logits: Tensor,
    labels: Tensor,
    alpha: float,
    gamma: float,
    reduction: str,
    bg: int,
    need_grad: bool,
):
    """Forward of softmax_focal_loss and the pieces of its closed-form gradient.

    With p = softmax(x) of a row, t its label, p_t = p[t], w = alpha_t (0 if ignored) and
    L = -w (1 - p_t)^gamma log p_t:  dL/dx_j = f (delta_tj - p_j), where
    f = p_t dL/dp_t = -w (1 - p_t)^gamma (1 - gamma p_t log(p_t) / (1 - p_t)).
    Returns (loss, state); state = (E, coef, val_t, other_rows, other_labels, ign_rows,
    n_valid) where E (R, C) = exp(x - M) (M = 0, or the row max in rows that need it),
    coef (R,) = -f / sum(E) so that the gradient is E * coef off the label, val_t (R,) =
    f (1 - p_t) is the gradient at the label; other_rows (n,) are the rows whose label is not
    the background (ignored ones included), other_labels (n,) their labels (-1 clamped to 0),
    ign_rows the ignored rows, n_valid (int) the number of the others.
    """
    R, C = logits.shape
    cdt = _compute_dtype(logits.dtype)
    device = logits.device
    x = logits.detach()
    # Unshifted exponentials: one exp pass, no row-max pass. Only rows whose sum is not a
    # normal finite number (a logit above ~88 in float32: overflow; all logits below ~-69:
    # underflow) are redone with their row max subtracted.
    if need_grad:  # E becomes the gradient: a fresh buffer, huge-page backed (hugepages.py)
        E = empty_hugepage_backed((R, C), cdt, device)  # (R, C)
        if x.dtype == cdt:
            torch.exp(x, out=E)
        else:
            E.copy_(x).exp_()
    else:
        E = torch.exp(x) if x.dtype == cdt else x.to(cdt).exp_()
    S = E.sum(1)  # (R,)
    M = None
    if R * C:
        ok = (S >= _EXP_SUM_MIN[cdt]) & (S <= torch.finfo(cdt).max)  # False for NaN, inf
        redo = torch.nonzero(~ok).view(-1)
        if redo.numel():
            xs = x[redo].to(cdt)
            ms = xs.amax(1, keepdim=True)
            es = torch.exp(xs - ms)
            M = torch.zeros((R,), dtype=cdt, device=device)
            M[redo] = ms.view(-1)
            S[redo] = es.sum(1)
            E[redo] = es

    # Rows whose label is not the background: ~1% in detection, ignored rows (-1) included.
    # The per-row terms below start from the background case and patch these rows.
    other_rows = torch.nonzero(labels != bg).view(-1)
    other_labels = labels[other_rows]
    ign_rows = other_rows[other_labels < 0]
    other_labels = other_labels.clamp(min=0)
    n_valid = R - ign_rows.numel()
    xt = _label_entries(x, bg, other_rows, other_labels).to(cdt)
    logp = xt - torch.log(S)
    if M is not None:
        logp -= M
    logp = logp.clamp_max_(0.0)  # log p_t
    p = torch.exp(logp)
    q = -torch.expm1(logp)  # 1 - p_t, exact for p_t near 1
    if alpha >= 0:
        w = torch.full((R,), 1.0 - alpha, dtype=cdt, device=device)
        w[other_rows] = alpha
    else:
        w = torch.ones((R,), dtype=cdt, device=device)
    w[ign_rows] = 0.0
    if gamma == 0:
        qg = torch.ones_like(q)
    elif gamma == 1:
        qg = q
    elif gamma == 2:
        qg = q * q
    else:
        qg = q.pow(gamma)
    wq = w * qg
    if reduction == "none":
        loss = -wq * logp  # (R,)
    else:
        loss = -torch.dot(wq, logp)  # the sum, without an (R,) temporary
        if reduction == "mean":
            loss = loss / max(n_valid, 1)
    loss = loss.to(logits.dtype)
    if not need_grad:
        return loss, None
    if gamma == 0:
        f = -w
    else:
        # log(p_t) / (1 - p_t); where 1 - p_t is 0 its value is moot, as wq is 0 there
        ratio = logp / q.clamp_min(torch.finfo(cdt).tiny)
        f = (p * ratio).mul_(-gamma).add_(1.0).mul_(wq).neg_()  # -wq (1 - gamma p ratio)
    coef = -f / S
    val_t = f * q
    return loss, (E, coef, val_t, other_rows, other_labels, ign_rows, n_valid)


def _label_entries(t: Tensor, bg: int, other_rows: Tensor, other_labels: Tensor) -> Tensor:
    """t[r, label of r] for every row r of the (R, C) t, as (R,): a copy of the background
    column (a strided copy: ~3x faster than gather at 120,000 x 81), then the other rows
    (other_rows (n,), their labels other_labels (n,))."""
    out = t[:, bg].clone()
    if other_rows.numel():
        out[other_rows] = t[other_rows, other_labels]
    return out


def _set_label_entries(t: Tensor, bg: int, other_rows: Tensor, other_labels: Tensor, values):
    """t[r, label of r] = values[r] for every row r of the (R, C) t, in place: the converse of
    _label_entries (the whole background column, then the other rows put back)."""
    kept = t[other_rows, bg]
    t[:, bg] = values
    if other_rows.numel():
        t[other_rows, bg] = kept
        t[other_rows, other_labels] = values[other_rows]


class _SoftmaxFocalFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, alpha, gamma, reduction, bg):
        loss, state = _softmax_kernel(logits, labels, alpha, gamma, reduction, bg, True)
        ctx.save_for_backward(logits, labels)
        ctx.conf = (alpha, gamma, reduction, bg)
        ctx.state = state
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, labels = ctx.saved_tensors
        state = ctx.state
        ctx.state = None  # consumed (scaled in place) below
        if state is None:  # a second backward through the same graph: recompute
            _, state = _softmax_kernel(logits, labels, *ctx.conf, True)
        reduction = ctx.conf[2]
        E, coef, val_t, other_rows, other_labels, ign_rows, n_valid = state
        bg = ctx.conf[3]
        go = grad_out.to(E.dtype)
        if reduction == "mean":
            go = go / max(n_valid, 1)
        E.mul_((coef * go)[:, None])
        _set_label_entries(E, bg, other_rows, other_labels, val_t * go)
        if ign_rows.numel():
            E.index_fill_(0, ign_rows, 0.0)
        return E.to(logits.dtype), None, None, None, None, None


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
