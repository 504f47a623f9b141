"""Hooks that keep a run reproducible and stop it cleanly.

Per-iteration seeds (``IterationSeeder``)
    At the start of every iteration the python, numpy and torch (CPU and CUDA) RNGs are seeded
    from (seed, rank, iteration), so model randomness (RPN / ROI sampling) does not depend on
    the history of the process: exact after ``--resume`` for every rank and whatever a hook
    (evaluation, PreciseBN) draws between steps.

Non-finite losses (``NonFiniteLossGuard``)
    After the forward pass and before backward / optimizer.step, a loss term that is NaN or
    infinite stops training with ``NonFiniteLossError`` ("iteration 12: loss_cls is nan ...");
    every rank stops at the same iteration.

Interruption (``GracefulInterrupt``)
    SIGTERM (as sent by schedulers, ``kill``, torchrun), Ctrl-C (SIGINT) or SIGHUP (the
    terminal closed; not under ``nohup``, which ignores it, as any ignored signal): the current
    iteration finishes, a checkpoint ``model_<iter>.pth`` is saved (unless the periodic
    checkpointer just saved this iteration), and the process exits with 128 + the signal
    (``INTERRUPTED_EXIT_CODE`` = 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP) through
    ``TrainingInterrupted`` (a ``SystemExit``); the tool prints one line with the command that
    continues (``focal_rpn.engine.interrupts``). ``--resume`` continues at the next iteration.
    A second signal of the same kind gets the previous behaviour at once (the previous
    checkpoint stays intact). A signal in the last iteration lets the run finish normally.
    SIGKILL cannot be caught: ``--resume`` continues from the last periodic checkpoint
    (SOLVER.CHECKPOINT_PERIOD).
"""
import logging
import math
import signal
import threading
from collections.abc import Mapping
from typing import Dict, Optional

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..data.seeding import derived_seed, seed_all
from .interrupts import note_signal

logger = logging.getLogger(__name__)

#: exit status of a run stopped by SIGTERM after saving its checkpoint (128 + 15, as a shell)
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the iteration and the terms."""


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a checkpoint; exits with
    ``INTERRUPTED_EXIT_CODE`` unless caught. ``checkpoint`` and ``iteration`` say what was
    saved."""

    def __init__(self, message, checkpoint=None, iteration=None, code=INTERRUPTED_EXIT_CODE,
                 signum=signal.SIGTERM):
        super().__init__(code)
        self.message = message
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.signum = signum

    def __str__(self):
        return self.message


def _unwrap(model):
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


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
    """On SIGTERM, SIGINT or SIGHUP: finish the iteration, save ``model_<iter>.pth``, exit with
    ``TrainingInterrupted`` (see the module docstring). Handlers are installed only while
    training, in the main thread; the previous handlers are restored after training."""

    def __init__(self, checkpointer, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self._received = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, frame):
        self._received = signum
        note_signal(signum)
        # a second signal of the same kind gets the previous behaviour (default: terminate)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def before_train(self):
        self._received = None
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup, a background job): left so
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
        signum = self._received or signal.SIGTERM
        message = (f"{signal.Signals(signum).name} received: stopped after iteration "
                   f"{iteration}, checkpoint {path}; continue with --resume")
        logger.warning(message)
        raise TrainingInterrupted(message, checkpoint=path, iteration=iteration,
                                  code=128 + int(signum), signum=signum)
