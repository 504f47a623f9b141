"""SOLVER.OPTIMIZER: detectron2's SGD by default, AdamW on request, clear errors otherwise."""
import os

import pytest
import torch
from detectron2.config import get_cfg

import focal_rpn
from focal_rpn.engine import build_argument_parser
from focal_rpn.engine.optim import build_optimizer
from focal_rpn.engine.config_merge import ConfigError
from focal_rpn.engine.trainer import build_config

QUICK_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "quick_retinanet_R18.yaml")


def _cfg(**solver):
    cfg = focal_rpn.add_focal_rpn_config(get_cfg())
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_default_is_detectron2_sgd_with_momentum():
    optimizer = build_optimizer(_cfg(), _model())
    assert type(optimizer).__name__ == "SGD"
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_adamw_uses_the_solver_keys_and_keeps_norm_layers_without_decay():
    cfg = _cfg(OPTIMIZER="AdamW", BASE_LR=0.003, WEIGHT_DECAY=0.05, WEIGHT_DECAY_NORM=0.0,
               BETAS=(0.8, 0.99))
    model = _model()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == 0.05
    assert decay[id(model[1].weight)] == 0.0
    assert all(g["lr"] == 0.003 and g["betas"] == (0.8, 0.99) for g in optimizer.param_groups)


def test_adamw_clips_gradients_when_asked():
    cfg = _cfg(OPTIMIZER="AdamW", BASE_LR=0.1, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1e-3
    model = torch.nn.Linear(2, 1, bias=False)
    optimizer = build_optimizer(cfg, model)
    model.weight.grad = torch.full_like(model.weight, 100.0)
    optimizer.step()
    assert torch.linalg.vector_norm(model.weight.grad) <= 1e-3 * 1.01


@pytest.mark.parametrize("opts, words", [
    (["SOLVER.OPTIMIZER", "Adam"], ["SOLVER.OPTIMIZER", "'Adam'", "SGD", "AdamW"]),
    (["SOLVER.OPTIMIZER", "AdamW", "SOLVER.BETAS", "(0.9, 1.5)"], ["SOLVER.BETAS", "[0, 1)"]),
])
def test_bad_optimizer_settings_fail_when_the_config_is_read(opts, words):
    args = build_argument_parser().parse_args(["--config-file", QUICK_CONFIG, *opts])
    with pytest.raises(ConfigError) as err:
        build_config(args)
    for word in words:
        assert word in str(err.value)



def _grads(seed):
    """Parameters with gradients of norms far above and below 1, and one without a gradient."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(4, 3, 3, 3), (4,), (7, 5), (2,)]]
    for p, scale in zip(params[:3], (50.0, 1e-3, 3.0)):
        p.grad = torch.randn(p.shape, generator=generator) * scale
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_each_gradient_is_clipped_on_its_own_as_detectron2_does(norm_type):
    from focal_rpn.engine.optim import clip_each_gradient_norm_

    ours, theirs = _grads(0), _grads(0)
    clip_each_gradient_norm_(ours, 1.0, norm_type)
    for p in theirs:  # detectron2's SOLVER.CLIP_GRADIENTS "norm": clip_grad_norm_ per parameter
        torch.nn.utils.clip_grad_norm_(p, 1.0, norm_type)
    assert ours[3].grad is None
    for a, b in zip(ours[:3], theirs[:3]):
        torch.testing.assert_close(a.grad, b.grad)
    norms = [torch.linalg.vector_norm(p.grad, norm_type).item() for p in ours[:3]]
    assert norms[0] == pytest.approx(1.0, rel=1e-4)  # clipped to the limit
    assert norms[1] < 0.1  # small gradients are left as they are


def _adamw_cfg():
    cfg = _cfg(OPTIMIZER="AdamW", BASE_LR=0.01, WEIGHT_DECAY=0.05)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    return cfg


def test_adamw_on_cpu_is_fused_and_steps_like_detectron2s_clipped_adamw():
    from detectron2.solver.build import maybe_add_gradient_clipping

    cfg = _adamw_cfg()
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    theirs_model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    theirs_model.load_state_dict(ours_model.state_dict())
    ours = build_optimizer(cfg, ours_model)
    assert all(group["fused"] for group in ours.param_groups)
    theirs = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        theirs_model.parameters(), lr=0.01, weight_decay=0.05
    )
    x = torch.randn(2, 3, 6, 6)
    for _ in range(3):
        for model, optimizer in ((ours_model, ours), (theirs_model, theirs)):
            optimizer.zero_grad()
            (model(x) ** 2).sum().mul(100).backward()  # large gradients: clipping acts
            optimizer.step()
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adamw_only_for_floating_point_cpu_tensors():
    from focal_rpn.engine.optim import fused_adamw_fits

    assert fused_adamw_fits([torch.zeros(2)])
    assert fused_adamw_fits([{"params": [torch.zeros(2)]}, {"params": [torch.zeros(1)]}])
    assert not fused_adamw_fits([torch.zeros(2, device="meta")])
    assert not fused_adamw_fits([torch.zeros(2, dtype=torch.int64)])
    assert not fused_adamw_fits([])
