"""Reliability of training: atomic checkpoints, a non-finite loss guard, SIGTERM handling,
an exactly resumable data stream, and config errors that name the file and key.

Everything here subclasses or calls detectron2; focal_rpn's ``Trainer`` wires it in.

Checkpoints (``AtomicCheckpointer``, a ``DetectionCheckpointer``)
    A checkpoint is written to a hidden temporary file in OUTPUT_DIR, fsync'ed, then renamed
    over its final name (``os.replace`` is atomic on POSIX); ``last_checkpoint`` is updated the
    same way, after the file. A kill at any moment (SIGKILL, power loss after fsync) leaves
    either the old or the new file, never a truncated one, and ``last_checkpoint`` never names
    a file that is not complete. A model with a NaN/inf parameter or buffer is never saved
    (``NonFiniteWeightsError`` names the tensor), so a good checkpoint is never replaced by a
    bad one.

    Loading: our ``.pth`` files hold only tensors and plain Python containers, and are read
    with ``torch.load(..., weights_only=True)`` (torch >= 2.6's default, made explicit so that
    older torch behaves the same). Nothing else is unpickled: a ``.pth`` that needs arbitrary
    classes is refused with ``CheckpointLoadError``, which says how to convert a trusted file.
    detectron2's model-zoo formats (``.pkl``, ``.pyth``) are read by detectron2 as before
    (``.pkl`` is a pickle by definition: use only files you trust, as with detectron2).

Non-finite losses (``NonFiniteLossGuard``)
    After the forward pass and before backward / optimizer.step, a loss term that is NaN or
    infinite stops training with ``NonFiniteLossError`` ("iteration 12: loss_cls is nan ...");
    every rank stops at the same iteration.

Interruption (``GracefulInterrupt``)
    SIGTERM (as sent by schedulers, ``kill``, torchrun): the current iteration finishes, a
    checkpoint ``model_<iter>.pth`` is saved (unless the periodic checkpointer just saved this
    iteration), and the process exits with code ``INTERRUPTED_EXIT_CODE`` (143 = 128 + SIGTERM)
    through ``TrainingInterrupted`` (a ``SystemExit``). ``--resume`` continues at the next
    iteration. A second SIGTERM kills at once (the previous checkpoint stays intact). A SIGTERM
    in the last iteration lets the run finish normally. SIGKILL cannot be caught: ``--resume``
    continues from the last periodic checkpoint (SOLVER.CHECKPOINT_PERIOD).

Exact resume (``ResumableTrainingSampler``, ``SeededMapDataset``, ``IterationSeeder``)
    With the same config, a run interrupted after iteration k and resumed with ``--resume``
    computes the same losses at iterations k + 1, ... as the uninterrupted run (bit for bit on
    CPU; tested). What makes it so:

    * data order: the sampler is detectron2's ``TrainingSampler`` stream (same seeded
      permutations, same rank sharding), restarted at stream position
      ``start_iter * SOLVER.IMS_PER_BATCH``; the trainer rebuilds the loader's iterator after
      ``resume_or_load`` knows ``start_iter``;
    * augmentation: each sample is mapped under RNGs seeded from (seed, stream position), so
      its random flip / resize do not depend on which worker mapped it or on process history;
    * model randomness (RPN / ROI sampling use the torch RNG): at the start of every iteration
      the python, numpy and torch (CPU and CUDA) RNGs are seeded from (seed, rank, iteration).
      This replaces saving RNG states: it is exact for every rank of a distributed run (only
      the main process writes checkpoints) and whatever a hook (evaluation, PreciseBN) draws
      between steps;
    * optimizer, LR scheduler, iteration, the model's buffers (FocalRetinaNet's EMA loss
      normaliser, BatchNorm statistics): detectron2's checkpoint; the stream seed (SEED, or the
      random seed drawn when SEED < 0): the trainer's state in the checkpoint.

    Not exact: with DATALOADER.ASPECT_RATIO_GROUPING (detectron2's default) and training images
    of both orientations (some wider than tall, some not), detectron2's
    ``AspectRatioGroupedDataset`` holds up to batch - 1 images per orientation in buffers that
    are not checkpointed, so the resumed stream regroups from position start_iter * batch
    (no image is lost for more than one pass; the order differs). With images of one
    orientation (or grouping off) it is exact. Samplers other than ``TrainingSampler``
    (RepeatFactor..., RandomSubset...) are detectron2's own and restart their stream on
    resume. On GPU, bit-exactness also needs deterministic kernels
    (``torch.use_deterministic_algorithms``); some CUDA ops (e.g. atomics in ROIAlign's
    backward) are not deterministic.

Config errors (``merge_config_file``, ``merge_config_opts``)
    A missing config file, an unknown key (with the closest known keys), a value of the wrong
    type or a YAML syntax error become ``ConfigError`` naming the file or option.
"""
import ast
import contextlib
import difflib
import glob
import itertools
import logging
import math
import operator
import os
import pickle
import random
import re
import signal
import threading
from collections.abc import Mapping
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    MapDataset,
    ToIterableDataset,
)
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DataParallel, DistributedDataParallel

logger = logging.getLogger(__name__)

#: exit status of a run stopped by SIGTERM after saving its checkpoint (128 + 15, as a shell)
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM
#: marks the temporary files of checkpoints being written (removed if a save fails)
TMP_MARK = ".tmp-"


# ----------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """A config file or option is invalid; the message names the file / option and the key."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration and the terms."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint would hold NaN/inf weights; the message names the tensor."""


class CheckpointLoadError(RuntimeError):
    """A checkpoint file cannot be loaded safely; the message names the file and why."""


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a checkpoint; exits with
    ``INTERRUPTED_EXIT_CODE`` unless caught. ``checkpoint`` and ``iteration`` say what was
    saved."""

    def __init__(self, message, checkpoint=None, iteration=None, code=INTERRUPTED_EXIT_CODE):
        super().__init__(code)
        self.message = message
        self.checkpoint = checkpoint
        self.iteration = iteration

    def __str__(self):
        return self.message


# ----------------------------------------------------------------------------- config


# yacs: "Non-existent config key: K" (merge_from_file), "Non-existent key: K" (merge_from_list)
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _config_keys(cfg, prefix="") -> List[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if isinstance(v, Mapping):
            keys += _config_keys(v, full + ".")
        else:
            keys.append(full)
    return keys


def _unknown_key_message(cfg, err: KeyError) -> Optional[str]:
    match = _UNKNOWN_KEY.search(str(err))
    if not match:
        return None
    key = match.group(1).strip("'\"")
    close = difflib.get_close_matches(key, _config_keys(cfg), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"unknown config key {key!r}{hint} (keys are detectron2's and focal_rpn's "
            "MODEL.FOCAL_RPN.* / MODEL.FOCAL_RETINANET.*)")


def merge_config_file(cfg, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)``; problems become a ``ConfigError`` naming the file
    (missing file, a missing ``_BASE_``, unknown key, wrong value type, bad YAML)."""
    import yaml

    if not os.path.isfile(config_file):
        where = os.path.abspath(config_file)
        raise ConfigError(f"config file {config_file!r} does not exist (looked for {where})")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        message = _unknown_key_message(cfg, e)
        if message is None:
            raise
        raise ConfigError(f"config file {config_file!r} (or a _BASE_ it inherits): "
                          f"{message}") from None
    except (ValueError, AssertionError, yaml.YAMLError) as e:  # type mismatch, _BASE_, syntax
        raise ConfigError(f"config file {config_file!r}: {e}") from None


def _int_as_float(cfg, key, value):
    """``value`` written as a float where ``key`` holds a float and ``value`` is an int literal
    ("SOLVER.TIME_BUDGET_MINUTES 5" over 12.5): yacs would refuse it as a type mismatch."""
    node = cfg
    for part in str(key).split("."):
        if not isinstance(node, dict) or part not in node:
            return value
        node = node[part]
    if not isinstance(node, float) or not isinstance(value, str):
        return value
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return repr(float(literal)) if type(literal) is int else value


def merge_config_opts(cfg, opts: List[str]) -> None:
    """``cfg.merge_from_list(opts)`` (command-line ``KEY VALUE`` pairs); problems become a
    ``ConfigError`` naming the option. An int given for a float key is taken as that float."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"config options must be KEY VALUE pairs; got an odd number "
                          f"({len(opts)}): {opts}")
    opts = [v if i % 2 == 0 else _int_as_float(cfg, opts[i - 1], v) for i, v in enumerate(opts)]
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:
        message = _unknown_key_message(cfg, e)
        if message is not None:
            raise ConfigError(f"command-line option: {message}") from None
        if isinstance(e, KeyError):
            raise
        raise ConfigError(f"command-line {_option_of(opts, e)}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"command-line {_option_of(opts, e)}: {e}") from None


def _option_of(opts: List[str], err: Exception) -> str:
    """"option KEY VALUE" of the pair that ``err`` (a yacs message naming the key) is about,
    else "options [all of them]"."""
    match = re.search(r"config key: (\S+)", str(err))
    if match:
        keys = opts[0::2]
        if match.group(1) in keys:
            i = keys.index(match.group(1))
            return f"option {opts[2 * i]} {opts[2 * i + 1]}"
    return f"options {opts}"


# ----------------------------------------------------------------------------- seeds


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer ``keys`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_all(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch's CPU and CUDA RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run the body with python / numpy / torch-CPU RNGs seeded by ``seed``, then restore them
    (the caller's RNG streams are not advanced)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ----------------------------------------------------------------------------- data stream


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's ``TrainingSampler`` stream that can start at a stream position, and yields
    ``(position, index)``: ``index`` into the dataset, ``position`` the place in the global
    stream (the same for a sample whichever rank or worker gets it).

    Rank r of W yields the positions ``start + r, start + r + W, ...`` of the stream
    ``shuffle(range(size)) + shuffle(range(size)) + ...`` seeded by ``seed``, exactly as
    TrainingSampler does for start 0. After i iterations with a total batch of B,
    ``set_start(i * B)`` continues the stream where the run stopped.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_start(self, start: int, seed: Optional[int] = None) -> None:
        if start < 0:
            raise ValueError(f"stream position must be >= 0, got {start}")
        self.start = int(start)
        if seed is not None:
            self._seed = int(seed)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        first = self.start + self._rank
        indices = itertools.islice(self._infinite_indices(), first, None, self._world_size)
        yield from zip(itertools.count(first, self._world_size), indices)


class SeededMapDataset(torchdata.Dataset):
    """``detectron2.data.MapDataset(dataset, map_func)`` indexed by ``(position, index)``
    (from ``ResumableTrainingSampler``): the sample ``index`` is mapped with python / numpy /
    torch-CPU RNGs seeded from (sampler seed, ``position``), so its augmentation is a function of
    its place in the stream, not of the worker or the process history.

    (When ``map_func`` returns None, detectron2's MapDataset retries other samples with its own
    RNG; focal_rpn's mappers raise instead.)
    """

    def __init__(self, dataset, map_func, sampler: ResumableTrainingSampler):
        if isinstance(dataset, list):
            dataset = DatasetFromList(dataset, copy=False)
        self._mapped = MapDataset(dataset, map_func)
        self.sampler = sampler

    def __len__(self):
        return len(self._mapped)

    def __getitem__(self, key):
        position, index = key
        with seeded_rng(derived_seed(self.sampler.seed, 0, position)):
            return self._mapped[index]


class ResumableStream:
    """The resumable parts of a train loader made by ``build_resumable_train_loader``."""

    def __init__(self, sampler: ResumableTrainingSampler, images_per_iter: int, grouped=None):
        self.sampler = sampler
        self.images_per_iter = images_per_iter
        self.grouped = grouped  # AspectRatioGroupedDataset or None

    def restart(self, iteration: int, seed: Optional[int] = None) -> bool:
        """Make the next ``iter(loader)`` start at training iteration ``iteration`` (stream
        position iteration x images_per_iter). Returns whether anything changed."""
        start = iteration * self.images_per_iter
        changed = start != self.sampler.start or (seed is not None and seed != self.sampler.seed)
        self.sampler.set_start(start, seed)
        if self.grouped is not None:
            for bucket in self.grouped._buckets:  # buffered images of the previous iterator
                del bucket[:]
        return changed


def build_resumable_train_loader(cfg, mapper, dataset=None):
    """detectron2's training loader for ``cfg`` (same dataset dicts, batch, grouping and
    workers, ``TrainingSampler`` order) with ``ResumableTrainingSampler`` and
    ``SeededMapDataset``. The returned loader has an attribute ``resumable_stream``
    (``ResumableStream``).

    Only for DATALOADER.SAMPLER_TRAIN "TrainingSampler" (the caller falls back to detectron2's
    loader otherwise).
    """
    from detectron2.data.build import _train_loader_from_config

    kwargs = _train_loader_from_config(cfg, mapper=mapper, dataset=dataset,
                                       sampler=TrainingSampler(1, seed=0))  # placeholder
    dicts = kwargs["dataset"]
    seed = cfg.SEED if cfg.SEED >= 0 else None  # None: a random seed shared by the ranks
    sampler = ResumableTrainingSampler(len(dicts), shuffle=True, seed=seed)
    data = SeededMapDataset(dicts, kwargs["mapper"], sampler)
    total = kwargs["total_batch_size"]
    world_size = comm.get_world_size()
    if total % world_size:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by the number of "
                          f"processes {world_size}: set it to a multiple of {world_size}")
    # The loader's own generator: torch draws a worker base seed when an iterator starts (for
    # the grouped loader: at its first batch, inside a training step); from the global RNG
    # that draw would shift the model's random stream of that step.
    generator = torch.Generator()
    generator.manual_seed(derived_seed(sampler.seed, 2))
    common = dict(num_workers=kwargs["num_workers"], worker_init_fn=worker_init_reset_seed,
                  generator=generator)
    if kwargs["aspect_ratio_grouping"]:
        # detectron2's build_batch_data_loader(aspect_ratio_grouping=True), with the generator
        items = torchdata.DataLoader(ToIterableDataset(data, sampler),
                                     collate_fn=operator.itemgetter(0), **common)
        loader = grouped = AspectRatioGroupedDataset(items, total // world_size)
    else:
        # a map-style loader: torch returns the batches in sampler order whatever the workers
        batches = torchdata.BatchSampler(sampler, total // world_size, drop_last=True)
        loader = torchdata.DataLoader(data, batch_sampler=batches,
                                      collate_fn=trivial_batch_collator, **common)
        grouped = None
    loader.resumable_stream = ResumableStream(sampler, total, grouped)
    return loader


# ----------------------------------------------------------------------------- checkpoints


def _unwrap(model):
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def non_finite_tensors(state_dict) -> List[Tuple[str, int, int]]:
    """``[(name, number of NaN/inf values, numel), ...]`` of the floating-point tensors of
    ``state_dict`` that are not finite everywhere."""
    bad = []
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point():
            finite = torch.isfinite(value.detach())
            if not bool(finite.all()):
                bad.append((name, int((~finite).sum()), value.numel()))
    return bad


def _fsync_path(path: str, directory=False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_path(directory, directory=True)


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and refuse non-finite weights, and whose
    loads unpickle nothing but tensors and containers (see the module docstring).

    ``save`` behaves as detectron2's (same file names, contents and ``last_checkpoint`` tag)
    for a local ``save_dir``; other storage (e.g. an iopath URL) is saved by detectron2
    unchanged, without the atomic rename.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._writing_tmp = False
        #: the ``iteration`` of the last ``save`` call (on every rank), or None
        self.last_saved_iteration = None

    @classmethod
    def from_checkpointer(cls, checkpointer: DetectionCheckpointer) -> "AtomicCheckpointer":
        """The same model, directory, save_to_disk and checkpointables, saved atomically."""
        return cls(checkpointer.model, checkpointer.save_dir,
                   save_to_disk=checkpointer.save_to_disk, **checkpointer.checkpointables)

    def _local(self) -> bool:
        return bool(self.save_dir) and "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        self.last_saved_iteration = kwargs.get("iteration")
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            tensor, count, numel = bad[0]
            more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
            previous = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise NonFiniteWeightsError(
                f"refusing to save checkpoint {basename!r}: {tensor!r} has {count} NaN/inf "
                f"values of {numel}{more}. The last checkpoint "
                f"{previous!r} is kept; resume from it, e.g. with a lower SOLVER.BASE_LR or "
                "SOLVER.CLIP_GRADIENTS.ENABLED True")
        if not self._local():
            super().save(name, **kwargs)
            return
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_stale_tmp_files()
        tmp_name = f".{name}{TMP_MARK}{os.getpid()}"
        tmp = os.path.join(self.save_dir, tmp_name + ".pth")
        final = os.path.join(self.save_dir, basename)
        self._writing_tmp = True
        try:
            super().save(tmp_name, **kwargs)  # detectron2 writes the file (and no tag, below)
            _fsync_path(tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        finally:
            self._writing_tmp = False
        _fsync_path(self.save_dir, directory=True)
        self.tag_last_checkpoint(basename)
        self.logger.info(f"Checkpoint {final} complete")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self._writing_tmp:  # the tag is written after the rename, by save
            return
        if not self._local():
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _remove_stale_tmp_files(self) -> None:
        """Temporary files left by a killed save of this folder are never complete."""
        for path in glob.glob(os.path.join(glob.escape(self.save_dir), f".*{TMP_MARK}*")):
            with contextlib.suppress(OSError):
                os.remove(path)
                self.logger.info(f"Removed {path}, left by an interrupted checkpoint save")

    def _load_file(self, filename: str):
        if filename.endswith((".pkl", ".pyth")):  # detectron2 / pycls model-zoo formats
            return super()._load_file(filename)
        try:
            with self.path_manager.open(filename, "rb") as f:
                loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointLoadError(
                f"checkpoint {filename!r} holds Python objects other than tensors and plain "
                f"containers, which focal_rpn does not unpickle (torch.load weights_only=True): "
                f"{str(e).splitlines()[0] if str(e) else e!r}. If you trust the file, convert it "
                f"once: python -c \"import torch; c = torch.load('{filename}', "
                "weights_only=False); torch.save({'model': c['model']}, 'weights.pth')\""
            ) from None
        except (RuntimeError, EOFError) as e:
            if not os.path.isfile(filename):
                raise
            others = sorted(os.path.basename(p) for p in glob.glob(
                os.path.join(glob.escape(os.path.dirname(filename)), "*.pth")) if p != filename)
            raise CheckpointLoadError(
                f"checkpoint {filename!r} is truncated or corrupt ({e}). Other checkpoints "
                f"in its folder: {others or 'none'}; to resume from one, write its file name "
                "into the folder's last_checkpoint file") from e
        if not isinstance(loaded, dict) or "model" not in loaded:
            loaded = {"model": loaded}
        return loaded


# ----------------------------------------------------------------------------- hooks


class IterationSeeder(HookBase):
    """Before every iteration, seed python / numpy / torch RNGs from (seed, rank, iteration),
    so that the randomness of an iteration does not depend on the history of the process."""

    def __init__(self, seed: Optional[int] = None):
        self.seed = seed  # None: the trainer's ``data_seed``, read every iteration

    def before_step(self):
        seed = self.trainer.data_seed if self.seed is None else self.seed
        seed_all(derived_seed(seed, 1, comm.get_rank(), self.trainer.iter))


def _describe(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class NonFiniteLossGuard(HookBase):
    """Stop training with ``NonFiniteLossError`` when a loss term of the model is NaN/inf.

    Checks the training outputs of the model (a forward hook on the unwrapped module), so the
    error comes before backward and ``optimizer.step`` and the weights stay finite. In a
    distributed run the ranks agree (all_gather) and all stop at the same iteration.
    """

    def __init__(self, checkpointer=None):
        self.checkpointer = checkpointer
        self._handle = None

    def before_train(self):
        self._handle = _unwrap(self.trainer.model).register_forward_hook(self._check)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _check(self, module, inputs, output):
        if not module.training or not isinstance(output, Mapping) or not output:
            return
        values = {k: v for k, v in output.items() if torch.is_tensor(v)}
        if not values:
            return
        stacked = torch.stack([v.detach().float().sum() for v in values.values()])
        local_ok = bool(torch.isfinite(stacked).all())
        if comm.get_world_size() > 1:
            bad_ranks = [r for r, ok in enumerate(comm.all_gather(local_ok)) if not ok]
        else:
            bad_ranks = [] if local_ok else [comm.get_rank()]
        if not bad_ranks:
            return
        iteration = self.trainer.iter
        if local_ok:
            raise NonFiniteLossError(
                f"iteration {iteration}: a loss became NaN/inf on rank(s) {bad_ranks}; "
                "training stopped before the optimizer step (see that rank's error)")
        numbers = {k: float(s) for k, s in zip(values, stacked.tolist())}
        bad = [f"{k} is {_describe(v)}" for k, v in numbers.items() if not math.isfinite(v)]
        good = [f"{k}={v:.4g}" for k, v in numbers.items() if math.isfinite(v)]
        where = f" on rank {comm.get_rank()}" if comm.get_world_size() > 1 else ""
        last = ""
        if self.checkpointer is not None and self.checkpointer.has_checkpoint():
            last = f"; the last checkpoint is {self.checkpointer.get_checkpoint_file()!r}"
        raise NonFiniteLossError(
            f"iteration {iteration}: {', '.join(bad)}{where}"
            + (f" (finite: {', '.join(good)})" if good else "")
            + ". Training stopped before the optimizer step, the weights are unchanged"
            + last + ". Try a lower SOLVER.BASE_LR, a longer SOLVER.WARMUP_ITERS or "
            "SOLVER.CLIP_GRADIENTS.ENABLED True, and resume with --resume")


class GracefulInterrupt(HookBase):
    """On SIGTERM: finish the iteration, save ``model_<iter>.pth``, exit with
    ``TrainingInterrupted`` (see the module docstring). Handlers are installed only while
    training, in the main thread; the previous handlers are restored after training."""

    def __init__(self, checkpointer, signals=(signal.SIGTERM,)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self._received = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, frame):
        self._received = signum
        # a second signal of the same kind gets the previous behaviour (default: terminate)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def before_train(self):
        self._received = None
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)

    def after_train(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def after_step(self):
        received = self._received is not None
        if comm.get_world_size() > 1:
            received = any(comm.all_gather(received))
        if not received:
            return
        iteration = self.trainer.iter
        if iteration + 1 >= self.trainer.max_iter:
            return  # the last iteration: the final checkpoint is saved, the run finishes
        name = f"model_{iteration:07d}"
        if self.checkpointer.last_saved_iteration != iteration:
            self.checkpointer.save(name, iteration=iteration)
        path = self.checkpointer.get_checkpoint_file() if comm.is_main_process() else name
        signame = signal.Signals(self._received).name if self._received else "a signal"
        message = (f"{signame} received: stopped after iteration {iteration}, checkpoint "
                   f"{path}; continue with --resume")
        logger.warning(message)
        raise TrainingInterrupted(message, checkpoint=path, iteration=iteration)
