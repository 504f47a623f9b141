"""The optimizer named by ``SOLVER.OPTIMIZER``: detectron2's SGD, or AdamW.

detectron2 0.6's ``DefaultTrainer.build_optimizer`` knows only SGD with momentum. Training from
scratch on a CPU budget (the embedded default) learns faster with AdamW, so focal_rpn adds
``SOLVER.OPTIMIZER``:

* ``"SGD"`` (default): exactly detectron2's ``build_optimizer`` (momentum, Nesterov, weight
  decay groups, gradient clipping).
* ``"AdamW"``: ``torch.optim.AdamW`` over the same parameter groups (``SOLVER.WEIGHT_DECAY``,
  ``WEIGHT_DECAY_NORM``, ``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``), ``SOLVER.BASE_LR`` as its
  learning rate, ``SOLVER.BETAS`` as its betas, and detectron2's ``SOLVER.CLIP_GRADIENTS``.

The LR schedule (warm-up, steps) is detectron2's for both.
"""
import torch
from detectron2.solver import build_optimizer as build_sgd_optimizer
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

#: Allowed values of SOLVER.OPTIMIZER.
OPTIMIZERS = ("SGD", "AdamW")


def check_optimizer_config(cfg):
    """Raise ValueError naming the key, the value and what is allowed, for a bad optimizer."""
    name = cfg.SOLVER.OPTIMIZER
    if name not in OPTIMIZERS:
        raise ValueError(
            f"SOLVER.OPTIMIZER = {name!r} is not supported; allowed: {list(OPTIMIZERS)}"
        )
    if name == "AdamW":
        betas = tuple(cfg.SOLVER.BETAS)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"SOLVER.BETAS = {list(cfg.SOLVER.BETAS)!r} is not allowed: "
                "two numbers in [0, 1), e.g. (0.9, 0.999)"
            )


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.SOLVER.OPTIMIZER`` over ``model``'s trainable parameters."""
    check_optimizer_config(cfg)
    if cfg.SOLVER.OPTIMIZER == "SGD":
        return build_sgd_optimizer(cfg, model)
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    adamw = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return adamw(
        params,
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.SOLVER.BETAS),
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
