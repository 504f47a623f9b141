"""Datasets of focal_rpn: the embedded synthetic default and checked user COCO datasets.

* ``synthetic``: ``register_synthetic_dataset()`` generates (once, cached) and registers the
  deterministic shapes dataset ``focal_synth_train`` / ``focal_synth_val``.
* ``datasets``: ``parse_dataset_arg("NAME=JSON:IMAGE_DIR")`` registers a user COCO dataset after
  checking it; ``check_num_classes``, ``require_builtin_datasets`` and ``CheckedDatasetMapper``
  turn data mistakes into errors that name the file, key and value.
"""
from .datasets import (
    CheckedDatasetMapper,
    DatasetError,
    DatasetFileNotFoundError,
    ImageReadError,
    check_num_classes,
    coco_2017_available,
    load_checked_coco_json,
    parse_dataset_arg,
    register_coco_dataset,
    require_builtin_datasets,
    validate_coco_dicts,
)
from .synthetic import (
    generate_synthetic_coco,
    make_tiny_coco,
    register_synthetic_dataset,
    synthetic_class_names,
)

__all__ = [
    "CheckedDatasetMapper",
    "DatasetError",
    "DatasetFileNotFoundError",
    "ImageReadError",
    "check_num_classes",
    "coco_2017_available",
    "generate_synthetic_coco",
    "load_checked_coco_json",
    "make_tiny_coco",
    "parse_dataset_arg",
    "register_coco_dataset",
    "register_synthetic_dataset",
    "require_builtin_datasets",
    "synthetic_class_names",
    "validate_coco_dicts",
]
