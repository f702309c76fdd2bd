"""How sure the results table is: intervals, paired comparisons and seeds (numpy and scipy).

Pure functions on per-video values (1 or 0: whether a test video was right; or the mean of
that over several fine-tuning seeds), used by the report stage:

- `interval`: the 95% bootstrap interval of a mean over test videos, by `scipy.stats.bootstrap`
  (BCa, 10,000 resamples, a fixed seed: the same numbers on every run).
- `paired_difference`: the difference of two models' means on the same videos and its
  interval, the videos resampled with both models' results together (the paired bootstrap).
- `mcnemar`: McNemar's exact test on Top-1 correctness: the videos only one model gets right,
  a two-sided binomial test of those discordant pairs at 1/2.
- `on_common_videos`, `pooled`: runs' (seeds', models') per-video values on the videos they
  share; pooled: averaged over runs per video.
- `mean_sd`: the mean and sample standard deviation over seeds.
- `verdict`, `comparison_sentence`: what a difference means, in one sentence.

With about 19.9k test videos and Top-1 near 79%, the standard error is about 0.3 points:
differences under about 0.6 are noise, and the table says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0  # the bootstrap's own stream (not a fine-tuning seed)
BATCH = 500  # resamples per vectorised batch: 500 x 19.9k float64 = 80 MB, jackknife alike
ALPHA = 0.05  # McNemar's p below this counts as a difference


def interval(
    values: Sequence[float] | np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """(low, high): the BCa bootstrap interval of the mean of `values` (one per test video),
    `resamples` resamples drawn from numpy's default generator seeded with `seed`.

    When every value is the same (every video right, or both models equal everywhere), every
    resample has that mean, so the interval is that value at both ends (BCa itself is
    undefined there). Raises ValueError for no values or values that are not one number each.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a 1-D array of at least one value, got shape {values.shape}")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = scipy_stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        batch=BATCH,
        vectorized=True,
        confidence_level=level,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, **kwargs
) -> tuple[float, float, float]:
    """(mean of a - b, low, high) for two models' values on the same videos (same order):
    resampling videos with both values together is resampling the per-video differences.
    Identical values give exactly (0, 0, 0). kwargs: `interval`'s."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one shape, got {a.shape} and {b.shape}")
    difference = a - b
    return (float(difference.mean()), *interval(difference, **kwargs))


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float | int]:
    """McNemar's exact test of two models' correctness on the same videos: {"a_only": videos
    only a gets right, "b_only": only b, "p": two-sided exact p-value} (the binomial test of
    a_only out of a_only + b_only at 1/2; p = 1 without a discordant pair)."""
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a_correct.shape != b_correct.shape:
        raise ValueError(f"paired results need one shape, got {a_correct.shape}, {b_correct.shape}")
    a_only = int(np.sum(a_correct & ~b_correct))
    b_only = int(np.sum(~a_correct & b_correct))
    discordant = a_only + b_only
    p = scipy_stats.binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def on_common_videos(
    runs: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs' (sorted video ids, per-video values) -> (the videos every run has, sorted; each
    run's values on exactly those videos, in that order)."""
    if not runs:
        raise ValueError("no runs")
    common = np.asarray(runs[0][0])
    for videos, _ in runs[1:]:
        common = np.intersect1d(common, videos)
    values = [np.asarray(x, np.float64)[np.searchsorted(v, common)] for v, x in runs]
    return common, values


def pooled(runs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs' (seeds') (sorted video ids, per-video values) -> (the videos every run has; the
    mean over runs of each one's value). One run: its own values."""
    common, values = on_common_videos(runs)
    return common, np.mean(values, axis=0)


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation) over seeds; the sd is None for a single seed."""
    values = np.asarray(values, dtype=np.float64)
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), sd


def verdict(low: float, high: float, p_values: Sequence[float], alpha: float = ALPHA) -> str:
    """What a paired difference's interval and McNemar p-values (one per seed) say together."""
    excludes_zero = low > 0 or high < 0
    if excludes_zero and all(p < alpha for p in p_values):
        return "distinguishable on this test set"
    if not excludes_zero and not any(p < alpha for p in p_values):
        return "not distinguishable on this test set"
    return "borderline on this test set (the interval and McNemar's test disagree)"


def signed(value: float) -> str:
    """One decimal with its sign, a true minus sign for negatives ('−0.2'; never '−0.0')."""
    text = f"{value:+.1f}"
    return "+0.0" if text == "-0.0" else text.replace("-", "−")


def p_text(p: float) -> str:
    """A p-value as a reader wants it: two significant digits, '< 0.001' below that."""
    return "< 0.001" if p < 0.001 else f"= {float(f'{p:.2g}'):g}"


def comparison_sentence(
    a: str,
    b: str,
    metric: str,
    estimate: float,
    low: float,
    high: float,
    p_values: Sequence[float] = (),
    seeds: Sequence[int | None] = (),
) -> str:
    """E.g. 'CatMAE − VideoMAE: +0.4 Top-1, 95% CI [−0.2, +1.0], McNemar p = 0.21: not
    distinguishable on this test set.' Several seeds: one p per seed, named. No p-values
    (Top-5): the interval alone decides."""
    text = f"{a} − {b}: {signed(estimate)} {metric}, 95% CI [{signed(low)}, {signed(high)}]"
    if p_values:
        ps = ", ".join(f"p {p_text(p)}" for p in p_values)
        if len(p_values) > 1:
            named = ", ".join(str(s) for s in seeds)
            ps = f"{ps} (seeds {named})"
        text += f", McNemar {ps}"
    excludes_zero = low > 0 or high < 0
    said = (
        verdict(low, high, p_values)
        if p_values
        else ("distinguishable" if excludes_zero else "not distinguishable") + " on this test set"
    )
    return f"{text}: {said}."


def is_inside(value: float | None, low: float, high: float) -> bool | None:
    """Whether a published value lies inside our interval (None when there is none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(low <= value <= high)
