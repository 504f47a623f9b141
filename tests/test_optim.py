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

