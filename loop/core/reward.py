"""Rewards and filters of the outer loop: pure functions, tested against hand-computed cases.

reward(self-edit) = student score after absorbing it - the student's baseline on that context.
With a frozen student the baseline is fixed, so a reward depends only on the self-edit's text.

Filters choose which self-edits the teacher is trained on (the M-step of ReST-EM):
- `best_of_k`: the best sample per context, whatever its reward (SEAL's rule);
- `threshold`: every sample whose gain exceeds `tau` (a sample with no gain is never kept);
  where fewer than `min_kept` pass, the round's `top_fraction` instead (at least `min_kept`);
- `top_fraction`: the best `fraction` of all samples of the round, ranked by reward.
Ties go to the lower sample index, so a filter's choice is deterministic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

from loop.core.metrics import is_log_probability, reward_field

log = logging.getLogger(__name__)

# where a baseline's value is read from when it is not the metric's own field: the proxy
# compares the self-edit in context with the frozen student's closed-book log-probability
BASELINE_FIELD = {"context_logprob": "logprob"}
FILTERS = ("best_of_k", "threshold", "top_fraction")
BASELINES = ("student", "passage", "passage_matched", "none")


@dataclass
class RewardConfig:
    """How a self-edit's reward is measured and which self-edits the teacher learns from."""

    # exact_match, f1, contains (percent of questions), judge (percent judged correct by the
    # `judge` preset), answer_logprob (mean log-prob per gold-answer token: dense and needs
    # no generation, the clearest signal on a small student), or context_logprob (the cheap
    # proxy: the same log-prob of the frozen student with the self-edit in its prompt, minus
    # without it; nothing is absorbed)
    metric: str = "answer_logprob"
    # what a self-edit's score is compared with: `student`, the frozen student (SEAL); or
    # `passage`, the student after absorbing the passage alone (a gain is then what the
    # self-edit adds to the passage, which the inner loop trains on too); or `none` (0: the
    # reward is the score itself, the paper's ARC reward); or `passage_matched`, the passage
    # alone trained for as many steps as a self-edit whose units fill one batch (with
    # student.train.passage_steps=own: twice the passage's; a gain is then what the self-edit's
    # content adds beyond training longer)
    baseline: str = "student"
    filter: str = "best_of_k"  # best_of_k (SEAL), threshold (gain > tau), top_fraction
    tau: float = 0.0  # threshold: keep gains above this (never below 0: no gain is never kept)
    fraction: float = 0.25  # top_fraction: the share of the round's self-edits kept
    # threshold: where fewer self-edits than this pass the bar, the round keeps its best
    # `fraction` instead (top_fraction; never fewer than min_kept), so an M-step is never
    # starved; 0: never
    min_kept: int = 0
    inner_seeds: int = 1  # each self-edit absorbed this many times with different seeds, averaged
    judge: str | None = None  # a model preset (conf/model/) for metric=judge
    # two-stage screening: rank each context's k self-edits by the proxy (context_logprob) and
    # absorb only the best `screen` of them for the reward; null: absorb all k
    screen: int | None = None

    ACCEPTS: ClassVar[dict] = {  # metric: the domains' metrics, checked by loop.core.checks
        "baseline": {"one of": BASELINES},
        "filter": {"one of": FILTERS},
        "tau": "finite",
        "fraction": ("in (0, 1]", "a share of the round's self-edits, in (0, 1]"),
        "min_kept": (">= 0", "at least 0 (0: the threshold filter never falls back)"),
        "inner_seeds": ">= 1",
        "screen": ("null or >= 1", "at least 1, or null (absorb every self-edit)"),
    }


def context_score(questions: list[dict], metric: str, field: str | None = None) -> float | None:
    """A context's score: the mean over its questions of the metric's field (or `field`), in
    percent except for log-probabilities.

    Judge errors (no clear yes/no) are left out; None when no question has a verdict.
    """
    field = field or reward_field(metric)
    values = [q[field] for q in questions if q.get(field) is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean if is_log_probability(metric) else 100 * mean


def paired_gain(after: list[dict], before: list[list[dict]],
                metric: str) -> tuple[float | None, float | None, float]:
    """(score, baseline, reward) of one evaluation. `before` holds the baseline's per-question
    scores, one list per run (one per inner seed with reward.baseline=passage; none with
    reward.baseline=none, when the reward is the score itself). Both sides are means over the
    same questions: those with a value after and in every baseline run, so a judge that gave
    no verdict on a question leaves it out of both sides, never out of one. Nothing to compare:
    (None, None, 0.0)."""
    field = reward_field(metric)
    base_field = BASELINE_FIELD.get(metric, field)
    use = [n for n, q in enumerate(after) if q.get(field) is not None
           and all(b[n].get(base_field) is not None for b in before)]
    if not use:
        return None, None, 0.0
    score = context_score([after[n] for n in use], metric)
    if not before:
        return score, 0.0, score
    base = sum(context_score([b[n] for n in use], metric, base_field) for b in before) / len(before)
    return score, base, reward(score, base)


@dataclass
class Scored:
    context: str
    sample: int
    reward: float
    # whether the M-step has text to train on (not empty, not one line that max_new_tokens cut)
    # and a score (loop.core.rounds.kept_self_edits): no filter keeps a self-edit without, so a
    # passage's pick is one the teacher can learn from
    trainable: bool = True


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
    """The filter named by `cfg.filter`, over the trainable samples (an empty self-edit is
    recorded and scored, but never kept)."""
    samples = [s for s in samples if s.trainable]
    if cfg.filter == "best_of_k":
        return best_of_k(samples)
    if cfg.filter == "threshold":
        kept = threshold(samples, cfg.tau)
        if len(kept) < cfg.min_kept:  # too few beat the bar: the round's best share instead
            n = max(cfg.min_kept, math.ceil(cfg.fraction * len(samples)))
            log.info("reward.filter=threshold kept %d of %d self-edits, fewer than "
                     "reward.min_kept=%d: keeping the best %d of them instead (the best "
                     "reward.fraction=%g, never fewer than min_kept)", len(kept), len(samples),
                     cfg.min_kept, n, cfg.fraction)
            return top_fraction(samples, min(1.0, n / len(samples)))
        return kept
    if cfg.filter == "top_fraction":
        return top_fraction(samples, cfg.fraction)
    raise ValueError(f"unknown reward.filter '{cfg.filter}'; choose from {list(FILTERS)}")


def top_fraction(samples: list[Scored], fraction: float) -> list[Scored]:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranked = sorted(samples, key=lambda s: (-s.reward, s.context, s.sample))
    return ranked[: math.ceil(fraction * len(samples))]
