"""tools/learning_curve.py: one config trained at several iteration counts, over seeds; box AP
against iterations, as a table (curve.md), a document (curve.json) and a figure (curve.png).

Every point is a real run of its own: the config's schedule *shape* at N iterations (STEPS and
WARMUP_ITERS at the same fractions of the run, no time budget), which is what
``SOLVER.TIME_BUDGET_MINUTES`` gives a machine that fits N iterations in its budget. So the
curve says what a user's machine will reach: read off its iterations (budget / seconds per
iteration, both printed by ``make demo``).

Runs live in ``--output-dir/it<N>/seed<S>/``. A second call into the same folder reuses the runs
that finished with the same config and options (add seeds or points without retraining) and
moves any other earlier run aside; curve.json holds every finished run of the folder.
"""
import argparse
import datetime
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from . import stats
from .cli import _move_aside, common_options
from .results import BOX_METRICS, run_metrics
from .runs import (
    ComparisonError, Entry, Run, entry_config, fixed_schedule, parse_seeds, read_json, schedule_options,
    train,
)

CURVE_FILE = "curve.json"


def parse_iters(spec: str) -> List[int]:
    """"250,500,750" -> [250, 500, 750]; distinct integers >= 1, sorted."""
    try:
        iters = [int(s) for s in spec.split(",") if s.strip() != ""]
    except ValueError:
        raise ComparisonError(f"--iters {spec!r}: give comma-separated integers, e.g. 250,500,750") from None
    if not iters or min(iters) < 1 or len(set(iters)) != len(iters):
        raise ComparisonError(f"--iters {spec!r}: give distinct integers >= 1, e.g. 250,500,750")
    return sorted(iters)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: tools/learning_curve.py --config-file "
                                       "configs/quick_retinanet_R18.yaml --iters 250,500,750,1500,3000")
    p.add_argument("--config-file", default="configs/quick_retinanet_R18.yaml")
    p.add_argument("--iters", default="250,500,750,1500,3000",
                   help="comma-separated iteration counts, one training run each per seed")
    p.add_argument("--seeds", default="0", help="comma-separated SEED values (default 0)")
    p.add_argument("--output-dir", default="output/learning_curve")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMGDIR",
                   help="register a COCO-format dataset (as train_net's --dataset); repeatable")
    p.add_argument("--dataset-train", default=None, help="DATASETS.TRAIN of every run (comma-separated)")
    p.add_argument("--dataset-test", default=None, help="DATASETS.TEST of every run (one name)")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every run")
    return p


def _log(message: str):
    print(message, flush=True)


def _reuse_or_clear(run: Run, log) -> bool:
    """True when ``run``'s folder holds the same run, finished; an other earlier run is moved
    aside (never mixed in)."""
    if run.finished_record() is not None:
        return True
    if os.path.isdir(run.output_dir) and os.listdir(run.output_dir):
        _move_aside(run.output_dir, log)
    return False


def collect(output_dir: str) -> List[dict]:
    """Every finished run under ``output_dir`` (it<N>/seed<S>/): iterations, seed, metrics."""
    rows = []
    for it_name in sorted(os.listdir(output_dir)):
        if not (it_name.startswith("it") and it_name[2:].isdigit()):
            continue
        for seed_name in sorted(os.listdir(os.path.join(output_dir, it_name))):
            if not (seed_name.startswith("seed") and seed_name[4:].isdigit()):
                continue
            run_dir = os.path.join(output_dir, it_name, seed_name)
            record = read_json(os.path.join(run_dir, "compare_run.json")) or {}
            if record.get("returncode") != 0:
                continue
            metrics = run_metrics(run_dir, True, record.get("peak_rss_mb"))
            stats_doc = read_json(os.path.join(run_dir, "run_stats.json")) or {}
            if stats_doc.get("iterations") != int(it_name[2:]):
                continue  # stopped early or a different run: not a point of this curve
            rows.append({"iters": int(it_name[2:]), "seed": int(seed_name[4:]), "run_dir": run_dir,
                         "options": record.get("options"), "wall_seconds": record.get("wall_seconds"),
                         "metrics": {m: metrics.get(m) for m in BOX_METRICS + ["seconds_per_iter"]}})
    return rows


def summarize_points(rows: List[dict]) -> List[dict]:
    """One summary per iteration count: mean / std / min / max of each box metric over seeds."""
    points = []
    for iters in sorted({r["iters"] for r in rows}):
        mine = sorted((r for r in rows if r["iters"] == iters), key=lambda r: r["seed"])
        points.append({"iters": iters, "seeds": [r["seed"] for r in mine],
                       "AP_per_seed": [r["metrics"]["AP"] for r in mine],
                       **{m: stats.summarize([r["metrics"][m] for r in mine]) for m in BOX_METRICS}})
    return points


def markdown(doc: dict) -> str:
    lines = [f"# Learning curve: `{doc['config_file']}`", "",
             f"Written {doc['written']}. Each point is its own run: the config's schedule shape at that "
             "many iterations (LR steps and warm-up at the same fractions, no time budget).", "",
             "| iterations | seeds | box AP per seed | AP mean ± std | AP50 | AP75 | APs | APm | APl | s/iter |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in doc["points"]:
        rows = [r for r in doc["runs"] if r["iters"] == p["iters"]]
        spi = stats.summarize([r["metrics"]["seconds_per_iter"] for r in rows])["mean"]
        fmt = lambda s: "-" if s["mean"] is None else f"{s['mean']:.1f}"  # noqa: E731
        std = p["AP"]["std"]
        lines.append(
            f"| {p['iters']} | {', '.join(map(str, p['seeds']))} | "
            f"{' / '.join('-' if v is None else f'{v:.1f}' for v in p['AP_per_seed'])} | "
            f"{fmt(p['AP'])}{'' if std is None else f' ± {std:.1f}'} | "
            + " | ".join(fmt(p[m]) for m in ["AP50", "AP75", "APs", "APm", "APl"])
            + f" | {'-' if spi is None else f'{spi:.2f}'} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str) -> bool:
    """AP against iterations: every run a dot, the mean a line, with a second axis in minutes
    at 1.0 s per iteration. False when there is nothing to draw."""
    points = [p for p in doc["points"] if p["AP"]["mean"] is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for r in doc["runs"]:
        if r["metrics"]["AP"] is not None:
            ax.plot(r["iters"], r["metrics"]["AP"], "o", color="tab:blue", alpha=0.45, ms=5)
    xs = [p["iters"] for p in points]
    ax.plot(xs, [p["AP"]["mean"] for p in points], "-", color="tab:blue", lw=2,
            label="box AP, mean over seeds (dots: each run)")
    ax.plot(xs, [p["AP50"]["mean"] for p in points], "--", color="tab:orange", lw=1.5,
            label="AP50, mean over seeds")
    for p in points:
        ax.annotate(f"{p['AP']['mean']:.1f}", (p["iters"], p["AP"]["mean"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("training iterations (the schedule's shape at that length)")
    ax.set_ylabel("COCO box AP on the val set")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    top = ax.secondary_xaxis("top", functions=(lambda x: x / 60.0, lambda m: m * 60.0))
    top.set_xlabel("minutes of training at 1.0 s per iteration")
    ax.set_title(os.path.basename(doc["config_file"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_outputs(output_dir: str, config_file: str) -> dict:
    rows = collect(output_dir)
    doc = {"config_file": config_file, "written": datetime.datetime.now().isoformat(timespec="seconds"),
           "runs": rows, "points": summarize_points(rows)}
    with open(os.path.join(output_dir, CURVE_FILE), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(output_dir, "curve.md"), "w") as f:
        f.write(markdown(doc))
    plot(doc, os.path.join(output_dir, "curve.png"))
    return doc


def run_curve(args, log=_log) -> int:
    iters_list = parse_iters(args.iters)
    seeds = parse_seeds(args.seeds)
    common = common_options(args)
    entry = Entry("curve", os.path.abspath(args.config_file), [])
    if not os.path.isfile(entry.config_file):
        raise ComparisonError(f"--config-file {args.config_file}: no such file")
    try:
        cfg = entry_config(entry, common)  # config errors before any training
    except ValueError as err:
        raise ComparisonError(f"{args.config_file}: {err}") from None
    os.makedirs(args.output_dir, exist_ok=True)
    planned = [(n, s) for n in iters_list for s in seeds]
    failed = 0
    for k, (iters, seed) in enumerate(planned, 1):
        sched = fixed_schedule(cfg, iters)  # the shape at this length, as the time budget runs it
        options = common + schedule_options(sched) + ["SEED", str(seed)]
        run = Run(entry, seed, os.path.abspath(os.path.join(args.output_dir, f"it{iters}", f"seed{seed}")),
                  options)
        if _reuse_or_clear(run, log):
            log(f"[learning_curve] run {k}/{len(planned)}: {iters} iterations, seed {seed}: reused")
            continue
        log(f"[learning_curve] run {k}/{len(planned)}: {iters} iterations, seed {seed}, steps "
            f"{sched['steps']}, warm-up {sched['warmup_iters']}")
        train(run, args.dataset, args.num_gpus, log)
        if run.returncode != 0:
            failed += 1
            log(f"    FAILED (exit {run.returncode}); its log: {run.output_dir}/train_net.stdout.txt")
    doc = write_outputs(args.output_dir, args.config_file)
    log(markdown(doc))
    log(f"[learning_curve] wrote {args.output_dir}/curve.md, curve.json, curve.png")
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_curve(args)
    except ComparisonError as e:
        print(f"learning_curve: error: {e}", file=sys.stderr)
        return 2
