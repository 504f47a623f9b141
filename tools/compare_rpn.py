#!/usr/bin/env python
"""FL-RPN vs the standard RPN: train Faster R-CNN three times and compare.

The three models -- baseline (standard RPN), FL-RPN sigmoid, FL-RPN softmax -- get the same
seed, data, backbone and schedule; each is trained and evaluated by tools/train_net.py in its own
subprocess (so that peak memory is per model) into OUTPUT_DIR/<model>/. Then --output-dir gets

* comparison.md   -- table: box AP, AP50, AP75, APs, APm, APl, proposal AR@100 and AR@1000,
                     seconds per training iteration, peak memory;
* comparison.json -- the same numbers (and the paths of each run);
* rpn_losses.png  -- loss_rpn_cls and loss_rpn_loc of the three runs, every iteration (from their
                     loss_curves.json; metrics.json's smoothed rows if it is missing).

    tools/compare_rpn.py                                # embedded dataset, quick R18 configs
    tools/compare_rpn.py --iters 100 --output-dir output/cmp SOLVER.IMS_PER_BATCH 4
    tools/compare_rpn.py --configs R50 --dataset mine=ann.json:imgs \\
        --dataset-train mine --dataset-test mine MODEL.ROI_HEADS.NUM_CLASSES 3

Trailing KEY VALUE opts go to every run. Peak memory is the maximum resident set size of the
run's process on CPU, torch.cuda.max_memory_allocated on GPU.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG_SETS = {
    "quick": [
        ("rpn", "Faster R-CNN (RPN)", "configs/quick_faster_rcnn_R18.yaml"),
        ("fl_rpn_sigmoid", "FL-RPN sigmoid", "configs/quick_faster_rcnn_R18_FL-RPN_sigmoid.yaml"),
        ("fl_rpn_softmax", "FL-RPN softmax", "configs/quick_faster_rcnn_R18_FL-RPN_softmax.yaml"),
    ],
    "R50": [
        ("rpn", "Faster R-CNN (RPN)", "configs/faster_rcnn_R50_FPN.yaml"),
        ("fl_rpn_sigmoid", "FL-RPN sigmoid", "configs/faster_rcnn_R50_FL-RPN_sigmoid.yaml"),
        ("fl_rpn_softmax", "FL-RPN softmax", "configs/faster_rcnn_R50_FL-RPN_softmax.yaml"),
    ],
}
BOX_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
PROPOSAL_METRICS = ["AR@100", "AR@1000"]
RPN_LOSSES = ["loss_rpn_cls", "loss_rpn_loc"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="output/compare_rpn")
    p.add_argument("--configs", default="quick", choices=sorted(CONFIG_SETS),
                   help="quick: ResNet-18 CPU configs (default); R50: the ResNet-50 FPN configs")
    p.add_argument("--iters", type=int, default=None,
                   help="SOLVER.MAX_ITER of every run (SOLVER.STEPS scaled along)")
    p.add_argument("--seed", type=int, default=0, help="SEED of every run (default 0)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=JSON:IMGDIR",
                   help="register a COCO-format dataset (as train_net's --dataset); repeatable")
    p.add_argument("--dataset-train", default=None, help="DATASETS.TRAIN of every run")
    p.add_argument("--dataset-test", default=None, help="DATASETS.TEST of every run")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse a run whose eval_results.json exists instead of training again")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options for every run")
    return p.parse_args(argv)


def _tuple_opt(names):
    return "(" + "".join(f'"{n}",' for n in names.split(",")) + ")"


def run_opts(args, config_file):
    """Config options of one run: common seed/schedule/data, then the user's opts."""
    from focal_rpn.engine import build_config

    opts = ["SEED", str(args.seed)]
    if args.iters is not None:
        cfg = build_config(argparse.Namespace(config_file=config_file, opts=list(args.opts)))
        scale = args.iters / max(cfg.SOLVER.MAX_ITER, 1)
        steps = sorted({max(1, int(round(s * scale))) for s in cfg.SOLVER.STEPS})
        steps = [s for s in steps if s < args.iters]
        opts += ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", str(tuple(steps)),
                 "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, args.iters))]
    if args.dataset_train:
        opts += ["DATASETS.TRAIN", _tuple_opt(args.dataset_train)]
    if args.dataset_test:
        opts += ["DATASETS.TEST", _tuple_opt(args.dataset_test)]
    return opts + list(args.opts)


def run_model(args, key, config_file, output_dir):
    """Train + evaluate one model in a subprocess; return (returncode, wall seconds, max RSS MiB)."""
    cmd = [sys.executable, TRAIN_NET, "--config-file", config_file, "--num-gpus", str(args.num_gpus)]
    for spec in args.dataset:
        cmd += ["--dataset", spec]
    cmd += run_opts(args, config_file) + ["OUTPUT_DIR", output_dir]
    print(f"==> [{key}] " + " ".join(cmd), flush=True)
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    with open(os.path.join(output_dir, "train_net.stdout.txt"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        # wait4 gives this child's own resource usage: its peak RSS (KiB on Linux)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.time() - start, usage.ru_maxrss / 1024


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_metrics(path):
    """metrics.json (one JSON object per line) as a list of dicts."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def read_loss_curves(output_dir):
    """{loss name: [(iteration, value), ...]} of one run: loss_curves.json (every iteration,
    written by focal_rpn's Trainer), else the rows of metrics.json."""
    curves = _read_json(os.path.join(output_dir, "loss_curves.json"))
    if curves:
        return {k: [tuple(p) for p in v] for k, v in curves.items()}
    curves = {}
    for row in read_metrics(os.path.join(output_dir, "metrics.json")):
        for k, v in row.items():
            if k.startswith("loss") and "iteration" in row:
                curves.setdefault(k, []).append((row["iteration"], v))
    return curves


def _number(v):
    """float, or None for a missing or NaN value (COCO's AP of an empty size range)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def collect(key, name, config_file, output_dir, returncode, wall, rss_mb):
    results = {k: _number(v) for k, v in
               (_read_json(os.path.join(output_dir, "eval_results.json")) or {}).items()}
    stats = _read_json(os.path.join(output_dir, "run_stats.json")) or {}
    row = {"key": key, "model": name, "config_file": config_file, "output_dir": output_dir,
           "returncode": returncode, "wall_seconds": wall}
    for m in BOX_METRICS:
        row[m] = results.get(f"bbox/{m}")
    for m in PROPOSAL_METRICS:
        row[m] = results.get(f"box_proposals/{m}")
    row["seconds_per_iter"] = stats.get("seconds_per_iter")
    row["iterations"] = stats.get("iterations")
    curves = read_loss_curves(output_dir)
    for loss in RPN_LOSSES:  # mean of the last 10 iterations
        tail = [v for _, v in curves.get(loss, [])[-10:]]
        row[f"final_{loss}"] = sum(tail) / len(tail) if tail else None
    if stats.get("memory_kind") == "cuda_max_allocated":
        row["peak_memory_mb"], row["memory_kind"] = stats.get("peak_memory_mb"), "cuda_max_allocated"
    else:
        # the subprocess' own peak RSS (wait4); run_stats' figure if the run was reused
        row["peak_memory_mb"] = rss_mb if rss_mb is not None else stats.get("peak_memory_mb")
        row["memory_kind"] = "max_rss"
    return row


def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def write_markdown(rows, path, args):
    mem = "peak GPU memory (MiB)" if any(r.get("memory_kind") == "cuda_max_allocated" for r in rows) \
        else "peak RSS (MiB)"
    head = ["model"] + [f"box {m}" if m == "AP" else m for m in BOX_METRICS] + \
        [f"proposal {m}" for m in PROPOSAL_METRICS] + ["s/iter", mem]
    lines = [
        "# FL-RPN vs standard RPN (Faster R-CNN)", "",
        f"Configs: `{args.configs}`; seed {args.seed}"
        + (f"; {args.iters} iterations" if args.iters is not None else "")
        + (f"; options `{' '.join(args.opts)}`" if args.opts else "") + ".", "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in rows:
        cells = [r["model"] + ("" if r["returncode"] == 0 else f" (failed, rc {r['returncode']})")]
        cells += [_fmt(r[m]) for m in BOX_METRICS + PROPOSAL_METRICS]
        cells += [_fmt(r["seconds_per_iter"], 2), _fmt(r["peak_memory_mb"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "AP: COCO box AP (%) on the test set; AR@N: recall (%) of the first N RPN "
              "proposals (POST_NMS_TOPK_TEST 1000); s/iter: mean training step time (first "
              "iteration excluded).", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _moving_average(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_rpn_losses(runs, path, window=10):
    """runs: list of (label, {loss name: [(iteration, value), ...]}). Two panels, loss_rpn_cls
    and loss_rpn_loc (log scale): every iteration (faint) and its moving average over
    ``window`` iterations, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RPN_LOSSES), figsize=(11, 4))
    for ax, loss in zip(axes, RPN_LOSSES):
        for i, (label, curves) in enumerate(runs):
            pts = sorted(p for p in curves.get(loss, []) if math.isfinite(p[1]) and p[1] > 0)
            if not pts:
                continue
            xs, ys = zip(*pts)
            color = f"C{i}"
            if len(xs) > window:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(xs, _moving_average(list(ys), window), color=color, label=label)
            else:
                ax.plot(xs, ys, color=color, marker="o", label=label)
        ax.set_title(loss)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("loss as trained (FL-RPN's include lambda and 1/N_pos)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    os.makedirs(args.output_dir, exist_ok=True)
    rows, curves = [], []
    for key, name, config_file in CONFIG_SETS[args.configs]:
        config_file = os.path.join(REPO, config_file)
        out = os.path.abspath(os.path.join(args.output_dir, key))
        if args.skip_existing and os.path.exists(os.path.join(out, "eval_results.json")):
            rc, wall, rss = 0, None, None
        else:
            rc, wall, rss = run_model(args, key, config_file, out)
        row = collect(key, name, config_file, out, rc, wall, rss)
        print(f"==> [{key}] rc {rc}, box AP {_fmt(row['AP'])}, AR@100 {_fmt(row['AR@100'])}, "
              f"AR@1000 {_fmt(row['AR@1000'])}, {_fmt(row['seconds_per_iter'], 2)} s/iter",
              flush=True)
        rows.append(row)
        curves.append((name, read_loss_curves(out)))
    write_markdown(rows, os.path.join(args.output_dir, "comparison.md"), args)
    with open(os.path.join(args.output_dir, "comparison.json"), "w") as f:
        json.dump({"configs": args.configs, "seed": args.seed, "iters": args.iters,
                   "opts": list(args.opts), "models": rows}, f, indent=2)
    plot_rpn_losses(curves, os.path.join(args.output_dir, "rpn_losses.png"))
    print(open(os.path.join(args.output_dir, "comparison.md")).read())
    failed = [r["key"] for r in rows if r["returncode"] != 0]
    if failed:
        print(f"Failed runs: {failed}; see train_net.stdout.txt in their folders", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
