"""Checks of a whole config when it is read, before any model is built.

``check_config(cfg)`` raises ``ConfigError`` (naming key, value and what is allowed) for:

* any value of focal_rpn's own nodes (``MODEL.FOCAL_RPN.*``, ``MODEL.FOCAL_RETINANET.*``,
  ``SOLVER.OPTIMIZER`` / ``BETAS`` / ``TIME_BUDGET_MINUTES``, ``INPUT.FIT_TO_DATASET``) and of the detectron2 keys the
  plugin's models read (``MODEL.RETINANET.FOCAL_LOSS_*``, ``PRIOR_PROB``), whichever model the
  config builds: a FL-RPN key set wrongly in a RetinaNet config is an error, not ignored.
  Every key of those nodes has a check in ``VALUE_CHECKS`` (a test keeps it so);
* a name that must be registered in a detectron2 registry (``REGISTRY_KEYS``: meta
  architecture, proposal generator, backbone, heads, anchor generator) and is not (an empty
  name, as detectron2's default ROI_BOX_HEAD.NAME, means unused); the message lists the
  registered names, closest first;
* a local ``MODEL.WEIGHTS`` file that does not exist (detectron2 would assert "Checkpoint ...
  not found!" after building everything).
"""
import difflib
import os
from typing import Callable, Dict, List, Tuple

from .. import config as focal_config
from .config_merge import ConfigError

#: the nodes whose every key must have a check in VALUE_CHECKS
PLUGIN_NODES = ("MODEL.FOCAL_RPN", "MODEL.FOCAL_RETINANET")
#: focal_rpn's keys inside detectron2's nodes (SOLVER, INPUT)
PLUGIN_KEYS_IN_D2_NODES = ("SOLVER.OPTIMIZER", "SOLVER.BETAS", "SOLVER.TIME_BUDGET_MINUTES",
                           "INPUT.FIT_TO_DATASET")


def _optimizer(key, value):
    from .optim import OPTIMIZERS

    if value not in OPTIMIZERS:
        raise ValueError(f"{key} = {value!r} is not supported; allowed: {list(OPTIMIZERS)}")


def _betas(key, value):
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in value))
    if not ok:
        raise ValueError(f"{key} = {value!r} is not allowed: two numbers in [0, 1), "
                         "e.g. (0.9, 0.999)")


def _winograd(key, value):
    from ..layers.winograd import check_winograd_mode

    check_winograd_mode(key, value)


def _cpu_bf16(key, value):
    from ..layers.cpu_bf16 import check_cpu_bf16_mode

    check_cpu_bf16_mode(key, value)


def _time_budget(key, value):
    from .budget import check_time_budget

    check_time_budget(value)


#: key -> check(key, value) raising ValueError with the key, the value and what is allowed
VALUE_CHECKS: Dict[str, Callable] = {
    "MODEL.FOCAL_RPN.ALPHA": focal_config.check_alpha,
    "MODEL.FOCAL_RPN.GAMMA": focal_config.check_gamma,
    "MODEL.FOCAL_RPN.LOSS_WEIGHT": focal_config.check_positive,
    "MODEL.FOCAL_RPN.ACTIVATION": focal_config.check_activation,
    "MODEL.FOCAL_RPN.PRIOR_PROB": focal_config.check_probability,
    "MODEL.FOCAL_RETINANET.ACTIVATION": focal_config.check_activation,
    "MODEL.FOCAL_RETINANET.WINOGRAD": _winograd,
    "MODEL.FOCAL_RETINANET.CHANNELS_LAST": focal_config.check_channels_last_mode,
    "MODEL.FOCAL_RETINANET.CPU_BF16": _cpu_bf16,
    "MODEL.CHANNELS_LAST": focal_config.check_channels_last_mode,
    "MODEL.RETINANET.FOCAL_LOSS_ALPHA": focal_config.check_alpha,
    "MODEL.RETINANET.FOCAL_LOSS_GAMMA": focal_config.check_gamma,
    "MODEL.RETINANET.PRIOR_PROB": focal_config.check_probability,
    "SOLVER.OPTIMIZER": _optimizer,
    "SOLVER.BETAS": _betas,
    "SOLVER.TIME_BUDGET_MINUTES": _time_budget,
    "INPUT.FIT_TO_DATASET": focal_config.check_bool,
}


def _registries():
    from detectron2.modeling import (
        ANCHOR_GENERATOR_REGISTRY,
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        RPN_HEAD_REGISTRY,
        ROI_HEADS_REGISTRY,
    )
    from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY

    return {
        "MODEL.META_ARCHITECTURE": META_ARCH_REGISTRY,
        "MODEL.PROPOSAL_GENERATOR.NAME": PROPOSAL_GENERATOR_REGISTRY,
        "MODEL.BACKBONE.NAME": BACKBONE_REGISTRY,
        "MODEL.RPN.HEAD_NAME": RPN_HEAD_REGISTRY,
        "MODEL.ROI_HEADS.NAME": ROI_HEADS_REGISTRY,
        "MODEL.ROI_BOX_HEAD.NAME": ROI_BOX_HEAD_REGISTRY,
        "MODEL.ANCHOR_GENERATOR.NAME": ANCHOR_GENERATOR_REGISTRY,
    }


#: keys whose value names an entry of a detectron2 registry
REGISTRY_KEYS = ("MODEL.META_ARCHITECTURE", "MODEL.PROPOSAL_GENERATOR.NAME", "MODEL.BACKBONE.NAME",
                 "MODEL.RPN.HEAD_NAME", "MODEL.ROI_HEADS.NAME", "MODEL.ROI_BOX_HEAD.NAME",
                 "MODEL.ANCHOR_GENERATOR.NAME")


def get_key(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def plugin_keys(cfg) -> List[str]:
    """Every key of focal_rpn's nodes in ``cfg`` (the ones VALUE_CHECKS must cover)."""
    keys = [f"{node}.{k}" for node in PLUGIN_NODES for k in get_key(cfg, node)]
    return keys + [k for k in PLUGIN_KEYS_IN_D2_NODES if k.split(".")[1] in get_key(cfg, k.split(".")[0])]


def registered_names(registry) -> List[str]:
    """The names in a detectron2 (fvcore) Registry, through its public iteration."""
    return sorted(name for name, _ in registry)


def check_registry_names(cfg) -> None:
    registries = _registries()
    for key in REGISTRY_KEYS:
        value = get_key(cfg, key)
        names = registered_names(registries[key])
        if value in names or (value == "" and key != "MODEL.META_ARCHITECTURE"):  # "": unused
            continue
        close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.5)
        order = close + [n for n in names if n not in close]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"{key} = {value!r} is not registered: {hint}registered names: {', '.join(order)}"
            + (". Names of your own classes are registered when their module is imported"
               if key == "MODEL.META_ARCHITECTURE" else ""))


def check_plugin_values(cfg) -> Tuple[str, ...]:
    """Run VALUE_CHECKS over ``cfg``; returns the keys checked."""
    unchecked = [k for k in plugin_keys(cfg) if k not in VALUE_CHECKS]
    if unchecked:  # a new config key without a check: a bug of focal_rpn, not of the user
        raise AssertionError(f"config keys without a value check in VALUE_CHECKS: {unchecked}")
    checked = []
    for key, check in VALUE_CHECKS.items():
        try:
            value = get_key(cfg, key)
        except KeyError:
            continue
        try:
            check(key, value)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from None
        checked.append(key)
    return tuple(checked)


def check_weights_path(cfg) -> None:
    """A local MODEL.WEIGHTS file must exist (URLs such as detectron2://... are not checked)."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        where = os.path.abspath(weights)
        raise ConfigError(f"MODEL.WEIGHTS {weights!r} does not exist (looked for {where}); give "
                          "a checkpoint file, a detectron2:// model-zoo URL, or \"\" to start "
                          "from random weights")


def check_config(cfg, weights: bool = True) -> None:
    """All read-time checks (see the module docstring); raises ConfigError. ``weights``:
    also check that a local MODEL.WEIGHTS exists."""
    check_plugin_values(cfg)
    check_registry_names(cfg)
    if weights:
        check_weights_path(cfg)
