"""CPU threads for training on a shared machine.

With other CPU-bound processes running, PyTorch's default (one OpenMP thread per core) makes
every parallel region wait for a thread whose core is busy: a training step of the quick recipe
went from 0.084 s (1 thread) to 5.73 s (2 threads, spinning waits) on a 2-core VM with one other
busy process. Waiting threads that sleep at once (``OMP_WAIT_POLICY=PASSIVE``, train_net's
default until 2026-12-07) soften that, but cost every step on a free machine: the demo recipe
took 0.40 s per step with it and 0.26 s with OpenMP's own default (spin a little, then sleep),
in bfloat16 (docs/benchmarks.md). So instead:

* ``--threads N`` sets ``torch.set_num_threads(N)``; the default ``auto`` takes the CPUs this
  process may run on (``os.sched_getaffinity``) divided among this machine's training processes,
  at least 1. It does not subtract the load average: that lags by a minute (a run started right
  after another, or after ``make install``, would train on one core of a free machine).
  ``OMP_NUM_THREADS`` in the environment wins over ``auto`` (an explicit choice);
* with ``auto`` and more than one thread, :class:`StepThreadTuner` (a hook) times a few training
  steps at that count and at 1 thread and keeps the faster, and times again when steps become
  several times slower (another process took a core): the choice follows the machine as it is,
  like the convolution path does;
* with an explicit count, :class:`StepTimeWatch` (a hook) warns once when the step time jumps
  to several times the fastest steps seen, naming the likely cause (competing processes) and
  the fix (``--threads 1``).
"""
import logging
import os
import statistics
import time
from collections import deque
from typing import Optional

import torch
from detectron2.engine import HookBase

logger = logging.getLogger(__name__)

AUTO = "auto"


def available_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cpus() -> float:
    """CPUs kept busy by other processes: the 1-minute load average (0 if unknown)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0.0


def auto_threads(cpus: Optional[int] = None, processes: int = 1) -> int:
    """Threads per process: the CPUs this process may use, shared by ``processes``."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, processes))


def parse_threads(value) -> Optional[int]:
    """``--threads`` value: ``auto`` (None) or a positive int; ValueError otherwise."""
    if value is None or str(value).strip().lower() == AUTO:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--threads {value!r}: give a number of threads >= 1, or 'auto'")
    return n


def threads_chosen_automatically(value=AUTO, environ=None) -> bool:
    """Whether ``--threads value`` leaves the count to ``auto`` (no number given, no
    ``OMP_NUM_THREADS`` in ``environ``): then :class:`StepThreadTuner` may change it."""
    environ = os.environ if environ is None else environ
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    return parse_threads(value) is None and not (omp.isdigit() and int(omp))


def configure_threads(value=AUTO, processes: int = 1, environ=None) -> int:
    """Set torch's intra-op threads from ``--threads`` (see the module docstring); returns the
    number set and logs why."""
    environ = os.environ if environ is None else environ
    requested = parse_threads(value)
    if requested is not None:
        n, why = requested, "--threads"
    elif environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]):
        n, why = int(environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        cpus, load = available_cpus(), busy_cpus()
        n = auto_threads(cpus, processes)
        why = (f"auto: {cpus} CPUs, load average {load:.1f}"
               + (f", {processes} processes" if processes > 1 else ""))
    torch.set_num_threads(n)
    logger.info(f"CPU threads per process: {n} ({why}; OMP_WAIT_POLICY "
                f"{environ.get('OMP_WAIT_POLICY', 'unset')})")
    return n


def add_threads_argument(parser) -> None:
    parser.add_argument(
        "--threads", default=AUTO, metavar="N|auto",
        help="CPU threads per process (default auto: the CPUs this process may use, shared by "
             "the local training processes; OMP_NUM_THREADS, if set, wins over auto)")


class StepTimeWatch(HookBase):
    """Warn once when the median of the last ``window`` step times exceeds ``factor`` times the
    fastest such median seen (after ``warmup`` steps)."""

    def __init__(self, window: int = 20, factor: float = 3.0, warmup: int = 10,
                 clock=time.perf_counter):
        self.window, self.factor, self.warmup, self.clock = window, factor, warmup, clock
        self._times = deque(maxlen=window)
        self._best = None
        self._start = None
        self._steps = 0
        self.warned = False

    def before_step(self):
        self._start = self.clock()

    def after_step(self):
        if self._start is None:
            return
        elapsed = self.clock() - self._start
        self._steps += 1
        if self._steps <= self.warmup:
            return
        self._times.append(elapsed)
        if len(self._times) < self.window:
            return
        median = statistics.median(self._times)
        if self._best is None or median < self._best:
            self._best = median
        if not self.warned and median > self.factor * self._best:
            self.warned = True
            logger.warning(
                f"training steps became {median / self._best:.1f}x slower (median "
                f"{median:.3f} s over the last {self.window} steps, {self._best:.3f} s before), "
                f"with {torch.get_num_threads()} threads and load average {busy_cpus():.1f} on "
                f"{available_cpus()} CPUs: other processes probably compete for the cores. "
                "Train with fewer threads (--threads 1, or OMP_NUM_THREADS=1 with "
                "OMP_WAIT_POLICY=PASSIVE), or when the machine is free")


class StepThreadTuner(HookBase):
    """The training process's thread count, chosen by timing the training steps themselves:
    after ``warmup`` steps, ``trial`` steps at ``threads`` and ``trial`` at 1 thread; 1 thread
    is kept only when its median step takes less than ``margin`` of the other's (near-ties stay
    on ``threads``). When the median of the last ``window`` steps grows past ``retune_factor``
    times the median the choice was made on, both are timed again (at most ``max_retunes``
    times: a machine whose load keeps changing does not make every step a trial). Each choice
    is logged with both medians.

    While 1 thread is the choice, both are timed again every ``recheck_period`` steps (the
    other process may have ended; these rechecks do not count against ``max_retunes``). When
    training ends, the chosen count (or ``threads``, mid-trial) is set for what follows
    (evaluation).

    A step's time is detectron2's ``IterationTimer``'s for that iteration where the trainer
    records one (the step and the hooks' ``before_step``, not the other hooks' ``after_step``:
    a checkpoint or an evaluation does not count as a slow step), else this hook's own
    ``before_step`` to ``after_step``. ``set_threads`` and ``clock`` are for tests (defaults:
    ``torch.set_num_threads``, ``time.perf_counter``)."""

    def __init__(self, threads: int, warmup: int = 5, trial: int = 4, margin: float = 0.9,
                 window: int = 10, retune_factor: float = 2.0, max_retunes: int = 3,
                 recheck_period: int = 500, clock=time.perf_counter,
                 set_threads=torch.set_num_threads):
        if threads < 2:
            raise ValueError(f"StepThreadTuner needs threads >= 2 to choose from, not {threads}")
        if trial < 1 or window < 1:
            raise ValueError(f"StepThreadTuner: trial ({trial}) and window ({window}) must be >= 1")
        self.recheck_period = recheck_period
        self._since_choice = 0
        self.threads, self.warmup, self.trial, self.margin = threads, warmup, trial, margin
        self.window, self.retune_factor, self.max_retunes = window, retune_factor, max_retunes
        self.clock, self.set_threads = clock, set_threads
        self.chosen: Optional[int] = None  # None until the first trial ends
        self.retunes = 0
        self._queue = []  # thread counts of the trial steps still to run
        self._times = {}  # thread count -> step times of the current trial
        self._recent = deque(maxlen=window)
        self._chosen_median = None
        self._steps = 0
        self._start = None
        self._current = threads

    def _begin_trial(self):
        self._queue = [self.threads] * self.trial + [1] * self.trial
        self._times = {self.threads: [], 1: []}
        self._use(self._queue[0])

    def _use(self, n: int):
        if n != self._current:
            self.set_threads(n)
            self._current = n

    def before_step(self):
        self._steps += 1
        if self._steps == self.warmup + 1 and self.chosen is None:
            self._begin_trial()
        self._start = self.clock()

    def _step_seconds(self) -> float:
        """This iteration's IterationTimer time if the trainer's storage has it, else ours."""
        own = self.clock() - self._start
        storage = getattr(getattr(self, "trainer", None), "storage", None)
        if storage is None:
            return own
        try:
            value, iteration = storage.history("time").values()[-1]
        except (KeyError, IndexError):
            return own
        return value if iteration == storage.iter else own

    def after_step(self):
        if self._start is None:
            return
        elapsed = self._step_seconds()
        self._start = None
        if self._queue:
            self._times[self._queue.pop(0)].append(elapsed)
            if self._queue:
                self._use(self._queue[0])
            else:
                self._decide()
        elif self.chosen is not None:
            self._since_choice += 1
            if self.chosen == 1 and self._since_choice >= self.recheck_period:
                logger.info("CPU threads: 1 thread for %d steps: timing %d and 1 thread again",
                            self._since_choice, self.threads)
                self._begin_trial()
                return
            self._recent.append(elapsed)
            if (len(self._recent) == self.window and self.retunes < self.max_retunes
                    and statistics.median(self._recent) > self.retune_factor * self._chosen_median):
                self.retunes += 1
                logger.info(
                    "CPU threads: steps became %.1fx slower (median %.3f s over the last %d, "
                    "%.3f s when %d thread(s) were chosen): timing %d and 1 thread again",
                    statistics.median(self._recent) / self._chosen_median,
                    statistics.median(self._recent), self.window, self._chosen_median,
                    self.chosen, self.threads)
                self._begin_trial()

    def after_train(self):
        self._queue = []
        self._use(self.chosen or self.threads)

    def _decide(self):
        many = statistics.median(self._times[self.threads])
        one = statistics.median(self._times[1])
        self.chosen = 1 if one < self.margin * many else self.threads
        self._chosen_median = one if self.chosen == 1 else many
        self._recent.clear()
        self._since_choice = 0
        self._use(self.chosen)
        logger.info(
            "CPU threads: median step %.3f s at %d threads, %.3f s at 1 -> %d%s", many,
            self.threads, one, self.chosen,
            "" if self.chosen == self.threads else
            " (other processes probably compete for the cores; the choice is timed again if "
            "steps slow down)")


def thread_hook(value=AUTO, environ=None) -> HookBase:
    """The training hook for ``--threads value``: :class:`StepThreadTuner` where the count was
    chosen automatically and is above 1, :class:`StepTimeWatch` otherwise."""
    threads = torch.get_num_threads()
    if threads > 1 and threads_chosen_automatically(value, environ):
        return StepThreadTuner(threads)
    return StepTimeWatch()
