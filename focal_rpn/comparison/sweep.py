"""A metric against one config value, over the entries of one or more comparisons (a sweep).

Table 1a of the RetinaNet paper is box AP against gamma. Its entries may come from several
``comparison.json`` files (an earlier run of two values, a later one of three more): every
entry's value of the key is read from its options, or, where the entry does not set it, from
its config file, and entries of equal value are pooled over their seeds.
"""
import argparse
import os
from typing import Dict, List, Optional, Sequence

from . import stats
from .runs import REPO, Entry, entry_config


def entry_value(entry: dict, key: str, common_opts: Sequence[str]) -> float:
    """The value of config ``key`` that ``entry`` (of comparison.json) trained with: its
    options', else its config file's (this checkout's file of that name where the comparison's
    own path is gone)."""
    opts = list(common_opts) + list(entry["opts"])
    given = [v for k, v in zip(opts[::2], opts[1::2]) if k == key]
    if given:
        return float(given[-1])  # the last option wins, as in detectron2's merge_from_list
    path = entry["config_file"]
    if not os.path.isfile(path):  # a comparison run from another checkout: this one's config
        path = os.path.join(REPO, "configs", os.path.basename(path))
    cfg = entry_config(Entry(entry["name"], path, []), list(common_opts))
    node = cfg
    for part in key.split("."):
        node = node[part]
    return float(node)


def sweep_points(docs: Sequence[dict], key: str, metric: str,
                 seeds: Optional[Sequence[int]] = None) -> Dict[float, Dict[int, float]]:
    """{value of key: {seed: metric}} over every successful run of ``docs`` (only ``seeds``
    when given). The same value and seed twice (two comparisons) must agree."""
    points: Dict[float, Dict[int, float]] = {}
    for doc in docs:
        values = {e["name"]: entry_value(e, key, doc["common_opts"]) for e in doc["entries"]}
        for run in doc["runs"]:
            m = run["metrics"].get(metric)
            if run["returncode"] != 0 or m is None or (seeds is not None and run["seed"] not in seeds):
                continue
            x = values[run["entry"]]
            if run["seed"] in points.setdefault(x, {}) and abs(points[x][run["seed"]] - m) > 1e-9:
                raise ValueError(f"{key} {x:g}, seed {run['seed']}: two comparisons disagree "
                                 f"({points[x][run['seed']]:.3f} and {m:.3f})")
            points[x][run["seed"]] = m
    return dict(sorted(points.items()))


def sweep_table(points: Dict[float, Dict[int, float]], key: str, metric: str,
                labels: Optional[Dict[float, str]] = None) -> List[str]:
    """Markdown rows: value, mean ± sd over seeds, per-seed values."""
    lines = [f"| {key} | {metric} mean ± sd | seeds | per seed |", "|---:|---:|---|---|"]
    for x, by_seed in points.items():
        s = stats.summarize(list(by_seed.values()))
        spread = f" ± {s['std']:.1f}" if s["std"] is not None else ""
        label = f" ({labels[x]})" if labels and x in labels else ""
        per = ", ".join(f"{v:.1f}" for _, v in sorted(by_seed.items()))
        lines.append(f"| {x:g}{label} | {s['mean']:.1f}{spread} | "
                     f"{', '.join(map(str, sorted(by_seed)))} | {per} |")
    return lines


def plot_sweep(points: Dict[float, Dict[int, float]], key: str, metric: str, path: str,
               title: str = "") -> None:
    """Each seed as a dot, the mean over seeds as a line with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(points)
    means = [sum(v.values()) / len(v) for v in points.values()]
    lows = [m - min(v.values()) for m, v in zip(means, points.values())]
    highs = [max(v.values()) - m for m, v in zip(means, points.values())]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=4, label="mean, min-max over seeds")
    for x, by_seed in points.items():
        ax.scatter([x] * len(by_seed), list(by_seed.values()), color="grey", s=12, zorder=3)
    ax.scatter([], [], color="grey", s=12, label="one seed")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("comparisons", nargs="+", help="comparison.json files")
    p.add_argument("--key", required=True, help="the config key on the x axis")
    p.add_argument("--metric", default="AP")
    p.add_argument("--seeds", default=None, help="only these seeds (comma-separated)")
    p.add_argument("--output", required=True, help="the figure (.png)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    docs = []
    for path in args.comparisons:
        with open(path) as f:
            docs.append(json.load(f))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    points = sweep_points(docs, args.key, args.metric, seeds)
    plot_sweep(points, args.key, args.metric, args.output, args.title)
    print("\n".join(sweep_table(points, args.key, args.metric)))
    return 0
