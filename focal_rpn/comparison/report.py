"""What a comparison writes: comparison.md (tables), comparison.png (AP and AR bars with seed
spread), proposal_recall.png (recall against the number of proposals), rpn_losses.png /
losses.png (training loss curves)."""
import math
import os
from typing import Dict, List, Sequence

from ..evaluation.proposal_recall import LIMITS
from .results import BOX_METRICS, COST_METRICS, PROPOSAL_METRICS, prediction_files
from .runs import read_json

RPN_LOSSES = ["loss_rpn_cls", "loss_rpn_loc"]
BAR_METRICS = ["AP", "AP50", "AP75", "AR@100", "AR@1000"]
_LABELS = {"seconds_per_iter": "s/iter", "peak_memory_mb": "peak MiB"}


def _fmt(v, digits=1):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _digits(metric):
    return 3 if metric == "seconds_per_iter" else 0 if metric == "peak_memory_mb" else 1


def _interval(iv, digits):
    return "n/a" if iv is None else f"[{iv[0]:+.{digits}f}, {iv[1]:+.{digits}f}]"


def measured_metrics(doc) -> List[str]:
    """The metrics that some run has (no AR rows for models without an RPN)."""
    present = set()
    for run in doc["runs"]:
        present |= {m for m, v in run["metrics"].items() if v is not None}
    return [m for m in BOX_METRICS + PROPOSAL_METRICS + COST_METRICS if m in present]


def markdown(doc) -> str:
    entries = [e["name"] for e in doc["entries"]]
    seeds = doc["seeds"]
    metrics = measured_metrics(doc)
    sched = doc["schedule"]
    lines = [f"# Comparison: {entries[0]} (baseline) against {', '.join(entries[1:])}", ""]
    lines.append(
        f"Seeds {', '.join(map(str, seeds))} (n = {len(seeds)}); every run {sched['max_iter']} "
        f"iterations (LR steps {tuple(sched['steps'])}, warm-up {sched['warmup_iters']})"
        + (f", the length a {doc['time_budget_minutes']}-minute budget gave the first run"
           if doc.get("time_budget_minutes") else "")
        + (f" (--total-minutes {doc['total_minutes']:g})" if doc.get("total_minutes") else "")
        + (f"; the whole comparison took {doc['wall_minutes']:.0f} minutes"
           if doc.get("wall_minutes") is not None else "")
        + f"; evaluated on `{doc['test_dataset']}`"
        + (f"; options `{' '.join(doc['common_opts'])}`" if doc["common_opts"] else "") + ".")
    if not doc["iterations_equal"]:
        lines += ["", "**Warning: the runs did not all train the same number of iterations** "
                  "(see the per-run table)."]
    failed = [r for r in doc["runs"] if r["returncode"] != 0]
    for r in failed:
        lines += ["", f"**{r['entry']} seed {r['seed']} failed (rc {r['returncode']})**: no numbers "
                  f"are shown for it; see `{os.path.join(r['output_dir'], 'train_net.stdout.txt')}`."]
    offsets = [e for e in doc["entries"] if e.get("seed_offset")]
    for e in offsets:
        lines += ["", f"`{e['name']}` trains with SEED = seed + {e['seed_offset']} (other seeds "
                  "than the others: its differences come from chance, not from pairing)."]
    for e in doc["entries"]:
        if e["opts"]:
            lines += ["", f"`{e['name']}`: `{e['config_file']}` with `{' '.join(e['opts'])}`"]
        else:
            lines += ["", f"`{e['name']}`: `{e['config_file']}`"]
    lines += ["", "## Mean ± sample standard deviation over seeds", ""]
    head = ["model"] + [_LABELS.get(m, m) for m in metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"]
    for name in entries:
        cells = [name]
        for m in metrics:
            s = doc["summary"][name][m]
            d = _digits(m)
            cells.append(_fmt(s["mean"], d) + (f" ± {_fmt(s['std'], d)}" if s["std"] is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    boot = doc.get("bootstrap")
    lines += ["", "## Differences against the baseline (paired by seed)", "",
              "Mean of the per-seed differences (model - baseline), its 95% Student's t interval "
              "over the seeds (training noise), the 95% hierarchical bootstrap interval "
              + (f"({boot['num_samples']} resamples of the validation images, the seeds drawn "
                 "again in each: training noise and the choice of test images together)"
                 if boot and boot.get("method") == "hierarchical" else
                 f"(seed {boot['seed']}'s predictions, {boot['num_samples']} resamples)" if boot
                 else "(not computed)")
              + ", and the verdict: \"higher\" / \"lower\" only when every interval excludes 0. "
              "**Detectable** is the smallest true difference the t test over these seeds finds "
              "with 80% power at the spread they showed; a smaller one can hide in \"no "
              "difference\". **Seeds for 2** is how many seeds a true 2-point difference would "
              "need at that spread (an estimate from few seeds).", ""]
    lines += ["| model | metric | mean diff | per seed | t interval | bootstrap interval | verdict "
              "| detectable | seeds for 2 |",
              "|---|---|---:|---|---|---|---|---:|---:|"]
    for name in entries[1:]:
        for m in metrics:
            d = doc["differences"][name][m]
            digits = _digits(m) if m in COST_METRICS else 1
            per = ", ".join(_fmt(v, digits) for v in d["per_seed"])
            needed = d.get("seeds_for_target")
            needed = "-" if needed is None else (f"> {needed - 1}" if needed > 100 else str(needed))
            lines.append(f"| {name} | {_LABELS.get(m, m)} | {_fmt(d['mean'], digits)} | {per} | "
                         f"{_interval(d['t_interval'], digits)} | "
                         f"{_interval(d['bootstrap_interval'], digits)} | {d['verdict']} | "
                         f"{_fmt(d.get('detectable'), digits)} | {needed} |")
    lines += ["", "## Every run", "", "| model | seed | rc | iterations | box AP | AR@100 | s/iter | folder |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["runs"]:
        mt = r["metrics"]
        lines.append(f"| {r['entry']} | {r['seed']} | {r['returncode']} | {r['iterations']} | "
                     f"{_fmt(mt.get('AP'))} | {_fmt(mt.get('AR@100'))} | "
                     f"{_fmt(mt.get('seconds_per_iter'), 3)} | `{r['output_dir']}` |")
    lines += ["", "AP: COCO box AP (%); AR@N: recall (%) of the first N RPN proposals (COCO average "
              "over IoU 0.50:0.95); s/iter: mean training step (first iteration excluded); peak "
              "MiB: peak resident memory of the training process (CPU) or "
              "torch.cuda.max_memory_allocated (GPU).", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(doc, path):
    """Grouped bars of BAR_METRICS per model: mean over seeds, error bar one std, dots per seed."""
    plt = _pyplot()
    entries = [e["name"] for e in doc["entries"]]
    metrics = [m for m in BAR_METRICS if m in measured_metrics(doc)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(metrics) * len(entries) + 2), 4.2))
    width = 0.8 / len(entries)
    for i, name in enumerate(entries):
        xs, means, errs = [], [], []
        for j, m in enumerate(metrics):
            s = doc["summary"][name][m]
            x = j + (i - (len(entries) - 1) / 2) * width
            xs.append(x)
            means.append(s["mean"] if s["mean"] is not None else 0.0)
            errs.append(s["std"] or 0.0)
            seeds = [v for v in s["per_seed"] if v is not None]
            ax.plot([x] * len(seeds), seeds, "k.", markersize=4, zorder=3)
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=name, color=f"C{i}")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.set_ylabel("%")
    ax.set_title(f"mean over {len(doc['seeds'])} seed(s) (bars), 1 std (error bars), each seed "
                 f"(dots); {doc['schedule']['max_iter']} iterations each", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def recall_curves(doc) -> Dict[str, List[List[float]]]:
    """{model: [recall (%) at each LIMITS entry, one list per successful seed]}."""
    from ..evaluation.proposal_recall import average_recall

    curves = {}
    for r in doc["runs"]:
        if r["returncode"] != 0:
            continue
        rec = read_json(prediction_files(r["output_dir"], doc["test_dataset"])["proposal_recall"])
        if rec is None:
            continue
        ar = average_recall(rec["images"])
        curves.setdefault(r["entry"], []).append([ar[f"AR@{k}"] for k in LIMITS])
    return curves


def plot_recall(doc, path) -> bool:
    """Recall against the number of proposals per image (log x): mean over seeds, band min-max."""
    curves = recall_curves(doc)
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(e["name"] for e in doc["entries"]):
        if name not in curves:
            continue
        per_seed = curves[name]
        mean = [sum(col) / len(col) for col in zip(*per_seed)]
        ax.plot(LIMITS, mean, color=f"C{i}", marker="o", markersize=3, label=f"{name} ({len(per_seed)} seeds)")
        if len(per_seed) > 1:
            ax.fill_between(LIMITS, [min(c) for c in zip(*per_seed)], [max(c) for c in zip(*per_seed)],
                            color=f"C{i}", alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("average recall, IoU 0.50:0.95 (%)")
    ax.set_title("Proposal recall (line: mean over seeds, band: min-max)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _moving_average(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(run_dir) -> Dict[str, list]:
    """{loss: [(iteration, value), ...]} from the run's loss_curves.json."""
    curves = read_json(os.path.join(run_dir, "loss_curves.json")) or {}
    return {k: [tuple(p) for p in v] for k, v in curves.items()}


def plot_losses(doc, keys: Sequence[str], path, window=20) -> bool:
    """One panel per loss in ``keys`` (log scale): the moving average over ``window``
    iterations, one colour per model, one line per seed. False when no run has these losses."""
    runs = [(r["entry"], loss_curves(r["output_dir"])) for r in doc["runs"] if r["returncode"] == 0]
    keys = [k for k in keys if any(c.get(k) for _, c in runs)]
    if not keys:
        return False
    plt = _pyplot()
    colors = {e["name"]: f"C{i}" for i, e in enumerate(doc["entries"])}
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        labelled = set()
        for name, curves in runs:
            pts = sorted(p for p in curves.get(key, []) if math.isfinite(p[1]) and p[1] > 0)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, _moving_average(list(ys), window), color=colors[name], linewidth=1,
                    label=None if name in labelled else name)
            labelled.add(name)
        ax.set_title(f"{key} (moving average of {window})")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("loss as trained (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_outputs(doc, output_dir) -> List[str]:
    """Write every output file; return their names."""
    written = ["comparison.json", "comparison.md"]
    with open(os.path.join(output_dir, "comparison.md"), "w") as f:
        f.write(markdown(doc))
    plot_bars(doc, os.path.join(output_dir, "comparison.png"))
    written.append("comparison.png")
    if plot_recall(doc, os.path.join(output_dir, "proposal_recall.png")):
        written.append("proposal_recall.png")
    if plot_losses(doc, RPN_LOSSES, os.path.join(output_dir, "rpn_losses.png")):
        written.append("rpn_losses.png")
    other = sorted({k for r in doc["runs"] for k in loss_curves(r["output_dir"])
                    if k.startswith("loss") and k not in RPN_LOSSES})
    if plot_losses(doc, other, os.path.join(output_dir, "losses.png")):
        written.append("losses.png")
    return written
