"""Training within a wall-time budget: ``SOLVER.TIME_BUDGET_MINUTES``.

A schedule in iterations (MAX_ITER, STEPS, WARMUP_ITERS) takes very different times on
different machines (docs/training.md's "Training for a time, not a number of iterations" has
measured step times). With a budget the schedule keeps its *shape* and shrinks to what fits in
the time:

* ``SOLVER.MAX_ITER`` becomes an upper bound. After ``calibration_end`` iterations the hook
  measures the mean time per iteration (hooks and data loading included, the first
  ``calibration_start`` iterations left out) and sets the run's last iteration to what fits in
  the rest of the budget. It measures again every ``period`` iterations until
  ``freeze_fraction`` of the run, then keeps that length.
* The LR schedule follows: detectron2's scheduler evaluates its multiplier at
  ``iteration / max_iter``, so with max_iter lowered, STEPS (and warm-up) move to the same
  *fractions* of the shorter run (steps at 720 and 840 of 900 become 80% and 93% of it).
* A hard stop: once the budget is spent, the next check ends the run after that iteration,
  whatever the estimate said.
* The final checkpoint, evaluation and pictures run after the last iteration as usual; they
  are not part of the budget. A run makes at least ``calibration_end`` iterations.

With several processes every decision is the minimum over the ranks (``comm.all_gather``), so
all ranks stop at the same iteration. The length chosen is logged, with the options that repeat
the run without a budget (up to an iteration of rounding in where the steps fall), and saved in
checkpoints as this hook's state (detectron2 saves every hook's ``state_dict`` with the
trainer's): ``--resume`` keeps it.
"""
import logging
import math
import time
from typing import Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..d2_adapter import set_metric_printer_length, set_scheduler_length, scheduler_length_settable

logger = logging.getLogger(__name__)

CONFIG_KEY = "SOLVER.TIME_BUDGET_MINUTES"


def check_time_budget(value) -> Optional[float]:
    """The budget in seconds, or None for ``None`` / ``0`` (no budget); ValueError names the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{CONFIG_KEY} = {value!r} is not allowed: "
                         "a number of minutes >= 0 (0 or None: no budget)")
    return float(value) * 60.0 if value > 0 else None


def scaled_schedule(cfg, max_iter: int) -> dict:
    """The configured schedule's shape at ``max_iter`` iterations: {"max_iter", "steps",
    "warmup_iters"}, STEPS and WARMUP_ITERS at the same fractions of the run as in ``cfg``."""
    scale = max_iter / cfg.SOLVER.MAX_ITER
    return {
        "max_iter": int(max_iter),
        "steps": tuple(int(round(s * scale)) for s in cfg.SOLVER.STEPS),
        "warmup_iters": int(round(cfg.SOLVER.WARMUP_ITERS * scale)),
    }


def schedule_options(schedule: dict) -> list:
    """Config options that train ``schedule`` (from :func:`scaled_schedule`) without a budget."""
    return ["SOLVER.MAX_ITER", str(schedule["max_iter"]), "SOLVER.STEPS", str(tuple(schedule["steps"])),
            "SOLVER.WARMUP_ITERS", str(schedule["warmup_iters"]), CONFIG_KEY, "0"]


def scheduler_with_max_iter(scheduler):
    """``scheduler`` if its length can be changed (detectron2's LRMultiplier), else ValueError."""
    if not scheduler_length_settable(scheduler):
        raise ValueError(
            f"{CONFIG_KEY} needs detectron2's LRMultiplier LR scheduler (SOLVER.LR_SCHEDULER_NAME "
            f"WarmupMultiStepLR or WarmupCosineLR); got {type(scheduler).__name__}"
        )
    return scheduler


class TimeBudget(HookBase):
    """Shortens the run to the iterations that fit in ``budget_s`` seconds of training.

    Args:
        budget_s: seconds from the start of training (``before_train``) to the last iteration.
        calibration_start / calibration_end: the step time is measured from the end of
            iteration ``calibration_start`` (of this run) on, first at ``calibration_end``.
        period: iterations between two checks (estimate, hard stop).
        freeze_fraction: no new estimate once this fraction of the run is done (before the
            usual first LR step at 80%), so the steps stay where they were.
        safety: fraction of the remaining time planned for (the rest absorbs jitter).
    """

    def __init__(self, budget_s: float, calibration_start: int = 10, calibration_end: int = 60,
                 period: int = 20, freeze_fraction: float = 0.75, safety: float = 0.97):
        assert budget_s > 0 and 0 < calibration_start < calibration_end and period > 0
        self.budget_s = float(budget_s)
        self.calibration_start = calibration_start
        self.calibration_end = calibration_end
        self.period = period
        self.freeze_fraction = freeze_fraction
        self.safety = safety
        #: the run's length once decided: set by the hook, or by a resumed checkpoint
        self.planned_max_iter: Optional[int] = None
        #: hooks and metric writers that keep a copy of the run's length (detectron2's
        #: PeriodicCheckpointer: ``max_iter``; CommonMetricPrinter: its ETA), set by the Trainer
        self.checkpointers = []
        self.metric_printers = []
        self._frozen = False

    # -- state kept in checkpoints (detectron2's TrainerBase.state_dict saves it under
    #    "hooks" / "TimeBudget" and gives it back to this hook on --resume)

    def state_dict(self):
        return {"planned_max_iter": self.planned_max_iter}

    def load_state_dict(self, state):
        # a resumed plan is kept as it is (before_train freezes it)
        self.planned_max_iter = state.get("planned_max_iter")

    # -- hook

    def before_train(self):
        self._t0 = time.perf_counter()
        self._t_calibration = None
        self._start_iter = self.trainer.iter
        if self.planned_max_iter is not None:  # resumed: keep the length (and so the LR steps)
            self._frozen = True
            self._set_max_iter(self.planned_max_iter)
            logger.info("Time budget: resumed run keeps its length of %d iterations",
                        self.planned_max_iter)

    def after_step(self):
        done = self.trainer.iter - self._start_iter + 1
        if done == self.calibration_start:
            self._t_calibration = time.perf_counter()
        if done < self.calibration_end or done % self.period:
            return
        now = time.perf_counter()
        elapsed = now - self._t0
        proposal = self.trainer.max_iter
        was_frozen = self._frozen
        if self.trainer.iter + 1 >= self.freeze_fraction * self.trainer.max_iter:
            self._frozen = True
        spent = elapsed >= self.budget_s
        if spent:
            proposal = self.trainer.iter + 1  # budget spent: this iteration is the last one
        elif not self._frozen and self._t_calibration is not None:
            step_s = (now - self._t_calibration) / (done - self.calibration_start)
            fits = int((self.budget_s - elapsed) * self.safety / step_s)
            proposal = min(self.trainer.cfg.SOLVER.MAX_ITER, self.trainer.iter + 1 + fits)
            self._step_s = step_s
        if comm.get_world_size() > 1:
            proposal = min(comm.all_gather(proposal))
        first = self.planned_max_iter is None
        changed = proposal != self.trainer.max_iter
        if changed:
            self._set_max_iter(proposal)
        # logged: the first plan, the final one (estimates stop) and a stop forced by the
        # budget; not the small corrections in between (detectron2's console shows DEBUG)
        if first:
            self._log("training ends at", elapsed)
        elif changed and spent:
            self._log("budget spent: training ends at", elapsed)
        elif self._frozen and not was_frozen:
            self._log("final length", elapsed)
        self.planned_max_iter = self.trainer.max_iter

    def _set_max_iter(self, max_iter: int):
        """Make ``max_iter`` the run's length for the trainer, the LR schedule, the final
        checkpoint and the console's ETA (detectron2's PeriodicCheckpointer and
        CommonMetricPrinter keep copies of their own)."""
        self.trainer.max_iter = max_iter
        set_scheduler_length(scheduler_with_max_iter(self.trainer.scheduler), max_iter)
        for checkpointer in self.checkpointers:
            checkpointer.max_iter = max_iter
        for printer in self.metric_printers:
            set_metric_printer_length(printer, max_iter)

    def _log(self, what: str, elapsed: float):
        schedule = scaled_schedule(self.trainer.cfg, self.trainer.max_iter)
        step_s = getattr(self, "_step_s", float("nan"))
        logger.info(
            "Time budget %.1f min: %s %d iterations (%.3f s per iteration, %.0f s spent); "
            "without a budget (up to an iteration of rounding): "
            "SOLVER.MAX_ITER %d SOLVER.STEPS \"%s\" SOLVER.WARMUP_ITERS %d %s 0",
            self.budget_s / 60, what, self.trainer.max_iter,
            step_s, elapsed, self.trainer.max_iter, schedule["steps"], schedule["warmup_iters"],
            CONFIG_KEY,
        )
