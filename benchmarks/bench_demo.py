"""``make demo``'s training step, end to end: tools/train_net.py on the embedded recipe
(configs/quick_retinanet_R18.yaml), today's default against the default before 2026-12-07, each
in its own process (the OpenMP wait policy is read when a process loads OpenMP), alternating.

* ours: train_net as it is (``MODEL.FOCAL_RETINANET.CPU_BF16`` "auto": bfloat16 where the CPU
  has it natively; OpenMP's own wait policy, StepThreadTuner);
* baseline: the same run with the settings it had before: ``MODEL.FOCAL_RETINANET.CPU_BF16
  False``, ``OMP_WAIT_POLICY=PASSIVE`` and the thread count fixed at what ``auto`` gives
  (``--threads N``: no thread trial, as before). It runs today's code otherwise, so it already
  has what needs no setting (the head's fused per-level BatchNorm, fused AdamW on CPU): the
  ratio understates the gain over the code of before 2026-12-07.

Each run trains ``--iters`` iterations (no time budget, no evaluation) into a temporary folder;
its step time is the median of detectron2's per-iteration ``time`` in metrics.json after the
first ``SKIP`` iterations (warm-up, the path timing of the convolutions and the thread trial):
what the log's ``time:`` shows, detectron2's IterationTimer (the step with its data loading
and the hooks' ``before_step``; each entry a median over 20 iterations). Rows report the median over
rounds of those medians, and their ratio.

    .venv/bin/python benchmarks/bench_demo.py [--iters 160] [--rounds 2] [KEY VALUE ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = os.path.join(REPO, "configs", "quick_retinanet_R18.yaml")
SKIP = 40

#: name -> (extra config options, environment changes); None removes a variable
SETTINGS = {
    "ours": ([], {"OMP_WAIT_POLICY": None}),
    "baseline": (["MODEL.FOCAL_RETINANET.CPU_BF16", "False"], {"OMP_WAIT_POLICY": "PASSIVE"}),
}
BASELINE_NAME = "train_net before 2026-12-07 (fp32, OMP_WAIT_POLICY=PASSIVE)"


def step_seconds(metrics_json: str, skip: int = SKIP) -> float:
    """Median of the ``time`` entries of iterations >= ``skip`` in a detectron2 metrics.json."""
    times = []
    with open(metrics_json) as f:
        for line in f:
            row = json.loads(line)
            if "time" in row and row.get("iteration", 0) >= skip:
                times.append(row["time"])
    if not times:
        raise RuntimeError(f"{metrics_json}: no 'time' entries past iteration {skip}")
    return statistics.median(times)


def run_once(name: str, iters: int, threads=None, quick: bool = False, settings=None) -> float:
    opts, env_changes = (settings or SETTINGS)[name]
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as out:
        if name == "baseline" and threads is None:
            from focal_rpn.engine.threads import auto_threads

            threads = auto_threads()
        cmd = [sys.executable, TRAIN_NET, "--config-file", CONFIG, "--num-gpus", "1",
               *(["--threads", str(threads)] if threads else []),
               "SOLVER.TIME_BUDGET_MINUTES", "0", "SOLVER.MAX_ITER", str(iters),
               "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", str(10 * iters),
               "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *opts, "OUTPUT_DIR", out]
        if quick:
            cmd += ["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                    "INPUT.MAX_SIZE_TRAIN", "128"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_demo: {name} run failed:\n{proc.stderr[-3000:]}")
        return step_seconds(os.path.join(out, "metrics.json"), skip=min(SKIP, iters // 2))


def run(iters: int = 160, rounds: int = 2, quick: bool = False, ours_opts=()):
    """One row: {case, ours_ms, baseline, baseline_ms, ratio, ...}, settings alternating.
    ``ours_opts``: config options added to ours (to try a change of the recipe)."""
    settings = dict(SETTINGS, ours=(list(SETTINGS["ours"][0]) + list(ours_opts),
                                    SETTINGS["ours"][1]))
    times = {name: [] for name in settings}
    for r in range(rounds):
        order = list(settings) if r % 2 == 0 else list(settings)[::-1]
        for name in order:
            times[name].append(run_once(name, iters, quick=quick, settings=settings))
    ours, base = (statistics.median(times[n]) * 1e3 for n in ("ours", "baseline"))
    return [{
        "case": "demo train_net step", "ours_ms": ours, "baseline": BASELINE_NAME,
        "baseline_ms": base, "ratio": ours / base, "ours_peak_mb": float("nan"),
        "baseline_peak_mb": float("nan"), "ours_runs_ms": [t * 1e3 for t in times["ours"]],
        "baseline_runs_ms": [t * 1e3 for t in times["baseline"]],
    }]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny images: a smoke test")
    parser.add_argument("ours_opts", nargs="*", help="KEY VALUE config options for ours only")
    args = parser.parse_args(argv)
    for row in run(args.iters, args.rounds, args.quick, args.ours_opts):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
