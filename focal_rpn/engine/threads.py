"""CPU threads for training on a shared machine.

With other CPU-bound processes running, PyTorch's default (one OpenMP thread per core, and
OpenMP threads that spin while they wait) makes every parallel region wait for a thread whose
core is busy: a training step of the quick recipe went from 0.084 s (1 thread) to 5.73 s
(2 threads, default spinning) on a 2-core VM with one other busy process. So:

* ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning) is set by
  ``tools/train_net.py`` before torch loads OpenMP, unless the variable is already set;
* ``--threads N`` sets ``torch.set_num_threads(N)``; the default ``auto`` takes the CPUs this
  process may run on (``os.sched_getaffinity``) divided among this machine's training processes,
  at least 1. It does not subtract the load average: that lags by a minute (a run started right
  after another, or after ``make install``, would train on one core of a free machine), and with
  passive waiting two threads were no slower than one on a loaded machine (docs/internals.md).
  ``OMP_NUM_THREADS`` in the environment wins over ``auto`` (an explicit choice);
* ``StepTimeWatch`` (a hook) warns once when the step time jumps to several times the fastest
  steps seen, naming the likely cause (competing processes) and the fix (``--threads``).
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
