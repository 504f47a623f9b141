"""SOLVER.TIME_BUDGET_MINUTES (focal_rpn.engine.budget): a run shrinks its schedule to what fits
in the budget. The clock is simulated (every training step "takes" a set number of seconds), so
the tests are exact and fast; the steps themselves are real training steps on tiny data, with
the hook's calibration shortened (estimate first after 10 iterations, then every 5)."""
import json
import math
import os
import types

import pytest
import torch
from test_train_net import MODEL_CONFIGS, read_metrics, tiny_data, train_net  # noqa: F401

from focal_rpn.engine import Trainer, budget

CONFIG = MODEL_CONFIGS["focal_retinanet"]
UPPER_BOUND = 400  # SOLVER.MAX_ITER: far more iterations than the budget allows
SCHEDULE = ["SOLVER.MAX_ITER", str(UPPER_BOUND), "SOLVER.STEPS", "(320, 360)",
            "SOLVER.WARMUP_ITERS", "4", "SOLVER.CHECKPOINT_PERIOD", "100000"]
CALIBRATION = dict(calibration_start=2, calibration_end=10, period=5)
BUDGET = ["SOLVER.TIME_BUDGET_MINUTES", "1"]  # 60 s: about 60 iterations of 1 s fit


class FakeClock:
    """perf_counter for the budget module: each training step advances it by step_s(iteration)."""

    def __init__(self, step_s):
        self.now = 0.0
        self.step_s = step_s
        self.total_steps = 0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    def install(step_s):
        fake = FakeClock(step_s)
        monkeypatch.setattr(budget, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
        run_step = Trainer.run_step

        def timed_step(self):
            run_step(self)
            fake.now += fake.step_s(self.iter)
            fake.total_steps += 1

        monkeypatch.setattr(Trainer, "run_step", timed_step)
        monkeypatch.setattr(Trainer, "writer_period", 1)  # lr of every iteration in metrics.json
        monkeypatch.setattr(Trainer, "time_budget_options", CALIBRATION)
        return fake

    return install


def iterations_and_lrs(output_dir):
    rows = read_metrics(output_dir)[0]
    return [r["iteration"] for r in rows], [r["lr"] for r in rows]


def test_run_ends_within_the_budget_and_the_schedule_keeps_its_shape(tiny_data, tmp_path, clock):
    fake = clock(lambda it: 1.0)
    results = train_net(CONFIG, tmp_path, *SCHEDULE, *BUDGET)
    iterations, lrs = iterations_and_lrs(tmp_path)
    n = len(iterations)
    assert iterations == list(range(n))
    assert fake.total_steps == n
    assert 0.9 * 60 <= n <= 60  # uses the budget, never more
    # LR steps (x0.1 each) at the config's fractions 320/400 and 360/400 of the shorter run
    base = max(lrs)
    peak = lrs.index(base)  # after the warm-up
    first_drop = next(i for i in range(peak, n) if lrs[i] < 0.5 * base)
    second_drop = next(i for i in range(peak, n) if lrs[i] < 0.05 * base)
    assert abs(first_drop - 0.8 * n) <= 2 and abs(second_drop - 0.9 * n) <= 2
    assert lrs[-1] == pytest.approx(0.01 * base, rel=1e-3)
    # the run finishes as a run of n iterations: final checkpoint, evaluation, budget state
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == n - 1
    assert ckpt["trainer"]["hooks"]["TimeBudget"]["planned_max_iter"] == n
    assert [r["iteration"] for r in read_metrics(tmp_path)[1]] == [n]
    assert math.isfinite(results["bbox"]["AP"])
    with open(tmp_path / "run_stats.json") as f:
        assert json.load(f)["iterations"] == n


def test_budget_spent_early_stops_the_run(tiny_data, tmp_path, clock):
    # steps slow down from 1 s to 5 s after the estimates froze: the hard stop ends the run
    def step_s(it):
        return 1.0 if it < 45 else 5.0

    clock(step_s)
    train_net(CONFIG, tmp_path, *SCHEDULE, *BUDGET)
    iterations, _ = iterations_and_lrs(tmp_path)
    spent = sum(step_s(it) for it in iterations)
    # the budget is checked every 5 iterations: at most one check period past it
    assert 60 <= spent <= 60 + 5 * 5.0
    assert len(iterations) < 55  # the estimate at 1 s per step planned more


def test_resume_keeps_the_planned_length(tiny_data, tmp_path, clock):
    clock(lambda it: 1.0)
    opts = SCHEDULE[:-1] + ["40"] + BUDGET  # a checkpoint every 40 iterations
    train_net(CONFIG, tmp_path, *opts)
    saved = torch.load(tmp_path / "model_0000039.pth", map_location="cpu", weights_only=False)
    planned = saved["trainer"]["hooks"]["TimeBudget"]["planned_max_iter"]
    assert 40 < planned < UPPER_BOUND
    # continue from the checkpoint at iteration 39 (as after a crash there)
    os.remove(tmp_path / "model_final.pth")
    with open(tmp_path / "last_checkpoint", "w") as f:
        f.write("model_0000039.pth")
    clock(lambda it: 0.01)  # a fast machine now: the budget would allow all 400 iterations
    train_net(CONFIG, tmp_path, *opts, flags=["--resume"])
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == planned - 1


def test_without_a_budget_the_schedule_is_detectrons(tiny_data, tmp_path, clock):
    clock(lambda it: 5.0)
    train_net(CONFIG, tmp_path, "SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "(15,)")
    iterations, lrs = iterations_and_lrs(tmp_path)
    assert iterations == list(range(20))  # 100 s of steps, no budget: all of them


@pytest.mark.parametrize("value", ["-1.0", "nan"])
def test_a_bad_budget_names_the_key(tiny_data, tmp_path, value):
    with pytest.raises(ValueError, match="SOLVER.TIME_BUDGET_MINUTES") as err:
        train_net(CONFIG, tmp_path, "SOLVER.TIME_BUDGET_MINUTES", value)
    assert value in str(err.value)


def test_the_budget_needs_a_scheduler_whose_length_can_change():
    with pytest.raises(ValueError, match="LRMultiplier"):
        budget.scheduler_with_max_iter(torch.optim.lr_scheduler.StepLR(
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), step_size=1))


def test_an_int_on_the_command_line_is_taken_for_a_float_key():
    """yacs refuses an int for a float key ("SOLVER.TIME_BUDGET_MINUTES 5" over the quick
    config's 12.5); train_net's option merge takes it as the float."""
    from focal_rpn.engine import build_argument_parser, build_config

    args = build_argument_parser().parse_args(
        ["--config-file", os.path.join(os.path.dirname(__file__), "..", "configs", CONFIG),
         "SOLVER.TIME_BUDGET_MINUTES", "5", "SOLVER.BASE_LR", "1", "SOLVER.MAX_ITER", "7"])
    cfg = build_config(args)
    assert cfg.SOLVER.TIME_BUDGET_MINUTES == 5.0 and isinstance(cfg.SOLVER.TIME_BUDGET_MINUTES, float)
    assert cfg.SOLVER.BASE_LR == 1.0 and cfg.SOLVER.MAX_ITER == 7
