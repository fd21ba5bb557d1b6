"""Rewards and filters against hand-computed cases."""

from __future__ import annotations

import pytest

from loop.reward import Scored, best_of_k, reward, threshold, top_fraction

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


def test_top_fraction_ranks_the_whole_round():
    assert key(top_fraction(SAMPLES, 0.5)) == [("a", 0), ("a", 1), ("a", 2)]
    assert key(top_fraction(SAMPLES, 0.2)) == [("a", 1), ("a", 2)]  # ceil(1.2) = 2
    with pytest.raises(ValueError, match="fraction"):
        top_fraction(SAMPLES, 0.0)
