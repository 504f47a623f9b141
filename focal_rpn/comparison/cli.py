"""tools/compare.py: train several configs (or config variants) over seeds, compare them.

The machinery: ``runs`` (entries, schedule, one train_net subprocess per run), ``results``
(metrics, summaries, paired differences, verdicts), ``bootstrap`` (intervals over validation
images), ``report`` (comparison.md and the figures). ``tools/compare_rpn.py`` is a preset.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import time
from typing import List, Optional, Sequence

from ..engine.output_dir import LOCK_FILE, OutputDirError, claim_output_dir
from . import report, results
from .runs import (
    ComparisonError, Entry, Run, apply_seed_offsets, budget_schedule, build_entries, entry_config,
    fixed_schedule, parse_options, parse_seeds, read_json, schedule_options, test_dataset_of, train,
)

#: image resamples of the bootstrap: every seed and model is evaluated on each (about 0.2 s per
#: COCO evaluation of 200 images here: 100 resamples x 3 seeds x 3 models take about 3 minutes)
DEFAULT_BOOTSTRAP = 100
#: share of --total-minutes that the training of the runs may take; the rest is start-up,
#: evaluation (30-40 s per run on the embedded data) and the bootstrap
TRAINING_SHARE = 0.78
#: a comparison of configs that train by the clock (the CPU recipes) takes this long in all
DEFAULT_TOTAL_MINUTES = 45.0
EXAMPLES = """examples:
  tools/compare.py --config A.yaml --config B.yaml --seeds 0,1,2
  tools/compare.py --config configs/quick_retinanet_R18.yaml --iters 750 \\
      --variant "CE: MODEL.RETINANET.FOCAL_LOSS_GAMMA 0 MODEL.RETINANET.FOCAL_LOSS_ALPHA 0.75" \\
      --variant "FL:"
The first entry is the baseline. Outputs in --output-dir: comparison.md, comparison.json (every
per-seed number), comparison.png, proposal_recall.png (models with an RPN), rpn_losses.png /
losses.png, and one folder per model and seed (<model>/seed<S>/).
"""


def add_comparison_arguments(p: argparse.ArgumentParser, default_seeds: str, default_output: str,
                             default_total_minutes: Optional[float] = None):
    """The options every comparison takes (tools/compare.py and its presets).
    ``default_total_minutes``: the --total-minutes used when no length option is given."""
    p.add_argument("--seeds", default=default_seeds,
                   help=f"comma-separated SEED values; every model trains once per seed (default {default_seeds})")
    p.add_argument("--output-dir", default=default_output)
    sched = p.add_mutually_exclusive_group()
    sched.add_argument("--iters", type=int, default=None,
                       help="every run trains this many iterations (the baseline config's STEPS "
                            "and warm-up scaled along)")
    sched.add_argument("--time-budget-minutes", type=float, default=None,
                       help="the baseline's first run trains for this many minutes "
                            "(SOLVER.TIME_BUDGET_MINUTES); every other run gets the iteration "
                            "count and LR steps it reached")
    sched.add_argument("--total-minutes", type=float, default=None,
                       help="the whole comparison in about this many minutes: the baseline's "
                            f"first run trains for {TRAINING_SHARE * 100:.0f}%% of it divided by the "
                            "number of runs, every other run the iterations that reached"
                            + (f" (default {default_total_minutes:g} when the baseline config "
                               "trains by the clock, SOLVER.TIME_BUDGET_MINUTES, and no --iters "
                               "or --time-budget-minutes is given)" if default_total_minutes else ""))
    p.set_defaults(default_total_minutes=default_total_minutes)
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMGDIR",
                   help="register a COCO-format dataset (as train_net's --dataset); repeatable")
    p.add_argument("--dataset-train", default=None, help="DATASETS.TRAIN of every run (comma-separated)")
    p.add_argument("--dataset-test", default=None, help="DATASETS.TEST of every run (one name)")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="B",
                   help="resamples of the validation images for the hierarchical bootstrap "
                        "intervals (seeds and images resampled together; every seed's "
                        f"predictions; default {DEFAULT_BOOTSTRAP}; 0: none)")
    p.add_argument("--seed-offset", action="append", default=[], metavar="NAME=K",
                   help="entry NAME trains with SEED = seed + K (repeatable): an A/A "
                        "comparison of one config against itself with other seeds measures "
                        "how often chance alone gets a 'higher' / 'lower' verdict")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse the runs of an earlier comparison in --output-dir that finished "
                        "with the same config and options; train the others again (their old "
                        "folders are moved aside, never mixed in)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every run")


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="[NAME=]FILE",
                   help="a config file to compare (repeatable; the first is the baseline)")
    p.add_argument("--variant", action="append", default=[], metavar='"NAME: KEY VALUE ..."',
                   help="a variant of every --config: its name, a colon and config options "
                        "(repeatable; \"NAME:\" is the config unchanged; the first is the baseline)")
    add_comparison_arguments(p, default_seeds="0,1,2", default_output="output/compare",
                             default_total_minutes=DEFAULT_TOTAL_MINUTES)
    return p


def _tuple_opt(names: str) -> str:
    return "(" + "".join(f'"{n.strip()}",' for n in names.split(",") if n.strip()) + ")"


def common_options(args) -> List[str]:
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    opts = parse_options(opts, "trailing options")
    if args.dataset_train:
        opts = ["DATASETS.TRAIN", _tuple_opt(args.dataset_train)] + opts
    if args.dataset_test:
        opts = ["DATASETS.TEST", _tuple_opt(args.dataset_test)] + opts
    return opts


def check_output_dir(output_dir: str, skip_existing: bool):
    """Refuse to write a comparison over an earlier one unless asked to reuse it."""
    found = sorted(n for n in os.listdir(output_dir) if n != LOCK_FILE) \
        if os.path.isdir(output_dir) else []
    if skip_existing or not found:
        return
    raise ComparisonError(
        f"--output-dir {output_dir} already holds an earlier comparison ({', '.join(found[:5])}"
        f"{', ...' if len(found) > 5 else ''}); nothing was changed. Use a new "
        "--output-dir, or --skip-existing to reuse its finished runs that match these settings")


def _move_aside(folder: str, log) -> None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = f"{folder}.previous-{stamp}"
    shutil.move(folder, target)
    log(f"    (the earlier run in {folder} did not finish with these settings: moved to {target})")


def _eta(done_seconds: List[float], remaining: int) -> str:
    if not done_seconds:
        return "ETA after the first run"
    left = sum(done_seconds) / len(done_seconds) * remaining
    end = datetime.datetime.now() + datetime.timedelta(seconds=left)
    return f"ETA of the whole comparison: {left / 60:.0f} min, ends about {end:%H:%M}"


def run_budget_minutes(args, num_runs: int, baseline_budget: Optional[float]) -> tuple:
    """(minutes of training of the first run, the comparison's total minutes or None).

    The first run trains --time-budget-minutes, or ``TRAINING_SHARE`` of --total-minutes
    divided by the runs. Without a length option the tool's default total applies when the
    baseline config trains by the clock (``baseline_budget``, its SOLVER.TIME_BUDGET_MINUTES,
    is per run: 3 seeds x 2 models x 12.5 minutes would be 75). (None, None): the runs follow
    --iters or the config's own schedule."""
    total = getattr(args, "total_minutes", None)
    if total is None and args.iters is None and args.time_budget_minutes is None and baseline_budget:
        total = getattr(args, "default_total_minutes", None)
    for option, value in (("--total-minutes", total), ("--time-budget-minutes", args.time_budget_minutes)):
        if value is not None and not value > 0:
            raise ComparisonError(f"{option} {value:g}: give a positive number of minutes")
    if total is not None:
        return round(total * TRAINING_SHARE / num_runs, 2), total
    return args.time_budget_minutes, None


def _test_ground_truth(cfg, args, test_dataset) -> Optional[dict]:
    """The test set's COCO json (for the bootstrap), registering the datasets as train_net
    does."""
    from detectron2.data import MetadataCatalog

    from ..data.datasets import parse_dataset_arg
    from ..engine.trainer import config_dataset_names, register_synthetic_datasets

    # registered only: the runs checked their data, with the classes they fitted to it
    for spec in args.dataset:
        parse_dataset_arg(spec)
    register_synthetic_datasets(config_dataset_names(cfg))
    json_file = getattr(MetadataCatalog.get(test_dataset), "json_file", None)
    return read_json(json_file) if json_file else None


def _log_dataset_fit(cfg, args, opts, log) -> None:
    """With INPUT.FIT_TO_DATASET, what every run will fit to its data, once at the start."""
    from ..engine.dataset_fit import fit_config_to_dataset

    try:  # registers --dataset: a bad one stops here, before any run trains
        fit = fit_config_to_dataset(cfg.clone(), argparse.Namespace(dataset=list(args.dataset), opts=opts))
    except ValueError as err:  # DatasetError, ConfigError: their messages name file and key
        raise ComparisonError(str(err)) from None
    if fit is not None:
        log("==> INPUT.FIT_TO_DATASET (every run): " + "; ".join(fit.lines)
            + (f"; sets {', '.join(f'{k} {v}' for k, v in fit.options.items())}" if fit.options else ""))


def _log(message: str):
    print(message, flush=True)  # progress lines appear as they happen, also into a file


def run_comparison(entries: List[Entry], args, title: str = "compare", log=_log) -> int:
    """Train every entry once per seed, write the outputs; 0 if every run succeeded."""
    started = time.time()
    seeds = parse_seeds(args.seeds)
    apply_seed_offsets(entries, getattr(args, "seed_offset", []))
    common = common_options(args)
    if args.iters is not None and args.iters < 1:
        raise ComparisonError(f"--iters {args.iters}: give a positive number of iterations")
    try:
        baseline_budget = entry_config(entries[0], common).SOLVER.TIME_BUDGET_MINUTES
    except ValueError as err:
        raise ComparisonError(f"{entries[0].name} ({entries[0].config_file}): {err}") from None
    per_run_minutes, total_minutes = run_budget_minutes(args, len(seeds) * len(entries), baseline_budget)
    budget_opts = [] if per_run_minutes is None else ["SOLVER.TIME_BUDGET_MINUTES", str(per_run_minutes)]
    # every entry's config is read before anything trains: a typo fails at once, by name
    configs = {}
    for e in entries:
        try:
            configs[e.name] = entry_config(e, common, budget_opts)
        except ValueError as err:
            raise ComparisonError(f"{e.name} ({e.config_file}): {err}") from None
    base_cfg = configs[entries[0].name]
    test_dataset = test_dataset_of(base_cfg)
    _log_dataset_fit(base_cfg, args, common + list(entries[0].opts), log)  # before any folder
    budget = base_cfg.SOLVER.TIME_BUDGET_MINUTES if args.iters is None else None
    budget = budget if budget else None
    output_dir = os.path.abspath(args.output_dir)
    # atomic: a second comparison into the folder, even one started at the same instant, stops
    claim_output_dir(output_dir, option="--output-dir",
                     check=lambda: check_output_dir(output_dir, args.skip_existing))

    schedule = None if budget else fixed_schedule(base_cfg, args.iters)
    total = len(seeds) * len(entries)
    log(f"==> {title}: {len(entries)} models x {len(seeds)} seed(s) = {total} runs into {output_dir}; "
        f"baseline {entries[0].name}; "
        + (f"the first run trains for {budget} min, the others its iteration count" if budget
           else f"every run {schedule['max_iter']} iterations"))
    done, records = [], []
    for s_index, seed in enumerate(seeds):
        for e_index, entry in enumerate(entries):
            number = s_index * len(entries) + e_index + 1
            first_budgeted = budget and schedule is None
            sched_opts = ["SOLVER.TIME_BUDGET_MINUTES", str(budget)] if first_budgeted \
                else schedule_options(schedule)
            run = Run(entry, seed, os.path.join(output_dir, entry.key, f"seed{seed}"),
                      common + list(entry.opts) + sched_opts
                      + ["SEED", str(seed + entry.seed_offset)])
            log(f"==> run {number}/{total}: {entry.name}, seed {seed} ({_eta(done, total - number + 1)})")
            previous = run.finished_record() if args.skip_existing else None
            if previous is not None:
                run.returncode, run.wall_seconds = 0, previous.get("wall_seconds")
                run.peak_rss_mb, run.reused = previous.get("peak_rss_mb"), True
                log(f"    reused the finished run in {run.output_dir}")
            else:
                if os.path.exists(run.output_dir):
                    _move_aside(run.output_dir, log)
                train(run, args.dataset, args.num_gpus, log=log)
                done.append(run.wall_seconds)
            if first_budgeted:
                if run.returncode != 0:
                    raise ComparisonError(
                        f"the time-budgeted first run ({entry.name}, seed {seed}) failed (rc "
                        f"{run.returncode}), so the comparison has no schedule: see "
                        f"{os.path.join(run.output_dir, 'train_net.stdout.txt')}")
                schedule = budget_schedule(base_cfg, run.output_dir)
                log(f"    the {budget}-minute budget gave {schedule['max_iter']} iterations: every "
                    f"other run trains {' '.join(schedule_options(schedule))}")
            records.append(_run_row(run))
            m = records[-1]["metrics"]
            log(f"    rc {run.returncode}, {records[-1]['iterations']} iterations, box AP "
                f"{report._fmt(m['AP'])}, AR@100 {report._fmt(m['AR@100'])}, "
                f"{report._fmt(m['seconds_per_iter'], 3)} s/iter")
    names = [e.name for e in entries]
    iterations = {r["iterations"] for r in records if r["returncode"] == 0}
    replicates, boot = None, None
    if args.bootstrap > 0:
        log(f"==> bootstrap over seeds and validation images: {args.bootstrap} resamples of "
            f"the images, every seed's predictions")
        gt = _test_ground_truth(base_cfg, args, test_dataset)
        replicates = results.bootstrap_replicates(records, names, seeds, gt, test_dataset, args.bootstrap)
        if replicates is not None:
            boot = {"method": "hierarchical", "seeds": seeds, "num_samples": args.bootstrap,
                    "image_seed": 0, "seed_draw": 1}
    doc = {
        "title": title,
        "entries": [{"name": e.name, "key": e.key, "config_file": e.config_file, "opts": e.opts,
                     "seed_offset": e.seed_offset} for e in entries],
        "baseline": names[0], "seeds": seeds, "common_opts": common, "test_dataset": test_dataset,
        "schedule": {**schedule, "steps": list(schedule["steps"])},
        "time_budget_minutes": budget,
        "total_minutes": total_minutes,
        "iterations_equal": len(iterations) <= 1 and iterations <= {schedule["max_iter"]},
        "runs": records, "bootstrap": boot, "bootstrap_differences": replicates,
    }
    doc.update(results.analyse(records, names, seeds, replicates))
    doc["wall_minutes"] = (time.time() - started) / 60  # training, evaluation and bootstrap
    with open(os.path.join(output_dir, "comparison.json"), "w") as f:
        json.dump(doc, f, indent=2)
    written = report.write_outputs(doc, output_dir)
    log(open(os.path.join(output_dir, "comparison.md")).read())
    log(f"==> wrote {', '.join(written)} in {output_dir}")
    failed = [f"{r['entry']} seed {r['seed']}" for r in records if r["returncode"] != 0]
    if failed:
        print(f"{title}: failed runs: {failed}; see train_net.stdout.txt in their folders", file=sys.stderr)
        return 1
    if not doc["iterations_equal"]:
        print(f"{title}: the runs trained different numbers of iterations: {sorted(iterations)}", file=sys.stderr)
        return 1
    return 0


def _run_row(run: Run) -> dict:
    stats = read_json(os.path.join(run.output_dir, "run_stats.json")) or {}
    ok = run.returncode == 0
    return {
        "entry": run.entry.name, "seed": run.seed, "output_dir": run.output_dir,
        "returncode": run.returncode, "reused": run.reused, "wall_seconds": run.wall_seconds,
        "iterations": stats.get("max_iter") if ok else None,
        "metrics": results.run_metrics(run.output_dir, ok, run.peak_rss_mb),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entries = build_entries(args.config, args.variant)
        return run_comparison(entries, args)
    except (ComparisonError, OutputDirError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
