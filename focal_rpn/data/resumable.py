"""An exactly resumable training data stream: ``build_resumable_train_loader``.

With the same config, a run interrupted after iteration k and resumed with ``--resume`` computes
the same losses at iterations k + 1, ... as the uninterrupted run (bit for bit on CPU; tested).
The data side of that:

* data order: ``ResumableTrainingSampler`` is detectron2's ``TrainingSampler`` stream (same
  seeded permutations, same rank sharding), started at stream position
  ``start_iter * SOLVER.IMS_PER_BATCH``. The loader starts its stream at the first batch drawn
  (not at ``iter(loader)``), so the trainer only tells it the position once
  ``resume_or_load`` knows ``start_iter`` (``ResumableTrainLoader.restart``), however early
  detectron2 calls ``iter`` on it;
* augmentation: each sample is mapped under RNGs seeded from (seed, stream position)
  (``SeededMapDataset``), so its random flip / resize do not depend on which worker mapped it or
  on process history.

The model side (per-iteration RNG seeds) is ``focal_rpn.engine.guards.IterationSeeder``; the
optimizer, LR scheduler, iteration and buffers are detectron2's checkpoint; the stream seed
(SEED, or the random seed drawn when SEED < 0) is the trainer's state in the checkpoint.

Not exact: with DATALOADER.ASPECT_RATIO_GROUPING (detectron2's default) and training images of
both orientations (some wider than tall, some not), detectron2's ``AspectRatioGroupedDataset``
holds up to batch - 1 images per orientation in buffers that are not checkpointed, so the
resumed stream regroups from position start_iter * batch (no image is lost for more than one
pass; the order differs). With images of one orientation (or grouping off) it is exact.
Samplers other than ``TrainingSampler`` (RepeatFactor..., RandomSubset...) are detectron2's own
and restart their stream on resume. On GPU, bit-exactness also needs deterministic kernels
(``torch.use_deterministic_algorithms``); some CUDA ops (e.g. atomics in ROIAlign's backward)
are not deterministic.
"""
import itertools
import operator
import os
import signal
import threading
from typing import Iterator, Optional, Tuple

import torch
import torch.utils.data as torchdata
from detectron2.data import build_detection_train_loader
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    MapDataset,
    ToIterableDataset,
)
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from .seeding import derived_seed, seeded_rng


class ResumableTrainingSampler(torchdata.Sampler):
    """detectron2's ``TrainingSampler`` stream that can start at a stream position, and yields
    ``(position, index)``: ``index`` into the dataset, ``position`` the place in the global
    stream (the same for a sample whichever rank or worker gets it).

    Rank r of W yields the positions ``start + r, start + r + W, ...`` of the stream
    ``shuffle(range(size)) + shuffle(range(size)) + ...`` seeded by ``seed``, exactly as
    TrainingSampler does for start 0 (it iterates a TrainingSampler of this rank and skips the
    first ``start / W`` of its indices). After i iterations with a total batch of B,
    ``set_start(i * B)`` continues the stream where the run stopped.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        if size <= 0:
            raise ValueError(f"the training set is empty (size {size})")
        self.size = int(size)
        self.shuffle = shuffle
        # TrainingSampler's own default: a random seed shared by the ranks
        self._stream_seed = int(comm.shared_random_seed() if seed is None else seed)
        self.start = 0

    @property
    def seed(self) -> int:
        return self._stream_seed

    def set_start(self, start: int, seed: Optional[int] = None) -> None:
        if start < 0:
            raise ValueError(f"stream position must be >= 0, got {start}")
        world_size = comm.get_world_size()
        if start % world_size:
            raise ValueError(f"stream position {start} is not a multiple of the number of "
                             f"processes {world_size} (it is iterations x SOLVER.IMS_PER_BATCH)")
        self.start = int(start)
        if seed is not None:
            self._stream_seed = int(seed)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        world_size = comm.get_world_size()
        first = self.start + comm.get_rank()
        this_rank = TrainingSampler(self.size, shuffle=self.shuffle, seed=self._stream_seed)
        indices = itertools.islice(iter(this_rank), self.start // world_size, None)
        yield from zip(itertools.count(first, world_size), indices)


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


class _FirstBatchStartsTheStream:
    """Iterator of ``ResumableTrainLoader``: makes the torch loaders at its first ``next``."""

    def __init__(self, loader: "ResumableTrainLoader"):
        self._loader = loader
        self._batches = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None:
            self._batches = self._loader._start_stream()
        return next(self._batches)


class ResumableTrainLoader:
    """Iterable of training batches (lists of ``images_per_iter / W`` mapped dicts), as
    detectron2's ``build_batch_data_loader``, whose stream starts at the first batch drawn.

    ``restart(iteration, seed)`` sets where (and with which seed) the next stream starts; the
    torch DataLoader, its workers and (with aspect-ratio grouping) the grouping buffers are made
    anew when a stream starts. The torch loader draws its workers' base seed from a generator of
    its own, seeded from the stream seed: from the global RNG, that draw (inside a training
    step) would shift the model's random stream of that step.
    """

    def __init__(self, data: SeededMapDataset, sampler: ResumableTrainingSampler,
                 images_per_iter: int, *, aspect_ratio_grouping: bool, num_workers: int):
        self.data = data
        self.sampler = sampler
        self.images_per_iter = images_per_iter
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.batch_size = images_per_iter // comm.get_world_size()

    @property
    def resumable_stream(self) -> "ResumableTrainLoader":
        """This loader (the trainer looks for this attribute on its data loader)."""
        return self

    def __iter__(self):
        return _FirstBatchStartsTheStream(self)

    def restart(self, iteration: int, seed: Optional[int] = None) -> bool:
        """Make the next stream start at training iteration ``iteration`` (stream position
        iteration x images_per_iter). Returns whether anything changed."""
        start = iteration * self.images_per_iter
        changed = start != self.sampler.start or (seed is not None and seed != self.sampler.seed)
        self.sampler.set_start(start, seed)
        return changed

    def _start_stream(self):
        generator = torch.Generator()
        generator.manual_seed(derived_seed(self.sampler.seed, 2))
        common = dict(num_workers=self.num_workers, worker_init_fn=_worker_init,
                      generator=generator)
        if self.aspect_ratio_grouping:
            items = torchdata.DataLoader(ToIterableDataset(self.data, self.sampler),
                                         collate_fn=operator.itemgetter(0), **common)
            return iter(AspectRatioGroupedDataset(items, self.batch_size))
        # a map-style loader: torch returns the batches in sampler order whatever the workers
        batches = torchdata.BatchSampler(self.sampler, self.batch_size, drop_last=True)
        return iter(torchdata.DataLoader(self.data, batch_sampler=batches,
                                         collate_fn=trivial_batch_collator, **common))


def _end_on_the_parents_sigterm(parent: int) -> None:
    """Runs in a worker's thread: SIGTERM from the parent process (the DataLoader's shutdown,
    Python's exit) ends the worker; from anyone else (a terminal or a job scheduler signalling
    the whole process group) it is left to the parent, which saves first."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)


def _worker_init(worker_id: int) -> None:
    """detectron2's worker seeding, and the worker's side of a signal sent to the whole
    process group (a terminal's Ctrl-C or hang-up, a job scheduler's SIGTERM), so that the main process
    can finish its step and save (engine.guards.GracefulInterrupt) and then shut the workers
    down:

    * SIGINT and SIGHUP (a closed terminal) are ignored;
    * SIGTERM ends the worker only when its parent sent it. Killed by the group's signal, the
      worker would make torch raise "DataLoader worker is killed by signal" in the main
      process at once, mid-step. (Ignoring SIGTERM altogether is no option: Python's exit ends
      a worker that does not stop with SIGTERM, and would then wait for it forever.) The
      sender is known from ``sigwaitinfo``: SIGTERM is blocked in the worker and taken by one
      thread. A worker also ends with its parent (torch's watchdog).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any other thread
    threading.Thread(target=_end_on_the_parents_sigterm, args=(parent,), daemon=True,
                     name="focal_rpn-sigterm").start()
    worker_init_reset_seed(worker_id)


def build_resumable_train_loader(cfg, mapper, dataset=None) -> ResumableTrainLoader:
    """detectron2's training loader for ``cfg`` (same dataset dicts, batch, grouping and
    workers, ``TrainingSampler`` order) with ``ResumableTrainingSampler`` and
    ``SeededMapDataset``: a ``ResumableTrainLoader``.

    The dataset dicts, mapper, batch, grouping and workers come from
    ``build_detection_train_loader.from_config`` (detectron2's own reading of the config).
    Only for DATALOADER.SAMPLER_TRAIN "TrainingSampler" (the caller falls back to detectron2's
    loader otherwise).
    """
    # The sampler argument is a placeholder so that from_config builds none of its own (that
    # would draw a shared random seed, a collective call, when SEED < 0).
    kwargs = build_detection_train_loader.from_config(
        cfg, mapper=mapper, dataset=dataset, sampler=TrainingSampler(1, seed=0))
    dicts = kwargs["dataset"]
    seed = cfg.SEED if cfg.SEED >= 0 else None  # None: a random seed shared by the ranks
    sampler = ResumableTrainingSampler(len(dicts), shuffle=True, seed=seed)
    total = kwargs["total_batch_size"]
    world_size = comm.get_world_size()
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by the number of "
                         f"processes {world_size}: set it to a multiple of {world_size}")
    return ResumableTrainLoader(
        SeededMapDataset(dicts, kwargs["mapper"], sampler), sampler, total,
        aspect_ratio_grouping=kwargs["aspect_ratio_grouping"], num_workers=kwargs["num_workers"])
