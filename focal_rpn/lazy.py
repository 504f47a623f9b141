"""Building blocks for LazyConfig (Python) configs (configs/lazy/), for detectron2's
``tools/lazyconfig_train_net.py``.

* ``yaml_config(path)``: a yacs config file of this repo, loaded with focal_rpn's keys, so a
  lazy config can read its values from the yaml recipe it mirrors instead of copying them.
* ``dataset_names(specs)``: dataset names for ``get_detection_dataset_dicts`` /
  ``COCOEvaluator`` that register what they name on the way: the embedded synthetic dataset
  (``focal_synth_train`` / ``_val``, generated once and cached) and user COCO datasets given as
  ``"NAME=JSON:IMAGE_DIR"`` (checked, as ``tools/train_net.py --dataset``).
* ``clipped_optimizer(...)``: a torch optimizer with detectron2's gradient clipping
  (``SOLVER.CLIP_GRADIENTS``), which a lazy config otherwise cannot express.
* ``multistep_lr_multiplier(...)``: detectron2's yaml LR schedule (warm-up, steps) as the
  fvcore scheduler ``lazyconfig_train_net.py`` takes.
"""
import os
from typing import List, Optional, Sequence, Union

import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import CfgNode, get_cfg
from detectron2.solver import WarmupParamScheduler
from detectron2.utils.registry import locate

from .config import add_focal_rpn_config
from .engine.optim import fused_adamw_fits, with_gradient_clipping

__all__ = ["clipped_optimizer", "dataset_names", "multistep_lr_multiplier", "yaml_config"]


def yaml_config(path: str) -> CfgNode:
    """The yacs config at ``path`` (``_BASE_`` followed), with focal_rpn's keys added."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"yaml config {path!r} does not exist")
    cfg = get_cfg()
    add_focal_rpn_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _register(spec: str) -> str:
    from .data import parse_dataset_arg, register_synthetic_dataset
    from .data.synthetic import DEFAULT_NAME, SPLITS

    if "=" in spec:
        return parse_dataset_arg(spec)
    if spec in {f"{DEFAULT_NAME}_{split}" for split in SPLITS}:
        register_synthetic_dataset()
    return spec


def dataset_names(specs: Union[str, Sequence[str]]) -> Union[str, List[str]]:
    """Register the datasets that ``specs`` describe and return their names.

    Each spec is a registered name (e.g. detectron2's ``coco_2017_train``), a name of the
    embedded synthetic dataset (``focal_synth_train`` / ``focal_synth_val``: generated on first
    use), or ``"NAME=JSON:IMAGE_DIR"`` (a COCO-format dataset, checked and registered as NAME).
    A single string gives a single name (what ``COCOEvaluator`` takes), a list gives a list.
    """
    if isinstance(specs, str):
        return _register(specs)
    return [_register(spec) for spec in specs]


def clipped_optimizer(
    optimizer: str, params, *, clip_type: Optional[str] = "norm", clip_value: float = 5.0,
    norm_type: float = 2.0, **kwargs,
):
    """``optimizer`` (a dotted name, e.g. ``"torch.optim.AdamW"``) over ``params`` with
    detectron2's gradient clipping (its ``SOLVER.CLIP_GRADIENTS`` with the same keys;
    ``clip_type=None``: no clipping); ``kwargs`` go to the optimizer (lr, weight_decay, betas,
    momentum, ...)."""
    optimizer_class = locate(optimizer) if isinstance(optimizer, str) else optimizer
    if optimizer_class is None:
        raise ValueError(f"optimizer = {optimizer!r} does not name an importable class")
    params = list(params)
    if issubclass(optimizer_class, torch.optim.AdamW) and "fused" not in kwargs:
        kwargs["fused"] = fused_adamw_fits(params) or None  # as SOLVER.OPTIMIZER "AdamW" does
    clip = get_cfg().SOLVER.CLIP_GRADIENTS
    clip.ENABLED = clip_type is not None
    if clip_type is not None:
        clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE = clip_type, clip_value, norm_type
    return with_gradient_clipping(clip, optimizer_class)(params, **kwargs)


def multistep_lr_multiplier(
    max_iter: int, steps: Sequence[int], gamma: float = 0.1, warmup_iters: int = 0,
    warmup_factor: float = 0.001, warmup_method: str = "linear",
):
    """detectron2's ``WarmupMultiStepLR`` of a yaml SOLVER as an fvcore scheduler: factor
    gamma^k after k of ``steps``, linear warm-up over ``warmup_iters`` from ``warmup_factor``.

    The scheduler is relative (its position is iteration / max_iter), so overriding
    ``train.max_iter`` keeps the shape of the schedule.
    """
    steps = [s for s in steps if s <= max_iter]
    scheduler = MultiStepParamScheduler(
        values=[gamma**k for k in range(len(steps) + 1)], milestones=steps, num_updates=max_iter
    )
    return WarmupParamScheduler(
        scheduler, warmup_factor, min(warmup_iters / max_iter, 1.0), warmup_method
    )
