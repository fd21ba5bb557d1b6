"""Rewards and filters of the outer loop: pure functions, tested against hand-computed cases.

reward(self-edit) = student score after absorbing it - the student's baseline on that context.
With a frozen student the baseline is fixed, so a reward depends only on the self-edit's text.

Filters choose which self-edits the teacher is trained on (the M-step of ReST-EM):
- `best_of_k`: the best sample per context, whatever its reward (SEAL's rule);
- `threshold`: every sample whose gain exceeds `tau` (a sample with no gain is never kept);
- `top_fraction`: the best `fraction` of all samples of the round, ranked by reward.
Ties go to the lower sample index, so a filter's choice is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Scored:
    context: str
    sample: int
    reward: float


def reward(score_after: float, baseline: float) -> float:
    return score_after - baseline


def best_of_k(samples: list[Scored]) -> list[Scored]:
    best: dict[str, Scored] = {}
    for s in samples:
        b = best.get(s.context)
        if b is None or (s.reward, -s.sample) > (b.reward, -b.sample):
            best[s.context] = s
    return list(best.values())


def threshold(samples: list[Scored], tau: float) -> list[Scored]:
    return [s for s in samples if s.reward > max(tau, 0.0)]


def top_fraction(samples: list[Scored], fraction: float) -> list[Scored]:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranked = sorted(samples, key=lambda s: (-s.reward, s.context, s.sample))
    return ranked[: math.ceil(fraction * len(samples))]
