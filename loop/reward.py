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

# reward.metric -> the per-question field it averages (loop.evaluate's column names)
METRICS = {"exact_match": "exact_match", "f1": "f1", "contains": "contains", "judge": "judge",
           "answer_logprob": "logprob", "success": "success"}  # success: ARC pass@2
FILTERS = ("best_of_k", "threshold", "top_fraction")
BASELINES = ("student", "passage", "none")


@dataclass
class RewardConfig:
    """How a self-edit's reward is measured and which self-edits the teacher learns from."""

    # exact_match, f1, contains (percent of questions), judge (percent judged correct by the
    # `judge` preset), or answer_logprob (mean log-prob per gold-answer token: dense and needs
    # no generation, the clearest signal on a small student)
    metric: str = "answer_logprob"
    # what a self-edit's score is compared with: `student`, the frozen student (SEAL); or
    # `passage`, the student after absorbing the passage alone (a gain is then what the
    # self-edit adds to the passage, which the inner loop trains on too); or `none` (0: the
    # reward is the score itself, the paper's ARC reward)
    baseline: str = "student"
    filter: str = "best_of_k"  # best_of_k (SEAL), threshold (gain > tau), top_fraction
    tau: float = 0.0  # threshold: keep gains above this (never below 0: no gain is never kept)
    fraction: float = 0.25  # top_fraction: the share of the round's self-edits kept
    inner_seeds: int = 1  # each self-edit absorbed this many times with different seeds, averaged
    judge: str | None = None  # a model preset (conf/model/) for metric=judge


def context_score(questions: list[dict], metric: str) -> float | None:
    """A context's score: the mean over its questions, in percent except for log-probability.

    Judge errors (no clear yes/no) are left out; None when no question has a verdict.
    """
    values = [q[METRICS[metric]] for q in questions if q.get(METRICS[metric]) is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean if metric == "answer_logprob" else 100 * mean


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


def keep(samples: list[Scored], cfg: RewardConfig) -> list[Scored]:
    """The filter named by `cfg.filter`."""
    if cfg.filter == "best_of_k":
        return best_of_k(samples)
    if cfg.filter == "threshold":
        return threshold(samples, cfg.tau)
    if cfg.filter == "top_fraction":
        return top_fraction(samples, cfg.fraction)
    raise ValueError(f"unknown reward.filter '{cfg.filter}'; choose from {list(FILTERS)}")


def top_fraction(samples: list[Scored], fraction: float) -> list[Scored]:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranked = sorted(samples, key=lambda s: (-s.reward, s.context, s.sample))
    return ranked[: math.ceil(fraction * len(samples))]
