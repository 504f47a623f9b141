"""Sigmoid focal loss kernels and their autograd Functions (the public functions that use them
are in :mod:`focal_rpn.losses.api`).

Shapes: the kernels compute on logits (R, K), K independent binary classes per row (the dense
path passes any-shape logits as (M, 1)), with either

* soft targets (M, 1) in [0, 1]: :func:`_sigmoid_soft_kernel`, :class:`_SigmoidFocalSoftFn`;
* sparse positives: flat positions (P,) of the ones among the R * K targets, and ignored rows
  (sorted (n,) row indices): :func:`_sigmoid_sparse_kernel`, reached from integer labels (R,)
  in [-1, K] (:func:`_sigmoid_labels_kernel`, :class:`_SigmoidFocalLabelsFn`) and from dense
  0/1 targets (:func:`_binary_target_positions`, :class:`_SigmoidFocalPositionsFn`).

Each kernel returns (loss, state): the loss ((R, K) for "none", else a scalar) and the
gradient of the summed loss, computed in closed form in the same pass, in cache-sized row
chunks of ``CPU_CHUNK_ELEMENTS`` / ``CUDA_CHUNK_ELEMENTS`` elements; the Functions'
backward scales it in place (:func:`_sparse_backward`). :func:`_sigmoid_focal_composed` is the
plain autograd composition, for targets that need a gradient.

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
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..layers.hugepages import empty_hugepage_backed
from .common import _compute_dtype

#: Elements per row chunk of the fused kernels. On CPU a chunk's scratch buffers (about six of
#: them) stay in the L2/L3 caches; on CUDA chunking only bounds the scratch memory.
CPU_CHUNK_ELEMENTS = 1 << 18
CUDA_CHUNK_ELEMENTS = 1 << 23


def _chunk_elements(device: torch.device) -> int:
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else CUDA_CHUNK_ELEMENTS


# ---------------------------------------------------------------------------------------------
# 1. dense targets: the 0/1 routing and the plain composition
# ---------------------------------------------------------------------------------------------
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
