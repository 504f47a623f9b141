"""The numbers of a comparison: each run's metrics, their summaries over seeds, the paired
differences against the baseline with t and bootstrap intervals, and a verdict per metric.

:func:`analyse` builds the ``comparison.json`` document from the runs; every summary and t
interval in it can be recomputed from its per-run numbers (``runs[*].metrics``), and every
bootstrap interval from its stored replicates.
"""
import math
import os
from typing import Dict, List, Optional, Sequence

from ..evaluation.proposal_recall import RESULTS_FILE as RECALL_FILE
from . import bootstrap, stats
from .runs import read_json

BOX_METRICS = list(bootstrap.BOX_METRICS)
PROPOSAL_METRICS = ["AR@10", "AR@100", "AR@1000", "ARs@100", "ARm@100", "ARl@100"]
COST_METRICS = ["seconds_per_iter", "peak_memory_mb"]
METRICS = BOX_METRICS + PROPOSAL_METRICS + COST_METRICS


def _number(v) -> Optional[float]:
    """float, or None for a missing / NaN value (COCO's AP of an empty size range)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def run_metrics(run_dir: str, succeeded: bool, peak_rss_mb: Optional[float]) -> Dict[str, Optional[float]]:
    """Metrics of one run read from its folder; all None when the run failed (never an older
    run's numbers)."""
    if not succeeded:
        return {m: None for m in METRICS}
    results = read_json(os.path.join(run_dir, "eval_results.json")) or {}
    run_stats = read_json(os.path.join(run_dir, "run_stats.json")) or {}
    out = {m: _number(results.get(f"bbox/{m}")) for m in BOX_METRICS}
    out.update({m: _number(results.get(f"proposal_recall/{m}")) for m in PROPOSAL_METRICS})
    out["seconds_per_iter"] = _number(run_stats.get("seconds_per_iter"))
    if run_stats.get("memory_kind") == "cuda_max_allocated":
        out["peak_memory_mb"] = _number(run_stats.get("peak_memory_mb"))
    else:
        out["peak_memory_mb"] = _number(peak_rss_mb if peak_rss_mb is not None else run_stats.get("peak_memory_mb"))
    return out


def prediction_files(run_dir: str, test_dataset: str) -> Dict[str, str]:
    inference = os.path.join(run_dir, "inference", test_dataset)
    return {"detections": os.path.join(inference, "coco_instances_results.json"),
            "proposal_recall": os.path.join(inference, "proposals", RECALL_FILE)}


def per_seed(runs: List[dict], entry: str, seeds: Sequence[int], metric: str) -> List[Optional[float]]:
    by_seed = {r["seed"]: r["metrics"].get(metric) for r in runs if r["entry"] == entry}
    return [by_seed.get(s) for s in seeds]


def summaries(runs, entries, seeds) -> Dict[str, Dict[str, dict]]:
    out = {}
    for name in entries:
        out[name] = {}
        for m in METRICS:
            values = per_seed(runs, name, seeds, m)
            out[name][m] = {**stats.summarize(values), "per_seed": values}
    return out


def _seed_replicates(runs, entries, seed, test_gt, test_dataset, draws, image_ids):
    """{model: [metrics of each drawn image set]} for the runs of ``seed``, or None when one
    of its runs failed."""
    chosen = {r["entry"]: r for r in runs if r["seed"] == seed}
    if any(name not in chosen or chosen[name]["returncode"] != 0 for name in entries):
        return None
    files = {name: prediction_files(chosen[name]["output_dir"], test_dataset) for name in entries}
    per_model = {name: [{} for _ in range(len(draws))] for name in entries}
    detections = {name: read_json(f["detections"]) for name, f in files.items()}
    if all(d is not None for d in detections.values()):
        for name, reps in bootstrap.bootstrap_box_ap(test_gt, detections, draws).items():
            for rep, res in zip(per_model[name], reps):
                rep.update(res)
    recalls = {name: read_json(f["proposal_recall"]) for name, f in files.items()}
    if all(r is not None for r in recalls.values()):
        images = {name: r["images"] for name, r in recalls.items()}
        for name, reps in bootstrap.bootstrap_recall(images, image_ids, draws).items():
            for rep, res in zip(per_model[name], reps):
                rep.update({m: res[m] for m in PROPOSAL_METRICS})
    return per_model


def bootstrap_replicates(runs, entries, seeds, test_gt: Optional[dict], test_dataset, num_samples,
                         image_seed=0) -> Optional[Dict[str, Dict[str, List[List[Optional[float]]]]]]:
    """{variant: {metric: table}}, ``table[b][s]`` = variant - baseline of ``seeds[s]``'s runs
    on the ``b``-th drawn set of validation images. Every seed and model is evaluated on the
    same draws (paired over models and seeds); a seed whose runs failed has None in its
    column. None when no seed has all its runs."""
    if num_samples <= 0 or test_gt is None:
        return None
    image_ids = [im["id"] for im in test_gt["images"]]
    draws = bootstrap.draw_image_sets(len(image_ids), num_samples, seed=image_seed)
    by_seed = [_seed_replicates(runs, entries, seed, test_gt, test_dataset, draws, image_ids)
               for seed in seeds]
    if all(p is None for p in by_seed):
        return None
    baseline = entries[0]
    out = {}
    for name in entries[1:]:
        out[name] = {}
        for m in BOX_METRICS + PROPOSAL_METRICS:
            table = [[None if p is None else _diff(p[baseline][b].get(m), p[name][b].get(m))
                      for p in by_seed] for b in range(num_samples)]
            if any(v is not None for row in table for v in row):
                out[name][m] = table
    return out


#: the difference (in points of a percent metric: AP, AR) that ``seeds_needed`` is stated for
TARGET_DIFFERENCE = 2.0


def _diff(a, b):
    a, b = _number(a), _number(b)
    return None if a is None or b is None else b - a


def differences(runs, entries, seeds, replicates) -> Dict[str, Dict[str, dict]]:
    """Per variant and metric: paired per-seed differences, t interval, hierarchical bootstrap
    interval, the verdict that follows from both, the smallest difference detectable at the
    seeds' spread and the seeds a ``TARGET_DIFFERENCE`` would need."""
    baseline = entries[0]
    out = {}
    for name in entries[1:]:
        out[name] = {}
        for m in METRICS:
            d = stats.paired_difference(per_seed(runs, baseline, seeds, m), per_seed(runs, name, seeds, m))
            table = (replicates or {}).get(name, {}).get(m)
            d["bootstrap_interval"] = stats.hierarchical_interval(table) if table else None
            percent = m not in COST_METRICS
            d["detectable"] = stats.detectable_difference(d["per_seed"]) if percent else None
            d["seeds_for_target"] = stats.seeds_needed(d["per_seed"], TARGET_DIFFERENCE) \
                if percent else None
            d["verdict"] = stats.verdict([d["t_interval"], d["bootstrap_interval"]], d["n"]) \
                if d["n"] else "not measured"
            out[name][m] = d
    return out


def analyse(runs: List[dict], entries: List[str], seeds: List[int], replicates) -> dict:
    """The analysis part of comparison.json."""
    return {"summary": summaries(runs, entries, seeds),
            "differences": differences(runs, entries, seeds, replicates)}
