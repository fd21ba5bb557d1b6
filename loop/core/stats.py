"""Means with bootstrap intervals over contexts; paired differences between conditions."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Estimate:
    mean: float
    low: float  # 95% percentile bootstrap interval
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def bootstrap(values: list[float], seed: int = 0, resamples: int = 10_000) -> Estimate:
    """The mean of `values` (one per context) with a 95% percentile bootstrap interval."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate from")
    mean = sum(values) / n
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return Estimate(mean, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1], n)


def paired_difference(a: list[float], b: list[float], seed: int = 0,
                      resamples: int = 10_000) -> Estimate:
    """a - b, context by context (the same contexts in the same order), with its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return bootstrap([x - y for x, y in zip(a, b, strict=True)], seed, resamples)


def clustered_difference(a: list[float], b: list[float], clusters: list[str], seed: int = 0,
                         resamples: int = 10_000) -> Estimate:
    """a - b, unit by unit, with an interval that resamples whole clusters of units (1D-ARC: the
    tasks of one family, which share their rule) instead of units: it allows for units of a
    cluster succeeding or failing together (with few clusters it is itself approximate; the
    percentile interval then tends to be too narrow). Each resample draws as many
    clusters as there are, with replacement, and takes the mean over all their units; with one
    unit per cluster it is `paired_difference`. The mean is over units; `n` counts clusters."""
    if not len(a) == len(b) == len(clusters):
        raise ValueError(f"paired values and their clusters need equal lengths, got {len(a)}, "
                         f"{len(b)} and {len(clusters)}")
    if not a:
        raise ValueError("no values to estimate from")
    groups: dict[str, list[float]] = {}
    for x, y, c in zip(a, b, clusters, strict=True):
        groups.setdefault(c, []).append(x - y)
    cells = list(groups.values())
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        drawn = rng.choices(cells, k=len(cells))
        means.append(sum(sum(g) for g in drawn) / sum(len(g) for g in drawn))
    means.sort()
    return Estimate(sum(sum(g) for g in cells) / len(a), means[int(0.025 * resamples)],
                    means[int(0.975 * resamples) - 1], len(cells))


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's correlation of paired values; None when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"correlation needs two equal-length lists of 2+ values, got {len(x)}, {len(y)}")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the ranks, ties at their mean rank)."""
    return pearson(ranks(x), ranks(y))


def agreement(proxy: list[float], absorbed: list[float]) -> dict[str, float | None]:
    """Spearman's and Pearson's r between a cheap reward (a proxy) and the absorbed reward over
    the same self-edits; None where either side is constant or fewer than 3 self-edits were absorbed."""
    if len(proxy) < 3:
        return {"spearman": None, "pearson": None}
    return {"spearman": spearman(proxy, absorbed), "pearson": pearson(proxy, absorbed)}
