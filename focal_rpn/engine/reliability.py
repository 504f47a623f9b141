"""Reliability of training, in one import: atomic checkpoints, a non-finite loss guard, SIGTERM
handling, an exactly resumable data stream, and config errors that name the file and key.

Everything subclasses or calls detectron2; focal_rpn's ``Trainer`` wires it in. The code lives
in modules named for what they hold (each docstring says what it guarantees):

* ``focal_rpn.engine.config_merge``: ``ConfigError``, ``merge_config_file``, ``merge_config_opts``;
* ``focal_rpn.data.seeding``: ``derived_seed``, ``seed_all``, ``seeded_rng``;
* ``focal_rpn.data.resumable``: ``ResumableTrainingSampler``, ``SeededMapDataset``,
  ``ResumableTrainLoader``, ``build_resumable_train_loader`` (exact resume of the data stream);
* ``focal_rpn.engine.checkpoint``: ``AtomicCheckpointer``, ``NonFiniteWeightsError``,
  ``CheckpointLoadError``, ``atomic_write_text``, ``non_finite_tensors``;
* ``focal_rpn.engine.guards``: ``IterationSeeder``, ``NonFiniteLossGuard``,
  ``GracefulInterrupt``, ``NonFiniteLossError``, ``TrainingInterrupted``,
  ``INTERRUPTED_EXIT_CODE``.

This module re-exports those names, so ``from focal_rpn.engine.reliability import ...`` keeps
working.
"""
from ..data.resumable import (
    ResumableTrainingSampler,
    ResumableTrainLoader,
    SeededMapDataset,
    build_resumable_train_loader,
)
from ..data.seeding import derived_seed, seed_all, seeded_rng
from .checkpoint import (
    TMP_MARK,
    AtomicCheckpointer,
    CheckpointLoadError,
    NonFiniteWeightsError,
    atomic_write_text,
    non_finite_tensors,
)
from .config_merge import ConfigError, merge_config_file, merge_config_opts
from .guards import (
    INTERRUPTED_EXIT_CODE,
    GracefulInterrupt,
    IterationSeeder,
    NonFiniteLossError,
    NonFiniteLossGuard,
    TrainingInterrupted,
)

__all__ = [
    "INTERRUPTED_EXIT_CODE",
    "TMP_MARK",
    "AtomicCheckpointer",
    "CheckpointLoadError",
    "ConfigError",
    "GracefulInterrupt",
    "IterationSeeder",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "NonFiniteWeightsError",
    "ResumableTrainLoader",
    "ResumableTrainingSampler",
    "SeededMapDataset",
    "TrainingInterrupted",
    "atomic_write_text",
    "build_resumable_train_loader",
    "derived_seed",
    "merge_config_file",
    "merge_config_opts",
    "non_finite_tensors",
    "seed_all",
    "seeded_rng",
]
