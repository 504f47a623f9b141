"""LevelBatchNorm computes detectron2's CycleBatchNormList in one fused op: the same outputs,
gradients, running statistics and state-dict keys; and FocalRetinaNet's "BN" head uses it."""
import copy

import pytest
import torch
from detectron2.layers import CycleBatchNormList, ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from focal_rpn.layers import LevelBatchNorm, use_level_batch_norms

LEVEL_SIZES = [(16, 12), (8, 6), (4, 3)]


def _cycle(momentum=0.1, track_running_stats=True, channels=5):
    torch.manual_seed(0)
    cycle = CycleBatchNormList(
        length=len(LEVEL_SIZES), num_features=channels, momentum=momentum,
        track_running_stats=track_running_stats,
    )
    with torch.no_grad():  # a trained-looking affine, not the identity it starts at
        cycle.weight.copy_(torch.rand(channels) + 0.5)
        cycle.bias.copy_(torch.randn(channels))
    return cycle


def _inputs(seed, channels=5):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(2, channels, h, w, generator=generator) * 3 + 1).requires_grad_()
        for h, w in LEVEL_SIZES
    ]


def _run_levels(layer, inputs):
    """One step: every level in order; returns the outputs and the gradients of a loss."""
    outputs = [layer(x) for x in inputs]
    loss = sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() for out in outputs)
    loss.backward()
    return outputs


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
def test_same_function_as_cycle_batch_norm_list(momentum, track_running_stats):
    reference = _cycle(momentum, track_running_stats)
    fused = LevelBatchNorm.from_cycle_batch_norm(copy.deepcopy(reference))
    for step in range(3):  # training: batch statistics, running statistics updated
        ref_in, fused_in = _inputs(step), _inputs(step)
        ref_out, fused_out = _run_levels(reference, ref_in), _run_levels(fused, fused_in)
        for a, b, xa, xb in zip(ref_out, fused_out, ref_in, fused_in):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fused.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-4)
    for ref_bn, fused_bn in zip(reference, fused):
        for name, buffer in ref_bn.named_buffers():
            torch.testing.assert_close(dict(fused_bn.named_buffers())[name], buffer)
    reference.eval()
    fused.eval()
    with torch.no_grad():
        for a, b in zip([reference(x) for x in _inputs(9)], [fused(x) for x in _inputs(9)]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_running_statistics_move_per_level():
    """A level's statistics follow its own inputs (not a shared average): the thing that makes
    it a per-level BatchNorm."""
    fused = LevelBatchNorm.from_cycle_batch_norm(_cycle())
    shifts = [0.0, 10.0, -10.0]
    for _ in range(50):
        for (h, w), shift in zip(LEVEL_SIZES, shifts):
            fused(torch.randn(4, 5, h, w) + shift)
    means = [bn.running_mean.mean().item() for bn in fused]
    assert means == pytest.approx(shifts, abs=0.5)


def test_state_dict_keys_and_checkpoints_load_both_ways():
    reference = _cycle()
    _run_levels(reference, _inputs(0))
    fused = LevelBatchNorm.from_cycle_batch_norm(_cycle())
    assert list(fused.state_dict()) == list(reference.state_dict())
    fused.load_state_dict(reference.state_dict())
    back = _cycle()
    back.load_state_dict(fused.state_dict())
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value)


def test_keeps_the_bfloat16_of_autocast():
    """CycleBatchNormList's float32 affine promotes a bfloat16 activation to float32; the fused
    layer returns the activation's dtype."""
    reference = _cycle()
    fused = LevelBatchNorm.from_cycle_batch_norm(copy.deepcopy(reference))
    x = torch.randn(2, 5, 8, 8).bfloat16()
    assert reference(x).dtype == torch.float32  # what the fused layer avoids
    out = fused(x)
    assert out.dtype == torch.bfloat16
    reference.eval()
    fused.eval()
    expected = _cycle()(x.float())  # the same weights, level 0, training mode, float32
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.05)


def test_rejects_levels_that_are_not_plain_affine_free_batch_norms():
    weight, bias = nn.Parameter(torch.ones(4)), nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="affine=False"):
        LevelBatchNorm([nn.BatchNorm2d(4)], weight, bias)
    with pytest.raises(ValueError, match="level 0"):
        LevelBatchNorm([nn.GroupNorm(2, 4)], weight, bias)


def _head(norm):
    shapes = [ShapeSpec(channels=8, stride=s) for s in (8, 16, 32)]
    return RetinaNetHead(input_shape=shapes, num_classes=3, num_anchors=9, conv_dims=[8, 8],
                         norm=norm)


def test_replaces_the_bn_heads_norms_sharing_parameters():
    head = _head("BN")
    params_before = {name: p for name, p in head.named_parameters()}
    keys_before = list(head.state_dict())
    assert use_level_batch_norms(head) == 4  # 2 convs x (class, box) subnets
    assert not any(isinstance(m, CycleBatchNormList) for m in head.modules())
    assert list(head.state_dict()) == keys_before
    for name, p in head.named_parameters():
        assert p is params_before[name]
    features = [torch.randn(2, 8, 16 // 2**i, 16 // 2**i) for i in range(3)]
    logits, deltas = head(features)
    assert [tuple(x.shape) for x in logits] == [(2, 27, 16, 16), (2, 27, 8, 8), (2, 27, 4, 4)]


def test_leaves_other_norms_alone():
    assert use_level_batch_norms(_head("")) == 0
    assert use_level_batch_norms(_head("SyncBN")) == 0  # its levels are NaiveSyncBatchNorm
    frozen_levels = CycleBatchNormList(length=2, num_features=4, affine=False)
    assert use_level_batch_norms(nn.Sequential(frozen_levels)) == 0  # no shared affine


def test_focal_retinanet_bn_head_runs_fused_and_matches_stock_head():
    """The model's "BN" head has no CycleBatchNormList left, and in training mode (batch
    statistics) it computes what detectron2's RetinaNetHead computes with the same weights."""
    from tests.tiny_models import tiny_cfg

    cfg = tiny_cfg("retinanet_R50.yaml", ["MODEL.RETINANET.NORM", "BN"])
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    model = build_model(cfg)
    assert any(isinstance(m, LevelBatchNorm) for m in model.head.modules())
    assert not any(isinstance(m, CycleBatchNormList) for m in model.head.modules())
    shapes = [model.backbone.output_shape()[f] for f in model.head_in_features]
    stock = RetinaNetHead(cfg, shapes)
    assert any(isinstance(m, CycleBatchNormList) for m in stock.modules())
    stock.load_state_dict(model.head.state_dict())
    with torch.no_grad():  # an affine away from its identity start
        for head in (model.head, stock):
            for name, p in head.named_parameters():
                if name.endswith("norm.weight") or ".weight" in name and p.dim() == 1:
                    p.copy_(torch.linspace(0.5, 1.5, p.numel()))
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(2, s.channels, 16 // 2**i, 16 // 2**i, generator=generator)
                for i, s in enumerate(shapes)]
    ours, theirs = model.head(features), stock(features)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
