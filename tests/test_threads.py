"""StepThreadTuner: the thread count of a training process chosen by timing its own steps."""
import logging

import pytest

from focal_rpn.engine.threads import (
    StepThreadTuner,
    StepTimeWatch,
    thread_hook,
    threads_chosen_automatically,
)


class SimulatedSteps:
    """Runs a hook's before_step / after_step around steps whose duration depends on the
    thread count the hook last set: ``seconds(threads, step)``."""

    def __init__(self, seconds, threads=2):
        self.seconds, self.threads, self.now, self.step = seconds, threads, 0.0, 0
        self.history = []

    def set_threads(self, n):
        self.threads = n

    def clock(self):
        return self.now

    def run(self, hook, steps):
        for _ in range(steps):
            hook.before_step()
            self.now += self.seconds(self.threads, self.step)
            self.history.append(self.threads)
            hook.after_step()
            self.step += 1


def tuner(sim, **kw):
    return StepThreadTuner(2, clock=sim.clock, set_threads=sim.set_threads, **kw)


def test_free_machine_keeps_all_threads(caplog):
    sim = SimulatedSteps(lambda n, i: {2: 0.10, 1: 0.16}[n])
    hook = tuner(sim)
    with caplog.at_level(logging.INFO, logger="focal_rpn.engine.threads"):
        sim.run(hook, 40)
    assert hook.chosen == 2 and sim.threads == 2
    assert sim.history[5:9] == [2] * 4 and sim.history[9:13] == [1] * 4  # the trial
    assert sim.history[13:] == [2] * 27
    assert any("0.100 s at 2 threads, 0.160 s at 1 -> 2" in r.getMessage() for r in caplog.records)


def test_busy_cores_choose_one_thread():
    sim = SimulatedSteps(lambda n, i: {2: 1.5, 1: 0.3}[n])
    hook = tuner(sim)
    sim.run(hook, 30)
    assert hook.chosen == 1 and sim.threads == 1 and sim.history[-1] == 1


def test_near_tie_stays_on_all_threads():
    sim = SimulatedSteps(lambda n, i: {2: 0.100, 1: 0.095}[n])  # 1 thread 5% faster: noise
    hook = tuner(sim)
    sim.run(hook, 20)
    assert hook.chosen == 2


def test_slowdown_mid_run_times_again_and_switches():
    # free until step 30, then another process takes a core: 2 threads crawl
    sim = SimulatedSteps(lambda n, i: ({2: 0.1, 1: 0.16} if i < 30 else {2: 1.2, 1: 0.3})[n])
    hook = tuner(sim)
    sim.run(hook, 80)
    assert hook.retunes == 1 and hook.chosen == 1 and sim.history[-1] == 1


def test_retunes_are_bounded():
    # every other window slows down: at most max_retunes new trials
    sim = SimulatedSteps(lambda n, i: 0.1 * (1 + 20 * ((i // 10) % 2)))
    hook = tuner(sim, max_retunes=2)
    sim.run(hook, 300)
    assert hook.retunes == 2


def test_tuner_needs_a_choice():
    with pytest.raises(ValueError, match="threads >= 2"):
        StepThreadTuner(1)


def test_hook_follows_how_the_count_was_chosen(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert threads_chosen_automatically("auto", environ={})
        assert not threads_chosen_automatically("2", environ={})
        assert not threads_chosen_automatically("auto", environ={"OMP_NUM_THREADS": "2"})
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert isinstance(thread_hook("auto"), StepThreadTuner)
        assert isinstance(thread_hook("2"), StepTimeWatch)  # an explicit count is kept
        torch.set_num_threads(1)
        assert isinstance(thread_hook("auto"), StepTimeWatch)  # nothing to choose from
    finally:
        torch.set_num_threads(before)


def test_one_thread_is_timed_again_after_the_recheck_period():
    # busy until step 100, free after: the periodic recheck finds 2 threads faster again
    sim = SimulatedSteps(lambda n, i: ({2: 1.5, 1: 0.3} if i < 100 else {2: 0.1, 1: 0.16})[n])
    hook = tuner(sim, recheck_period=50)
    sim.run(hook, 200)
    assert hook.chosen == 2 and sim.history[-1] == 2
    assert hook.retunes == 0  # rechecks are not retunes


def test_training_that_ends_mid_trial_leaves_the_chosen_count():
    sim = SimulatedSteps(lambda n, i: {2: 0.1, 1: 0.16}[n])
    hook = tuner(sim)
    sim.run(hook, 10)  # inside the 1-thread half of the trial
    assert sim.threads == 1
    hook.after_train()
    assert sim.threads == 2  # evaluation after training gets every thread


def test_step_time_is_the_iteration_timers_where_the_trainer_records_it():
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    sim = SimulatedSteps(lambda n, i: 5.0)  # the hook's own clock: slow (hooks' after_step)
    hook = tuner(sim)
    with EventStorage(0) as storage:
        hook.trainer = SimpleNamespace(storage=storage)
        for i in range(20):
            storage.iter = i
            hook.before_step()
            sim.now += 5.0
            storage.put_scalar("time", {2: 0.1, 1: 0.3}[sim.threads])  # IterationTimer's
            hook.after_step()
    assert hook.chosen == 2 and hook._chosen_median == 0.1


def test_tuner_arguments_are_checked():
    with pytest.raises(ValueError, match="trial"):
        StepThreadTuner(2, trial=0)
