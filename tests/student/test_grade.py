"""Grading against hand-computed cases, normalisation edge cases included."""

from __future__ import annotations

import pytest

from student.grade import contains, exact_match, f1, normalize, parse_verdict


@pytest.mark.parametrize(("text", "expected"), [
    ("The Eiffel Tower", "eiffel tower"),
    ("  A   cat, an owl & THE dog! ", "cat owl dog"),
    ("Theatre anthem", "theatre anthem"),  # articles only as whole words
    ("U.S.-based", "usbased"),  # punctuation is deleted, not replaced by spaces (SQuAD's rule)
    ("", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact_match():
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


@pytest.mark.parametrize(("pred", "gold", "expected"), [
    ("Denver Broncos", "Denver Broncos", 1.0),
    # pred tokens {in, 1853, crimean, war}, gold {1853}: p = 1/4, r = 1 -> 2pr/(p+r) = 0.4
    ("In 1853, the Crimean War", "1853", 0.4),
    # pred {king, otto}, gold {king, otto, of, greece}: p = 1, r = 1/2 -> 2/3
    ("King Otto", "King Otto of Greece", 2 / 3),
    ("Paris", "London", 0.0),
    # repeated tokens count once per occurrence: pred {a1 x2 ...}; common = min counts
    ("war war peace", "war peace peace", 2 * (2 / 3) * (2 / 3) / (4 / 3)),
    ("the", "a", 1.0),  # both empty after normalisation: SQuAD scores it as a match
    ("", "Paris", 0.0),
])
def test_f1(pred, gold, expected):
    assert f1(pred, gold) == pytest.approx(expected)


@pytest.mark.parametrize(("pred", "gold", "expected"), [
    ("It was King Otto of Greece.", "King Otto of Greece", 1.0),
    ("Ottoman", "Otto", 0.0),  # whole words only
    ("Piraeus", "Greek port at Piraeus", 0.0),
    ("anything", "the", 0.0),  # an empty gold answer never counts as contained
])
def test_contains(pred, gold, expected):
    assert contains(pred, gold) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("yes", True), ("Yes.", True), ("no", False), ("No, it is not.", False),
    ("yes and no", None), ("I cannot tell", None), ("", None), ("nobody knows; yesterday", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) is expected


def test_a_prediction_is_graded_on_its_first_line_and_kept_whole():
    """A student that answers, then goes on, is graded on the answer (hand-computed): over
    the whole text (11 tokens after normalising), F1 would be 2 * (1/11) / (1/11 + 1) = 1/6."""
    from student.evaluate import QuestionScore

    rambling = "\nParis\nQuestion: What is the capital of Italy? Answer: Rome and more."
    score = QuestionScore.graded("Capital of France?", "Paris", -0.5, rambling)
    assert (score.exact_match, score.f1, score.contains) == (1.0, 1.0, 1.0)
    assert score.prediction == rambling  # the raw text stays in the record (and for the judge)
    assert f1(rambling, "Paris") == pytest.approx(1 / 6)
    wrong = QuestionScore.graded("Capital of Italy?", "Rome", -0.5, rambling)
    assert (wrong.exact_match, wrong.f1, wrong.contains) == (0.0, 0.0, 0.0)  # Rome was line 2
