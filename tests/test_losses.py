"""Tests of focal_rpn.losses (CPU, a few seconds)."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from focal_rpn.losses import sigmoid_focal_loss, sigmoid_focal_loss_with_labels, softmax_focal_loss
from focal_rpn.losses.sigmoid import _SigmoidFocalLabelsFn
from focal_rpn.losses.softmax import _SoftmaxFocalFn

REDUCTIONS = ("none", "mean", "sum")


def _grad(loss, x, go=None):
    if go is None:
        go = torch.ones_like(loss)
    (g,) = torch.autograd.grad(loss, x, go)
    return g


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _data(R=257, K=7, dtype=torch.float64, seed=0, scale=3.0, ignored=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(R, K, generator=gen, dtype=dtype) * scale
    low = -1 if ignored else 0
    labels = torch.randint(low, K + 1, (R,), generator=gen)
    return x, labels


def _one_hot(labels, K, dtype):
    return F.one_hot(labels.clamp(min=0), K + 1)[:, :K].to(dtype)


def _reference(x, t, alpha, gamma):
    """The textbook focal loss in float64, written without cancellation (torch's
    binary_cross_entropy_with_logits loses relative precision for x << 0, t = 0)."""
    x, t = x.double(), t.double()
    ce = (1 - t) * F.softplus(x) + t * F.softplus(-x)
    one_minus_p_t = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
    loss = ce * one_minus_p_t**gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def _reduce(loss, reduction):
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


# ------------------------------------------------------------------ gamma = 0 is cross entropy
@pytest.mark.parametrize("alpha", [0.25, 0.7, -1.0])
def test_gamma0_equals_weighted_bce(alpha):
    x, labels = _data(ignored=False)
    t = _one_hot(labels, x.shape[1], x.dtype)
    w = (alpha * t + (1 - alpha) * (1 - t)) if alpha >= 0 else torch.ones_like(t)
    xr = _leaf(x)
    ref = F.binary_cross_entropy_with_logits(xr, t, weight=w, reduction="sum")
    g_ref = _grad(ref, xr)
    xd = _leaf(x)
    dense = sigmoid_focal_loss(xd, t, alpha=alpha, gamma=0.0, reduction="sum")
    xl = _leaf(x)
    fast = sigmoid_focal_loss_with_labels(xl, labels, alpha=alpha, gamma=0.0, reduction="sum")
    torch.testing.assert_close(dense, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(dense, xd), g_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(fast, xl), g_ref, rtol=1e-12, atol=1e-14)


def test_gamma0_gradient_finite_at_pt_one():
    # p_t == 1 exactly in float32: 0 ** 0 and 0 ** -1 must not appear in the gradient
    x = torch.tensor([[40.0, -40.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0]])
    for gamma in (0.0, 0.5, 1.0, 2.0):
        loss = sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum")
        g = _grad(loss, x)
        assert torch.isfinite(g).all(), (gamma, g)
        fast = sigmoid_focal_loss_with_labels(x, torch.tensor([0]), gamma=gamma)
        assert torch.isfinite(_grad(fast, x)).all()


# ------------------------------------------------------------------------------ alpha meaning
def test_alpha_weights_positives_and_negatives():
    x, labels = _data(ignored=False)
    K = x.shape[1]
    t = _one_hot(labels, K, x.dtype)
    off = sigmoid_focal_loss(x, t, alpha=-1.0)
    a = 0.3
    on = sigmoid_focal_loss(x, t, alpha=a)
    torch.testing.assert_close(on[t == 1], a * off[t == 1])
    torch.testing.assert_close(on[t == 0], (1 - a) * off[t == 0])
    assert not torch.allclose(on, off)
    for fn_alpha in (a, -1.0):
        fast = sigmoid_focal_loss_with_labels(x, labels, alpha=fn_alpha, reduction="none")
        torch.testing.assert_close(fast, on if fn_alpha == a else off)
    # alpha = 0.5 halves the unweighted loss everywhere
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.5), 0.5 * off)


def test_softmax_alpha_weights_foreground_and_background():
    x, labels = _data(ignored=False, K=5)  # labels in [0, 5]: C = 6 logits needed
    x = torch.cat([x, torch.randn(x.shape[0], 1, dtype=x.dtype)], 1)
    off = softmax_focal_loss(x, labels, alpha=-1.0)
    on = softmax_focal_loss(x, labels, alpha=0.3)
    bg = labels == x.shape[1] - 1
    assert bg.any() and (~bg).any()
    torch.testing.assert_close(on[bg], 0.7 * off[bg])
    torch.testing.assert_close(on[~bg], 0.3 * off[~bg])
    on0 = softmax_focal_loss(x, labels, alpha=0.3, background_index=0)
    torch.testing.assert_close(on0[labels == 0], 0.7 * off[labels == 0])
    torch.testing.assert_close(on0[labels != 0], 0.3 * off[labels != 0])


# ---------------------------------------------------------- agreement with fvcore / torchvision
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
def test_agrees_with_fvcore_and_torchvision(reduction, gamma):
    from fvcore.nn import sigmoid_focal_loss as fv
    from torchvision.ops import sigmoid_focal_loss as tv

    x, labels = _data(R=300, K=9, dtype=torch.float32, ignored=False)
    t = _one_hot(labels, 9, x.dtype)
    go = torch.rand(300, 9) if reduction == "none" else None
    results = []
    for fn in (fv, tv, sigmoid_focal_loss):
        xl = _leaf(x)
        loss = fn(xl, t, 0.25, gamma, reduction)
        results.append((loss, _grad(loss, xl, go)))
    xl = _leaf(x)
    fast = sigmoid_focal_loss_with_labels(xl, labels, 0.25, gamma, reduction)
    results.append((fast, _grad(fast, xl, go)))
    ref, ref_g = results[0]
    for loss, g in results[1:]:
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6)


def test_fast_path_matches_float64_reference_float32():
    """float32 fast path vs a float64 textbook reference, incl. strongly negative logits where
    the loss terms are tiny (a sloppy log1p would lose all relative precision there)."""
    x, labels = _data(R=2000, K=20, dtype=torch.float32, scale=4.0)
    x[:100] -= 12.0
    valid = labels >= 0
    t = _one_hot(labels, 20, torch.float64)
    ref = torch.zeros(2000, 20, dtype=torch.float64)
    ref[valid] = _reference(x[valid], t[valid], 0.25, 2.0)
    fast = sigmoid_focal_loss_with_labels(x, labels, reduction="none").double()
    rel = ((fast - ref).abs() / ref.abs().clamp(min=1e-300))[ref > 0]
    assert rel.max() < 1e-5, rel.max()
    total = sigmoid_focal_loss_with_labels(x, labels, reduction="sum").double()
    assert abs(total - ref.sum()) / ref.sum() < 1e-6


# ------------------------------------------------------------------ labels path == dense path
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_labels_path_equals_dense_path(reduction, gamma, alpha):
    x, labels = _data(R=300, K=6)
    assert (labels == -1).any() and (labels == 6).any()
    valid = labels >= 0
    t = _one_hot(labels, 6, x.dtype)
    xd = _leaf(x)
    dense = sigmoid_focal_loss(xd[valid], t[valid], alpha, gamma, "none")
    if reduction == "none":
        dense = torch.zeros_like(x).index_put((valid.nonzero()[:, 0],), dense)
    else:
        dense = _reduce(dense, reduction)
    go = torch.randn_like(dense)
    xl = _leaf(x)
    fast = sigmoid_focal_loss_with_labels(xl, labels, alpha, gamma, reduction)
    torch.testing.assert_close(fast, dense, rtol=1e-10, atol=1e-12)
    g = _grad(fast, xl, go)
    torch.testing.assert_close(g, _grad(dense, xd, go), rtol=1e-10, atol=1e-12)
    assert (g[~valid] == 0).all()


def test_labels_path_chunks_and_layouts(monkeypatch):
    """Many small chunks (positives / ignored rows split across chunk borders), a
    non-contiguous input, K = 1 (the RPN case) and a second backward through the graph."""
    import focal_rpn.losses.sigmoid as L  # the module whose kernels read the chunk size

    monkeypatch.setattr(L, "CPU_CHUNK_ELEMENTS", 64)
    for K in (1, 5, 70):
        x, labels = _data(R=203, K=K)
        wide = _leaf(torch.cat([x, torch.randn(203, 3, dtype=x.dtype)], 1))
        xt = wide[:, :K]  # non-contiguous view of a leaf
        assert not xt.is_contiguous()
        valid = labels >= 0
        t = _one_hot(labels, K, x.dtype)
        xd = _leaf(x)
        dense = sigmoid_focal_loss(xd[valid], t[valid], reduction="sum")
        fast = sigmoid_focal_loss_with_labels(xt, labels, reduction="sum")
        torch.testing.assert_close(fast, dense)
        g_ref = _grad(dense, xd)
        g1 = torch.autograd.grad(fast * 3.0, xt, retain_graph=True)[0]
        g2 = torch.autograd.grad(fast, xt)[0]  # recomputed: the first consumed the buffer
        torch.testing.assert_close(g1, 3.0 * g_ref)
        torch.testing.assert_close(g2, g_ref)


def test_without_grad_same_value():
    x, labels = _data()
    with torch.no_grad():
        a = sigmoid_focal_loss_with_labels(_leaf(x), labels, reduction="sum")
        c = softmax_focal_loss(_leaf(x), labels.clamp(max=6), reduction="sum")
    b = sigmoid_focal_loss_with_labels(_leaf(x), labels, reduction="sum")
    d = softmax_focal_loss(_leaf(x), labels.clamp(max=6), reduction="sum")
    assert a.grad_fn is None and b.grad_fn is not None
    torch.testing.assert_close(a, b.detach())
    torch.testing.assert_close(c, d.detach())


def test_backward_scales_by_grad_output():
    x, labels = _data(R=100, K=4)
    for reduction in ("sum", "mean"):
        for fn, lab in ((sigmoid_focal_loss_with_labels, labels), (softmax_focal_loss, labels.clamp(max=3))):
            x1, x2 = _leaf(x), _leaf(x)
            g1 = _grad(fn(x1, lab, reduction=reduction), x1)
            g2 = _grad(fn(x2, lab, reduction=reduction) / 7.0, x2)
            torch.testing.assert_close(g2, g1 / 7.0)
            assert g1.abs().sum() > 0


# ------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
def test_gradcheck_sigmoid_labels_function(reduction, gamma):
    x, labels = _data(R=13, K=3, seed=1)
    x = _leaf(x)
    assert torch.autograd.gradcheck(
        lambda inp: _SigmoidFocalLabelsFn.apply(inp, labels, 0.25, gamma, reduction), (x,)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("bg", [0, 3])
def test_gradcheck_softmax_function(reduction, gamma, bg):
    x, labels = _data(R=13, K=3, seed=2)  # labels in [-1, 3]: C = 4
    x = _leaf(torch.cat([x, torch.randn(13, 1, dtype=x.dtype)], 1))
    assert torch.autograd.gradcheck(
        lambda inp: _SoftmaxFocalFn.apply(inp, labels, 0.25, gamma, reduction, bg), (x,)
    )


def test_gradcheck_dense():
    x, labels = _data(R=11, K=3, seed=3, ignored=False)
    t = _one_hot(labels, 3, x.dtype) * 0.9  # soft targets
    for gamma in (0.0, 0.5, 2.0):
        assert torch.autograd.gradcheck(
            lambda inp: sigmoid_focal_loss(inp, t, 0.25, gamma, "sum"), (_leaf(x),)
        )


# ------------------------------------------------------------------ numerics: huge, low precision
def test_huge_logits_finite_and_correct():
    x = torch.tensor([[1e4, -1e4, 1e4, -1e4], [-1e4, 1e4, 0.0, 3.0]])
    labels = torch.tensor([1, 0])  # positives at (0, 1) and (1, 0): logit -1e4 -> loss 1e4
    t = _one_hot(labels, 4, x.dtype)
    for fn in ("dense", "labels"):
        xl = _leaf(x)
        if fn == "dense":
            loss = sigmoid_focal_loss(xl, t, 0.25, 2.0, "none")
        else:
            loss = sigmoid_focal_loss_with_labels(xl, labels, 0.25, 2.0, "none")
        g = _grad(loss.sum(), xl)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all(), fn
        ref = _reference(x, t, 0.25, 2.0)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
        # positive at -1e4: loss alpha * 1e4, gradient -alpha; negative at +1e4: (1-alpha) x
        assert loss[0, 1].item() == pytest.approx(0.25e4) and g[0, 1].item() == pytest.approx(-0.25)
        assert loss[0, 0].item() == pytest.approx(0.75e4) and g[0, 0].item() == pytest.approx(0.75)
    xs = _leaf(torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [0.0, 0.0, 0.0]]))
    loss = softmax_focal_loss(xs, torch.tensor([1, 1, 2]), reduction="none")
    g = _grad(loss.sum(), xs)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert loss[0].item() == pytest.approx(0.25 * 2e4)
    assert loss[1].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    x32, labels = _data(R=200, K=8, dtype=torch.float32, scale=3.0)
    x = x32.to(dtype)
    xr = x.float()  # the same values in float32
    valid = labels >= 0
    t = _one_hot(labels, 8, torch.float32)
    tol = {"rtol": 2e-2, "atol": 1e-2}
    checks = [
        (lambda a: sigmoid_focal_loss(a[valid], t[valid], reduction="sum")),
        (lambda a: sigmoid_focal_loss_with_labels(a, labels, reduction="sum")),
        (lambda a: softmax_focal_loss(a, labels.clamp(max=7), reduction="sum")),
    ]
    for fn in checks:
        xl, xf = _leaf(x), _leaf(xr)
        lo, hi = fn(xl), fn(xf)
        assert lo.dtype == dtype and hi.dtype == torch.float32
        glo, ghi = _grad(lo, xl), _grad(hi, xf)
        assert glo.dtype == dtype
        assert torch.isfinite(lo) and torch.isfinite(glo).all()
        torch.testing.assert_close(lo.float(), hi, **tol)
        torch.testing.assert_close(glo.float(), ghi, **tol)
    big = sigmoid_focal_loss_with_labels(torch.full((2, 3), 6e4, dtype=dtype), torch.tensor([0, 3]), reduction="none")
    assert torch.isfinite(big).all()


# ------------------------------------------------------------------------------ softmax
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("bg", [-1, 0])
def test_softmax_gamma0_equals_weighted_cross_entropy(alpha, bg):
    x, labels = _data(R=200, K=5)  # labels in [-1, 5], C = 6
    x = torch.cat([x, torch.randn(200, 1, dtype=x.dtype)], 1)
    C = 6
    weight = torch.full((C,), alpha if alpha >= 0 else 1.0, dtype=x.dtype)
    weight[bg % C] = 1 - alpha if alpha >= 0 else 1.0
    xr, xs = _leaf(x), _leaf(x)
    ref = F.cross_entropy(xr, labels, weight=weight, ignore_index=-1, reduction="sum")
    ours = softmax_focal_loss(xs, labels, alpha, 0.0, "sum", background_index=bg)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(_grad(ours, xs), _grad(ref, xr))
    ce = F.cross_entropy(x, labels, weight=weight, ignore_index=-1, reduction="none")
    torch.testing.assert_close(softmax_focal_loss(x, labels, alpha, 0.0, "none", bg), ce)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_two_logits_equals_sigmoid_of_difference(gamma, reduction):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300, 2, generator=gen, dtype=torch.float64) * 4
    labels = torch.randint(0, 2, (300,), generator=gen)  # 0 background, 1 object
    xs, xd = _leaf(x), _leaf(x)
    soft = softmax_focal_loss(xs, labels, 0.25, gamma, reduction, background_index=0)
    sig = sigmoid_focal_loss(xd[:, 1] - xd[:, 0], labels.to(x.dtype), 0.25, gamma, reduction)
    torch.testing.assert_close(soft, sig)
    go = torch.randn_like(sig)
    g_soft, g_sig = _grad(soft, xs, go), _grad(sig, xd, go)
    torch.testing.assert_close(g_soft, g_sig)
    torch.testing.assert_close(g_soft[:, 0], -g_soft[:, 1])


def test_softmax_matches_composition_and_ignores():
    x, labels = _data(R=300, K=9, dtype=torch.float32)  # labels [-1, 9], C = 10
    x = torch.cat([x, torch.randn(300, 1)], 1)
    xs, xr = _leaf(x), _leaf(x)
    ours = softmax_focal_loss(xs, labels, 0.25, 2.0, "none")
    valid = labels >= 0
    lab = labels.clamp(min=0)
    logp = F.log_softmax(xr, 1).gather(1, lab[:, None])[:, 0]
    w = torch.where(lab == 9, 0.75, 0.25) * valid
    ref = -w * (1 - logp.exp()) ** 2 * logp
    torch.testing.assert_close(ours, ref)
    g = _grad(ours.sum(), xs)
    torch.testing.assert_close(g, _grad(ref.sum(), xr))
    assert (g[~valid] == 0).all() and (ours[~valid] == 0).all()
    m = softmax_focal_loss(x, labels, reduction="mean")
    torch.testing.assert_close(m, ref.sum() / valid.sum())


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_softmax_certain_rows_have_zero_loss_and_finite_zero_gradient(gamma):
    # p_t rounds to 1 (1 - p_t = 0 in float32): loss and gradient are 0, not NaN; rows with
    # logits past exp's range take the row-max path and agree with the moderate row.
    x = torch.tensor([[40.0, 0.0, 0.0], [400.0, 0.0, 0.0], [-300.0, -400.0, -400.0]])
    labels = torch.tensor([0, 0, 0])
    xs = _leaf(x)
    loss = softmax_focal_loss(xs, labels, 0.25, gamma, "none")
    g = _grad(loss.sum(), xs)
    assert torch.isfinite(g).all(), g
    assert (loss == 0).all(), loss
    assert (g.abs() < 1e-30).all(), g


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_softmax_large_gradient_buffer_matches_composition(gamma):
    # large enough (> 8 MB) for the huge-page backed gradient buffer
    x = torch.randn(30_000, 81, generator=torch.Generator().manual_seed(3)) * 3
    labels = torch.randint(-1, 81, (30_000,), generator=torch.Generator().manual_seed(4))
    xs, xr = _leaf(x), _leaf(x.double())
    ours = softmax_focal_loss(xs, labels, 0.25, gamma, "sum")
    valid = labels >= 0
    lab = labels.clamp(min=0)
    logp = F.log_softmax(xr, 1).gather(1, lab[:, None])[:, 0]
    w = torch.where(lab == 80, 0.75, 0.25) * valid
    ref = (-w * (1 - logp.exp()) ** gamma * logp).sum()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=0)
    g = _grad(ours, xs)
    torch.testing.assert_close(g.double(), _grad(ref, xr), rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ errors
def test_bad_reduction_raises():
    x, labels = _data(R=4, K=3)
    t = _one_hot(labels, 3, x.dtype)
    with pytest.raises(ValueError, match=r"reduction='avg'.*'none', 'mean', 'sum'"):
        sigmoid_focal_loss(x, t, reduction="avg")
    with pytest.raises(ValueError, match=r"reduction='max'"):
        sigmoid_focal_loss_with_labels(x, labels, reduction="max")
    with pytest.raises(ValueError, match=r"reduction=None"):
        softmax_focal_loss(x, labels.clamp(max=2), reduction=None)


def test_argument_errors_name_argument_and_allowed_values():
    x, labels = _data(R=4, K=3)
    t = _one_hot(labels, 3, x.dtype)
    cases = [
        (lambda: sigmoid_focal_loss(x, t[:, :2]), r"targets has shape \(4, 2\).*\(4, 3\)"),
        (lambda: sigmoid_focal_loss(x, t, gamma=-1), r"gamma=-1 .*>= 0"),
        (lambda: sigmoid_focal_loss(x, t, alpha=1.5), r"alpha=1.5 .*\[0, 1\]"),
        (lambda: sigmoid_focal_loss(x.long(), t), r"logits has dtype torch.int64"),
        (lambda: sigmoid_focal_loss_with_labels(x, labels.int()), r"labels has dtype torch.int32.*int64"),
        (lambda: sigmoid_focal_loss_with_labels(x, labels[:3]), r"labels has shape \(3,\).*\(4,\)"),
        (lambda: sigmoid_focal_loss_with_labels(x[0], labels), r"logits has shape \(3,\).*2 dimensions"),
        (lambda: sigmoid_focal_loss_with_labels(x, labels + 5), r"labels has values in \[\d+, \d+\].*\[-1, 3\]"),
        (lambda: sigmoid_focal_loss_with_labels(x, labels - 5), r"\[-1, 3\]"),
        (lambda: sigmoid_focal_loss_with_labels(x, labels, gamma=float("nan")), r"gamma=nan"),
        (lambda: softmax_focal_loss(x, labels), r"labels has values in \[-?\d, 3\].*\[-1, 2\]"),
        (lambda: softmax_focal_loss(x, labels.clamp(max=2), background_index=3), r"background_index=3 .*\[-3, 2\]"),
        (lambda: softmax_focal_loss(x, labels.clamp(max=2), gamma=-0.5), r"gamma=-0.5"),
        (lambda: softmax_focal_loss(x, labels.float()), r"labels has dtype torch.float32"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()


# ------------------------------------------------------------------------------ empty input
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_inputs(reduction):
    for K in (80, 1):
        x = torch.zeros(0, K, requires_grad=True)
        labels = torch.zeros(0, dtype=torch.int64)
        for loss in (
            sigmoid_focal_loss(x, torch.zeros(0, K), reduction=reduction),
            sigmoid_focal_loss_with_labels(x, labels, reduction=reduction),
            softmax_focal_loss(x, labels, reduction=reduction),
        ):
            if reduction == "none":
                assert loss.numel() == 0
            else:
                assert loss.shape == () and loss.item() == 0.0
            g = _grad(loss.sum(), x)
            assert g.shape == (0, K)


def test_all_rows_ignored_gives_zero():
    x = torch.randn(5, 3, requires_grad=True)
    labels = torch.full((5,), -1)
    for reduction in ("sum", "mean"):
        for fn in (sigmoid_focal_loss_with_labels, softmax_focal_loss):
            loss = fn(x, labels, reduction=reduction)
            assert loss.item() == 0.0
            assert (_grad(loss, x) == 0).all()


# ------------------------------------------------------------------------------ benchmark smoke
def test_benchmark_smoke():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"
    spec = importlib.util.spec_from_file_location("bench_losses", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rows = bench.run(scale=0.005, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert len(rows) == 8  # labels path x 3 baselines, dense 0/1 and soft x 2 logits, softmax
    keys = {"case", "ours_ms", "baseline", "baseline_ms", "ratio", "ours_peak_mb", "baseline_peak_mb"}
    for row in rows:
        assert set(row) == keys
        assert row["ours_ms"] > 0 and row["baseline_ms"] > 0
        assert math.isclose(row["ratio"], row["ours_ms"] / row["baseline_ms"])
        assert 0 < row["ours_peak_mb"] < row["baseline_peak_mb"]
