"""The trainer's side of ``INPUT.FIT_TO_DATASET`` (the fit itself: ``focal_rpn.data.fit``).

``fit_config_to_dataset(cfg, args)`` runs in ``setup`` before the config is frozen and written
to ``OUTPUT_DIR/config.yaml``. It registers the ``--dataset`` arguments (as
``prepare_datasets`` does later: registering twice is harmless), reads the training json(s)
and sets the fitted options, leaving alone every key given on the command line. The fitted
config is written with ``INPUT.FIT_TO_DATASET False``: ``config.yaml`` holds the values the
run trained with and gives the same model when read again (``predict.py``, ``--eval-only``).
"""
import re
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data import datasets
from ..data.fit import Fit, apply_fit, data_stats, fit_recipe

#: training datasets of these names are the embedded one, on which the recipes were tuned
_EMBEDDED = re.compile(r"^focal_synth_(train|val)$")


def command_line_keys(opts) -> List[str]:
    """The config keys of the KEY VALUE ``opts`` of a command line."""
    return [str(k) for k in list(opts or [])[::2]]


def _not_fittable(cfg) -> Optional[str]:
    """Why the training datasets of ``cfg`` are not fitted to (None: they are)."""
    for name in cfg.DATASETS.TRAIN:
        if _EMBEDDED.match(name):
            return f"{name} is the embedded dataset that the recipe was tuned on"
        if name not in DatasetCatalog.list() or not getattr(MetadataCatalog.get(name), "json_file", None):
            return f"{name} is not a registered COCO-json dataset (--dataset NAME=JSON:IMAGES)"
    return None


def fit_config_to_dataset(cfg, args) -> Optional[Fit]:
    """Fit ``cfg`` (not frozen) to its training data when ``INPUT.FIT_TO_DATASET`` is set;
    returns the fit (its ``lines`` to log) or None. A ``Fit`` without options says why in its
    one line."""
    if not cfg.INPUT.FIT_TO_DATASET:
        return None
    for spec in getattr(args, "dataset", None) or []:
        datasets.parse_dataset_arg(spec)
    cfg.INPUT.FIT_TO_DATASET = False  # config.yaml: the fitted values, read as they are
    reason = _not_fittable(cfg)
    if reason:
        return Fit({}, [f"nothing fitted: {reason}"], [])
    cocos = [datasets.read_coco_json(MetadataCatalog.get(n).json_file) for n in cfg.DATASETS.TRAIN]
    fit = fit_recipe(cfg, data_stats(cocos), datasets.num_classes_key(cfg),
                     user_keys=command_line_keys(getattr(args, "opts", None)))
    apply_fit(cfg, fit)
    return fit


def log_fit(fit: Optional[Fit], log) -> None:
    """One block in the run's log: what was read, what was set, what was kept."""
    if fit is None:
        return
    log("INPUT.FIT_TO_DATASET: " + "; ".join(fit.lines))
    if fit.options:
        log("INPUT.FIT_TO_DATASET set " + ", ".join(f"{k} {v}" for k, v in fit.options.items()))
    if fit.kept:
        log("INPUT.FIT_TO_DATASET kept the command line's " + ", ".join(fit.kept))
