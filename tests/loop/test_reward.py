"""Rewards and filters against hand-computed cases."""

from __future__ import annotations

import pytest

from loop.core.reward import Scored, best_of_k, reward, threshold, top_fraction

# two contexts, three samples each; rewards by hand: after - baseline
SAMPLES = [Scored("a", 0, reward(0.30, 0.10)), Scored("a", 1, reward(0.50, 0.10)),
           Scored("a", 2, reward(0.50, 0.10)), Scored("b", 0, reward(0.05, 0.20)),
           Scored("b", 1, reward(0.20, 0.20)), Scored("b", 2, reward(0.10, 0.20))]


def key(kept):
    return sorted((s.context, s.sample) for s in kept)


def test_reward_is_gain_over_baseline():
    assert reward(0.5, 0.1) == pytest.approx(0.4)
    assert reward(0.1, 0.5) == pytest.approx(-0.4)


def test_best_of_k_keeps_one_per_context_even_without_gain():
    # a: samples 1 and 2 tie at +0.4 -> the lower index; b: best is sample 1 with 0.0 gain
    assert key(best_of_k(SAMPLES)) == [("a", 1), ("b", 1)]


def test_threshold_never_keeps_a_sample_without_gain():
    assert key(threshold(SAMPLES, tau=0.25)) == [("a", 1), ("a", 2)]
    assert key(threshold(SAMPLES, tau=0.0)) == [("a", 0), ("a", 1), ("a", 2)]
    assert key(threshold(SAMPLES, tau=-1.0)) == [("a", 0), ("a", 1), ("a", 2)]  # still > 0


def test_threshold_falls_back_to_the_rounds_best_share_when_too_few_pass():
    """reward.min_kept: with tau 0.25 only a's samples 1 and 2 pass (2); asking for at least 3
    keeps the round's best half instead (a 0, 1, 2 by reward), asking for 2 keeps the two."""
    from loop.core.reward import RewardConfig, keep

    assert key(keep(SAMPLES, RewardConfig(filter="threshold", tau=0.25, min_kept=2))) == [
        ("a", 1), ("a", 2)]
    assert key(keep(SAMPLES, RewardConfig(filter="threshold", tau=0.25, min_kept=3,
                                          fraction=0.5))) == [("a", 0), ("a", 1), ("a", 2)]
    # nothing beats a bar of 1.0: the best sixth of six is one self-edit, a's sample 1 (tie
    # with 2 goes to the lower index)
    assert key(keep(SAMPLES, RewardConfig(filter="threshold", tau=1.0, min_kept=1,
                                          fraction=1 / 6))) == [("a", 1)]
    assert keep(SAMPLES, RewardConfig(filter="threshold", tau=1.0)) == []  # min_kept 0
    # the best fifth (ceil(1.2) = 2) is fewer than min_kept=4: the best 4 (b's best has 0.0)
    assert key(keep(SAMPLES, RewardConfig(filter="threshold", tau=1.0, min_kept=4,
                                          fraction=0.2))) == [("a", 0), ("a", 1), ("a", 2),
                                                              ("b", 1)]


def test_top_fraction_ranks_the_whole_round():
    assert key(top_fraction(SAMPLES, 0.5)) == [("a", 0), ("a", 1), ("a", 2)]
    assert key(top_fraction(SAMPLES, 0.2)) == [("a", 1), ("a", 2)]  # ceil(1.2) = 2
    with pytest.raises(ValueError, match="fraction"):
        top_fraction(SAMPLES, 0.0)


@pytest.mark.parametrize("name", ["best_of_k", "threshold", "top_fraction"])
def test_no_filter_keeps_a_self_edit_with_nothing_to_train_on(name):
    """An empty self-edit that scored best (it often does: the passage alone is absorbed) is
    passed over for the best one with text; a context with only empty ones keeps none."""
    from loop.core.reward import RewardConfig, keep

    samples = [Scored("a", 0, 0.9, trainable=False), Scored("a", 1, 0.4),
               Scored("b", 0, 0.7, trainable=False)]
    kept = key(keep(samples, RewardConfig(filter=name, fraction=0.5)))
    assert kept == [("a", 1)]


def test_paired_gain_by_hand():
    from loop.core.reward import paired_gain

    # a judge with no verdict on a question leaves it out of both sides: only question 0 is
    # compared (100 - 0); unpaired means would give 100 - 50
    after = [{"judge": 1.0}, {"judge": None}, {"judge": 1.0}]
    before = [[{"judge": 0.0}, {"judge": 1.0}, {"judge": None}]]
    assert paired_gain(after, before, "judge") == (100.0, 0.0, 100.0)
    # several baseline runs (one per inner seed) are averaged: (-3 + -3) / 2, after -2
    lp = [{"logprob": -1.0}, {"logprob": -3.0}]
    runs = [[{"logprob": -2.0}, {"logprob": -4.0}], [{"logprob": -3.0}, {"logprob": -3.0}]]
    assert paired_gain(lp, runs, "answer_logprob") == (-2.0, -3.0, 1.0)
    assert paired_gain(lp, [], "answer_logprob") == (-2.0, 0.0, -2.0)  # baseline none
    assert paired_gain([{"judge": None}], [[{"judge": 1.0}]], "judge") == (None, None, 0.0)


def test_the_proxy_reward_by_hand():
    """context_logprob: the log-prob with the self-edit in the prompt minus the frozen student's
    closed-book log-prob, per question, paired: (-1 + -2) / 2 - (-3 + -2.5) / 2 = 1.25."""
    from loop.core.reward import paired_gain

    read = [{"context_logprob": -1.0}, {"context_logprob": -2.0}]
    closed = [{"logprob": -3.0}, {"logprob": -2.5}]
    assert paired_gain(read, [closed], "context_logprob") == (-1.5, -2.75, 1.25)
