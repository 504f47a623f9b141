"""focal_rpn.losses.sigmoid_focal_loss with dense targets (issue 19): the fused kernels for 0/1
targets (routed to the label-position kernel) and for soft targets, against fvcore and a float64
reference: values, gradients, reductions, alpha off, gamma 0, chunk borders, the routing."""
import pytest
import torch
import torch.nn.functional as F

import focal_rpn.losses.sigmoid as L  # the sigmoid kernels: chunk sizes, SPARSE_TARGET_FRACTION
from focal_rpn.losses import sigmoid_focal_loss

REDUCTIONS = ("none", "mean", "sum")


def _reference(x, t, alpha, gamma):
    """The focal loss in float64 written without cancellation (fvcore's
    binary_cross_entropy_with_logits loses relative precision for x << 0, t = 0)."""
    x, t = x.double(), t.double()
    ce = (1 - t) * F.softplus(x) + t * F.softplus(-x)
    loss = ce * (torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def _reduce(loss, reduction):
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def _inputs(kind, mean, shape=(400, 9), seed=0):
    """Logits N(mean, 1.5) (mean -5: a trained detector's negatives; 0: the start of training)
    and 0/1 targets with ~2% ones, or soft targets in [0, 1] with exact 0s and 1s among them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 1.5 + mean
    if kind == "binary":
        t = (torch.rand(*shape, generator=g) < 0.02).float()
        assert 0 < t.sum() < t.numel() * L.SPARSE_TARGET_FRACTION
    else:
        t = torch.rand(*shape, generator=g)
        t[torch.rand(*shape, generator=g) < 0.1] = 0.0
        t[torch.rand(*shape, generator=g) < 0.05] = 1.0
    return x, t


def _value_and_grad(fn, x, t, alpha, gamma, reduction, go=None):
    leaf = x.detach().clone().requires_grad_(True)
    loss = fn(leaf, t, alpha, gamma, reduction)
    if go is None:
        go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1)).to(loss.dtype)
    (g,) = torch.autograd.grad(loss, leaf, go)
    return loss, g, go


@pytest.mark.parametrize("kind", ["binary", "soft"])
@pytest.mark.parametrize("mean", [-5.0, 0.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.25, 0.0), (0.5, 1.5),
                                         (0.25, 1.0), (0.25, 0.5)])
def test_equals_float64_reference_and_fvcore(kind, mean, reduction, alpha, gamma):
    from fvcore.nn import sigmoid_focal_loss as fvcore_loss

    x, t = _inputs(kind, mean)
    loss, g, go = _value_and_grad(sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    assert loss.dtype == torch.float32 and loss.shape == (x.shape if reduction == "none" else ())
    xr = x.double().requires_grad_(True)
    ref = _reduce(_reference(xr, t, alpha, gamma), reduction)
    (g_ref,) = torch.autograd.grad(ref, xr, go.double())
    # relative 1e-5 of each value; gradients relative 1e-5 of the largest one
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())
    # fvcore (which computes in float32): the same within its own rounding, which is larger
    # (its binary_cross_entropy_with_logits cancels for x << 0); sums within 1e-5
    fv, g_fv, _ = _value_and_grad(fvcore_loss, x, t, alpha, gamma, reduction, go)
    # (elementwise: up to 2% of tiny terms), so elementwise within 1e-6 of the largest term
    if reduction == "none":
        torch.testing.assert_close(loss, fv, rtol=0, atol=1e-6 * fv.abs().max().item())
    else:
        torch.testing.assert_close(loss, fv, rtol=1e-5, atol=0)
    torch.testing.assert_close(g, g_fv, rtol=0, atol=1e-5 * g_fv.abs().max().item())


@pytest.mark.parametrize("kind", ["binary", "soft"])
def test_float32_matches_fvcore_float32_sums(kind):
    """The issue's setting: float32, reduction "sum", alpha 0.25, gamma 2, against fvcore in
    float32 as users call it."""
    from fvcore.nn import sigmoid_focal_loss as fvcore_loss

    for mean in (-5.0, -4.0, 0.0):
        x, t = _inputs(kind, mean, shape=(3000, 20))
        loss, g, go = _value_and_grad(sigmoid_focal_loss, x, t, 0.25, 2.0, "sum")
        fv, g_fv, _ = _value_and_grad(fvcore_loss, x, t, 0.25, 2.0, "sum", go)
        torch.testing.assert_close(loss, fv, rtol=1e-5, atol=0)
        torch.testing.assert_close(g, g_fv, rtol=1e-4, atol=1e-6 * g_fv.abs().max().item())


def test_routing_binary_to_positions_kernel_and_soft_to_soft_kernel():
    x = torch.randn(200, 10, requires_grad=True)
    binary, soft = _inputs("binary", 0.0, (200, 10))[1], _inputs("soft", 0.0, (200, 10))[1]
    many_ones = (torch.rand(200, 10) < 0.5).float()  # 0/1 but not sparse: the soft kernel
    names = {
        "binary": type(sigmoid_focal_loss(x, binary, reduction="sum").grad_fn).__name__,
        "bool": type(sigmoid_focal_loss(x, binary.bool(), reduction="sum").grad_fn).__name__,
        "soft": type(sigmoid_focal_loss(x, soft, reduction="sum").grad_fn).__name__,
        "many": type(sigmoid_focal_loss(x, many_ones, reduction="sum").grad_fn).__name__,
    }
    assert names["binary"].startswith("_SigmoidFocalPositionsFn"), names
    assert names["bool"].startswith("_SigmoidFocalPositionsFn"), names
    assert names["soft"].startswith("_SigmoidFocalSoftFn"), names
    assert names["many"].startswith("_SigmoidFocalSoftFn"), names
    # every route gives the reference value
    for t in (binary, soft, many_ones):
        torch.testing.assert_close(
            sigmoid_focal_loss(x, t, reduction="sum").double(),
            _reference(x.detach(), t, 0.25, 2.0).sum(), rtol=1e-5, atol=0)


def test_gradient_for_targets_through_the_composition():
    """Targets that require a gradient (e.g. distillation) get one, as with fvcore."""
    from fvcore.nn import sigmoid_focal_loss as fvcore_loss

    x, t = _inputs("soft", 0.0, (50, 4))
    grads = []
    for fn in (sigmoid_focal_loss, fvcore_loss):
        xl, tl = x.double().requires_grad_(True), t.double().requires_grad_(True)
        grads.append(torch.autograd.grad(fn(xl, tl, 0.25, 2.0, "sum"), (xl, tl)))
    for ours, theirs in zip(*grads):  # (fvcore computes in float32)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["binary", "soft"])
def test_chunk_borders_shapes_layouts_and_second_backward(kind, monkeypatch):
    monkeypatch.setattr(L, "CPU_CHUNK_ELEMENTS", 64)
    x, t = _inputs(kind, -2.0, (7, 31, 5))  # 3-d, 1085 entries: 17 chunks, a partial last one
    wide = torch.cat([x, torch.zeros(7, 31, 2)], 2).requires_grad_(True)
    xv = wide[..., :5]  # a non-contiguous view of a leaf
    assert not xv.is_contiguous()
    for reduction in REDUCTIONS:
        loss = sigmoid_focal_loss(xv, t, 0.25, 2.0, reduction)
        ref = _reduce(_reference(x, t, 0.25, 2.0), reduction)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-30)
        go = torch.rand(loss.shape)
        g1 = torch.autograd.grad(loss, xv, go * 3.0, retain_graph=True)[0]
        g2 = torch.autograd.grad(loss, xv, go)[0]  # recomputed: the first consumed the buffer
        xr = x.double().requires_grad_(True)
        g_ref = torch.autograd.grad(_reduce(_reference(xr, t, 0.25, 2.0), reduction), xr,
                                    go.double())[0]
        tol = {"rtol": 1e-5, "atol": 1e-6 * g_ref.abs().max().item()}
        torch.testing.assert_close(g2.double(), g_ref, **tol)
        torch.testing.assert_close(g1.double(), 3.0 * g_ref, **tol)


@pytest.mark.parametrize("kind", ["binary", "soft"])
def test_extreme_logits_finite_and_correct(kind):
    x = torch.tensor([[1e4, -1e4, 30.0, -30.0, 17.0, -17.0, 0.0, 1e-3]] * 4)
    t = torch.zeros_like(x)
    if kind == "binary":
        t[0] = 1.0
    else:
        t[0], t[1], t[2] = 1.0, 0.3, 0.9
    for gamma in (0.0, 0.5, 2.0):
        loss, g, _ = _value_and_grad(sigmoid_focal_loss, x, t, 0.25, gamma, "none",
                                     torch.ones_like(x))
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        xr = x.double().requires_grad_(True)
        ref = _reference(xr, t, 0.25, gamma)
        (g_ref,) = torch.autograd.grad(ref.sum(), xr)
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
        # (the reference's autograd is 0 * inf where m^gamma saturates with gamma < 1)
        ok = torch.isfinite(g_ref)
        assert ok.float().mean() > 0.8
        torch.testing.assert_close(g.double()[ok], g_ref[ok], rtol=1e-5, atol=1e-6)
        # a negative at +1e4: loss (1 - alpha) 1e4, gradient 1 - alpha; a positive at -1e4:
        # alpha 1e4 and -alpha; the other way round: 0 and 0
        assert loss[3, 0].item() == pytest.approx(0.75e4) and g[3, 0].item() == pytest.approx(0.75)
        assert loss[3, 1].item() == 0.0 and g[3, 1].item() == 0.0
        assert loss[0, 1].item() == pytest.approx(0.25e4) and g[0, 1].item() == pytest.approx(-0.25)
        assert loss[0, 0].item() == 0.0 and g[0, 0].item() == 0.0


def test_without_grad_same_value_and_no_graph():
    for kind in ("binary", "soft"):
        x, t = _inputs(kind, 0.0)
        with torch.no_grad():
            a = sigmoid_focal_loss(x.requires_grad_(True), t, reduction="mean")
        b = sigmoid_focal_loss(x, t, reduction="mean")
        assert a.grad_fn is None and b.grad_fn is not None
        torch.testing.assert_close(a, b.detach())


def test_targets_on_another_device_or_shape_are_refused_with_a_message():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"targets has shape \(4, 2\); expected the shape"):
        sigmoid_focal_loss(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="targets is on meta but logits on cpu"):
        sigmoid_focal_loss(x, torch.zeros(4, 3, device="meta"))
