"""Statistics of a model comparison over seeds: summaries, paired differences, intervals, verdicts.

Every function takes plain Python numbers (``None`` for a metric a run does not have) so that the
report can be recomputed from ``comparison.json`` alone.

* :func:`summarize`: mean and sample standard deviation over seeds.
* :func:`paired_difference`: the per-seed differences variant - baseline (same seed: same data
  order and initialisation), their mean and a 95% Student's t interval over the seeds.
* :func:`percentile_interval`: the 95% percentile interval of bootstrap replicates (the
  replicates themselves come from resampling validation images, see
  ``focal_rpn.comparison.bootstrap``).
* :func:`verdict`: "higher", "lower" or "no difference detectable with n seeds", from every
  interval that could be computed: a direction is called only when all of them exclude 0 on the
  same side.
"""
import math
from typing import Dict, List, Optional, Sequence

from scipy import stats as _scipy_stats

#: Two-sided coverage of every interval in a comparison.
CONFIDENCE = 0.95


def _present(values: Sequence[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summarize(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """{"n", "mean", "std"} over the present values; std is the sample (n - 1) deviation, None
    for fewer than two values; mean None when no value is present."""
    xs = _present(values)
    n = len(xs)
    mean = sum(xs) / n if n else None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n >= 2 else None
    return {"n": n, "mean": mean, "std": std}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Optional[List[float]]:
    """Student's t interval of the mean of ``values`` (None for fewer than two values)."""
    s = summarize(values)
    if s["n"] < 2:
        return None
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, df=s["n"] - 1) * s["std"] / math.sqrt(s["n"])
    return [s["mean"] - half, s["mean"] + half]


def paired_difference(baseline: Sequence[Optional[float]], variant: Sequence[Optional[float]],
                      confidence: float = CONFIDENCE) -> Dict[str, object]:
    """Seed-by-seed differences ``variant[i] - baseline[i]`` (pairs where either is missing are
    left out), with their mean and the t interval of that mean."""
    if len(baseline) != len(variant):
        raise ValueError(f"paired values need one per seed on both sides, got {len(baseline)} "
                         f"baseline and {len(variant)} variant values")
    diffs = [None if a is None or b is None else float(b) - float(a)
             for a, b in zip(baseline, variant)]
    present = _present(diffs)
    return {
        "per_seed": diffs,
        "n": len(present),
        "mean": sum(present) / len(present) if present else None,
        "t_interval": t_interval(present, confidence),
    }


def percentile_interval(replicates: Sequence[float], confidence: float = CONFIDENCE) -> Optional[List[float]]:
    """The central ``confidence`` percentile interval of bootstrap replicates (None if empty)."""
    xs = sorted(_present(replicates))
    if not xs:
        return None
    lo_q, hi_q = (1 - confidence) / 2, 0.5 + confidence / 2

    def quantile(q):  # linear interpolation between order statistics (numpy's default)
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return [quantile(lo_q), quantile(hi_q)]


def verdict(intervals: Sequence[Optional[Sequence[float]]], num_seeds: int) -> str:
    """"higher" / "lower" when every computed interval lies above / below 0, else
    "no difference detectable with n seed(s)". ``intervals`` may hold None (not computable)."""
    present = [iv for iv in intervals if iv is not None]
    if present and all(lo > 0 for lo, _ in present):
        return "higher"
    if present and all(hi < 0 for _, hi in present):
        return "lower"
    return f"no difference detectable with {num_seeds} seed{'s' if num_seeds != 1 else ''}"
