"""Weights that must fit the model exactly (prediction, ``--eval-only``), and what a training
run leaves beside its weights for prediction.

``load_matching_weights(model, path, cfg)``
    Loads a checkpoint into ``model`` for inference. A ``.pth`` / ``.pt`` file (focal_rpn's
    and detectron2's own checkpoints) must hold exactly the model's parameters and buffers,
    with the same shapes; otherwise ``WeightsMismatchError`` lists the missing, unexpected and
    shape-mismatched names (detectron2 would log "Skip loading parameter" and predict with
    random heads). The message names the config keys that set the class count. Model-zoo
    files (``.pkl``) keep detectron2's name-matching rules and are loaded as detectron2 does.

``check_initial_weights(model, path, incompatible)``
    Training (also each run of ``tools/compare.py``): ``MODEL.WEIGHTS`` may fit in part
    (fine-tuning a new head), but a file of which not one parameter loads is refused.

``check_resumed_weights(path, incompatible, cfg)``
    ``--resume``: the run's last checkpoint must have fitted the model exactly, as for inference
    (a config changed between a run and its resume would otherwise train a half-loaded model).

``write_run_classes(cfg)`` / ``read_run_classes(folder)``
    ``OUTPUT_DIR/classes.json`` (written when training starts) holds the class names of the
    run's training dataset, so that ``tools/predict.py --weights RUN/model_final.pth`` labels
    boxes with them and reads ``RUN/config.yaml``.
"""
import json
import logging
import os
from typing import Dict, List, Optional

import torch

from .user_errors import UserError

logger = logging.getLogger(__name__)

RUN_CLASSES_FILE = "classes.json"
RUN_CONFIG_FILE = "config.yaml"
#: names of each kind listed in the error
MAX_LISTED = 8


class WeightsMismatchError(UserError, ValueError):
    """A checkpoint's parameters do not fit the model; the message lists them."""


def _strip_module_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def weights_mismatch(model_state: Dict[str, torch.Tensor],
                     file_state: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    """{"missing": [...], "unexpected": [...], "shape": ["name: file [..] vs model [..]"]}."""
    file_state = _strip_module_prefix(file_state)
    missing = sorted(k for k in model_state if k not in file_state)
    unexpected = sorted(k for k in file_state if k not in model_state)
    shape = sorted(
        f"{k}: file {list(file_state[k].shape)} vs model {list(v.shape)}"
        for k, v in model_state.items()
        if k in file_state and torch.is_tensor(file_state[k])
        and tuple(file_state[k].shape) != tuple(v.shape))
    return {"missing": missing, "unexpected": unexpected, "shape": shape}


def _listed(names: List[str]) -> str:
    """"under head: 14, roi_heads: 8; e.g. head.bbox_pred.bias, ..." (by top-level module)."""
    modules: Dict[str, int] = {}
    for name in names:
        top = name.split(".", 1)[0]
        modules[top] = modules.get(top, 0) + 1
    more = f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    under = ", ".join(f"{m}: {n}" for m, n in modules.items())
    return f"under {under}; e.g. " + ", ".join(names[:MAX_LISTED]) + more


def mismatch_message(path: str, problems: Dict[str, List[str]], cfg=None,
                     hint: Optional[str] = None) -> Optional[str]:
    parts = []
    if problems["shape"]:
        parts.append(f"{len(problems['shape'])} with another shape ({_listed(problems['shape'])})")
    if problems["missing"]:
        parts.append(f"{len(problems['missing'])} of the model missing from the file "
                     f"({_listed(problems['missing'])})")
    if problems["unexpected"]:
        parts.append(f"{len(problems['unexpected'])} in the file that the model does not have "
                     f"({_listed(problems['unexpected'])})")
    if not parts:
        return None
    model = ""
    hint = hint or ("Use the config of the run that trained these weights: tools/predict.py "
                    f"--weights RUN/model_final.pth reads RUN/{RUN_CONFIG_FILE}")
    if cfg is not None:
        from ..data.datasets import num_classes_key, num_classes_value

        key = num_classes_key(cfg)
        model = f" (MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}"
        model += f", {key} {num_classes_value(cfg)})" if key else ")"
        if key and problems["shape"] and not problems["missing"] and not problems["unexpected"]:
            hint += f"; a different class count means {key} differs from the training run's"
    return (f"weights {path!r} do not fit the model of this config{model}: parameters "
            + "; ".join(parts) + f". {hint}")


def load_matching_weights(model, path: str, cfg=None, checkpointer_cls=None):
    """Load ``path`` into ``model`` (see the module docstring); raises WeightsMismatchError."""
    from .checkpoint import AtomicCheckpointer

    checkpointer = (checkpointer_cls or AtomicCheckpointer)(model)
    if path.endswith((".pth", ".pt")) and os.path.isfile(path):
        loaded = checkpointer.load_file(path)  # as load() reads it (focal_rpn.engine.checkpoint)
        file_state = loaded.get("model", loaded)
        model_state = checkpointer.model.state_dict()
        message = mismatch_message(path, weights_mismatch(model_state, file_state), cfg)
        if message:
            raise WeightsMismatchError(message)
    checkpointer.incompatible_keys = None
    result = checkpointer.load(path, checkpointables=[])
    # other formats (model-zoo .pkl: detectron2 matches their names while loading): what the
    # load itself reports as not loaded
    problems = _not_loaded(checkpointer.incompatible_keys)
    if problems is not None:
        problems["unexpected"] = []  # model-zoo files carry extra entries (e.g. the ImageNet fc)
        message = mismatch_message(path, problems, cfg)
        if message:
            raise WeightsMismatchError(message)
    return result


def _not_loaded(incompatible) -> Optional[Dict[str, List[str]]]:
    """``weights_mismatch``'s form of fvcore's report of a load (None: no report)."""
    if incompatible is None:
        return None
    return {"missing": sorted(incompatible.missing_keys),
            "unexpected": sorted(incompatible.unexpected_keys),
            "shape": sorted(f"{k}: file {list(a)} vs model {list(b)}"
                            for k, a, b in incompatible.incorrect_shapes)}


def check_resumed_weights(path: str, incompatible, cfg) -> None:
    """After ``--resume`` loaded ``path`` (the run's last checkpoint): raise
    ``WeightsMismatchError`` unless the load's report (``incompatible``) says it held exactly
    the model's parameters, with the same shapes. detectron2 skips what does not fit and would
    go on training a model half the checkpoint's and half new (a config changed between the
    run and its resume)."""
    folder = os.path.dirname(path)
    message = mismatch_message(
        path, _not_loaded(incompatible) or {"missing": [], "unexpected": [], "shape": []}, cfg,
        hint=(f"--resume continues the run in {folder!r}, which trained another model: resume "
              f"it with its own config ({os.path.join(folder, RUN_CONFIG_FILE)}), or train this "
              "config into a new OUTPUT_DIR"))
    if message:
        raise WeightsMismatchError(f"--resume: {message}")


def check_initial_weights(model, path: str, incompatible) -> None:
    """After training loaded ``MODEL.WEIGHTS`` (``path``) into ``model``: raise
    ``WeightsMismatchError`` when not one parameter of the model came from the file (the
    run would train from random weights while the config says otherwise); log one line
    counting what starts from its initialisation when only part loaded (fine-tuning: a new
    head, another class count)."""
    problems = _not_loaded(incompatible)
    if problems is None:
        return
    # parameters only: detectron2 drops pixel_mean / pixel_std from the missing buffers
    names = [n for n, _ in model.named_parameters()]
    missing = set(problems["missing"]) | {p.split(":", 1)[0] for p in problems["shape"]}
    not_loaded = [n for n in names if n in missing]
    loaded = [n for n in names if n not in missing]
    if not loaded:
        file_side = problems["unexpected"]
        holds = f"the file holds {len(file_side)} others ({_listed(file_side)})" if file_side \
            else "the file holds none that fit"
        raise WeightsMismatchError(
            f"MODEL.WEIGHTS {path!r}: not one of the model's {len(names)} parameters "
            f"could be loaded from it ({len(problems['shape'])} with another shape; {holds}). "
            "Training would start from random weights. Give the weights of this model or of "
            "its backbone, or MODEL.WEIGHTS \"\" to train from scratch on purpose")
    if not_loaded:
        logger.warning(
            f"MODEL.WEIGHTS {path!r}: {len(loaded)} of {len(names)} parameters loaded; "
            f"{len(not_loaded)} start from their initialisation ({_listed(not_loaded)})")


def write_run_classes(cfg) -> Optional[str]:
    """Write OUTPUT_DIR/classes.json: {"dataset": first DATASETS.TRAIN, "thing_classes": [...]}
    (only on the main process, only when the dataset's metadata has class names)."""
    from detectron2.data import MetadataCatalog
    from detectron2.utils import comm

    if not comm.is_main_process() or not cfg.DATASETS.TRAIN or not cfg.OUTPUT_DIR:
        return None
    name = cfg.DATASETS.TRAIN[0]
    classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
    if not classes:
        return None
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    path = os.path.join(cfg.OUTPUT_DIR, RUN_CLASSES_FILE)
    with open(path, "w") as f:
        json.dump({"dataset": name, "thing_classes": list(classes)}, f, indent=1)
    return path


def read_run_classes(folder: str) -> Optional[List[str]]:
    """The class names in ``folder/classes.json``, or None if there is no such file."""
    path = os.path.join(folder, RUN_CLASSES_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            classes = json.load(f)["thing_classes"]
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsMismatchError(f"{path!r} is not a class-name file of a training run ({e}); "
                                   "remove it or pass --dataset-name") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise WeightsMismatchError(f"{path!r}: 'thing_classes' must be a list of names")
    return classes
