"""Statistics of a model comparison over seeds: summaries, paired differences, intervals, verdicts.

Every function takes plain Python numbers (``None`` for a metric a run does not have) so that the
report can be recomputed from ``comparison.json`` alone.

* :func:`summarize`: mean and sample standard deviation over seeds.
* :func:`paired_difference`: the per-seed differences variant - baseline (same seed: same data
  order and initialisation), their mean and a 95% Student's t interval over the seeds.
* :func:`percentile_interval`: the 95% percentile interval of bootstrap replicates (the
  replicates themselves come from resampling validation images, see
  ``focal_rpn.comparison.bootstrap``).
* :func:`hierarchical_interval`: the 95% interval of a two-level bootstrap (seeds, then
  validation images) from a stored (resamples x seeds) table of paired differences.
* :func:`detectable_difference`: the smallest true difference the paired t test finds with
  80% power at the seeds' observed spread, and :func:`seeds_needed` for a given difference.
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


#: power at which :func:`detectable_difference` is stated
POWER = 0.8


def hierarchical_interval(table: Sequence[Sequence[Optional[float]]], seed_draw: int = 1,
                          confidence: float = CONFIDENCE) -> Optional[List[float]]:
    """Two-level bootstrap interval of the mean paired difference over seeds.

    ``table[b][s]``: the difference (variant - baseline) of seed ``s`` on the ``b``-th resample
    of the validation images (the same images for every seed and model). Replicate ``b``
    draws the seeds with replacement (``numpy.random.default_rng(seed_draw)``, one draw of
    all seeds per replicate) and averages their differences on resample ``b``: seeds and
    images are resampled together. Seeds missing in any row are left out. None for an empty
    table. With 3 seeds the seed level has only 10 distinct draws: the interval is a second
    view, the t interval over seeds is the one the verdict relies on for training noise.
    """
    import numpy as np

    rows = [list(r) for r in table]
    if not rows:
        return None
    keep = [s for s in range(len(rows[0])) if all(r[s] is not None for r in rows)]
    if not keep:
        return None
    d = np.asarray([[r[s] for s in keep] for r in rows], dtype=np.float64)
    picks = np.random.default_rng(seed_draw).integers(0, len(keep), size=d.shape)
    replicates = np.take_along_axis(d, picks, axis=1).mean(axis=1)
    return percentile_interval(replicates.tolist(), confidence)


def _power_quantiles(n: int, confidence: float, power: float) -> float:
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1) + _scipy_stats.t.ppf(power, df=n - 1))


def detectable_difference(per_seed_differences: Sequence[Optional[float]],
                          confidence: float = CONFIDENCE, power: float = POWER) -> Optional[float]:
    """The smallest true mean difference that a paired t test over these seeds detects with
    probability ``power`` (two-sided, level 1 - ``confidence``), at the observed spread:
    (t_{(1+c)/2, n-1} + t_{power, n-1}) * sd / sqrt(n). None for fewer than two seeds."""
    s = summarize(per_seed_differences)
    if s["n"] < 2:
        return None
    return _power_quantiles(s["n"], confidence, power) * s["std"] / math.sqrt(s["n"])


def seeds_needed(per_seed_differences: Sequence[Optional[float]], difference: float,
                 confidence: float = CONFIDENCE, power: float = POWER, most: int = 100) -> Optional[int]:
    """The fewest seeds whose paired t test detects a true ``difference`` with ``power``, if
    the per-seed differences keep the spread observed here (None: fewer than two seeds;
    ``most`` + 1 means more than ``most``)."""
    s = summarize(per_seed_differences)
    if s["n"] < 2:
        return None
    for n in range(2, most + 1):
        if _power_quantiles(n, confidence, power) * s["std"] / math.sqrt(n) <= abs(difference):
            return n
    return most + 1


def verdict(intervals: Sequence[Optional[Sequence[float]]], num_seeds: int) -> str:
    """"higher" / "lower" when every computed interval lies above / below 0, else
    "no difference detectable with n seed(s)". ``intervals`` may hold None (not computable)."""
    present = [iv for iv in intervals if iv is not None]
    if present and all(lo > 0 for lo, _ in present):
        return "higher"
    if present and all(hi < 0 for _, hi in present):
        return "lower"
    return f"no difference detectable with {num_seeds} seed{'s' if num_seeds != 1 else ''}"
