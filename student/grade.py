"""Grading answers against gold answers: SQuAD exact match and token F1, containment, a judge.

Exact match and F1 use the official SQuAD v1.1 normalisation (lower case, no punctuation, no
articles a/an/the, collapsed whitespace). "contains" asks whether the normalised gold answer
appears, as whole words, in the normalised prediction: the small CPU student rarely answers
with the exact span, so this is the accuracy the paper's judge approximates most closely.

The optional LLM judge uses SEAL's yes/no grading prompt on a local model. Where SEAL counts an
unparseable verdict as "wrong", we return None: the caller records it as a judge error.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_span(prediction: str) -> str:
    """What exact match, F1 and contains grade: the prediction's first non-empty line. A model
    goes on past its answer (the next question, a repeat, an explanation) until
    `max_new_tokens`; grading all of it would measure how long it talks, and an F1 reward would
    favour students that stop early. The whole text is kept in the records and is what the judge
    reads."""
    return next((line for line in prediction.splitlines() if line.strip()), "")


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, gold: str) -> float:
    ref = normalize(gold)
    return float(bool(ref) and f" {ref} " in f" {normalize(prediction)} ")


JUDGE_PROMPT = (
    "You are a grading assistant. Your job is to determine whether a student's answer correctly "
    "answers the question based solely on the provided gold answer. Do not use any outside "
    "knowledge. The student answer can include additional information, but it must at least fully "
    "convey the gold answer and must not contradict it. Ignore style, phrasing, or extra details "
    "that do not affect correctness. Respond ONLY with 'yes' or 'no'.\n\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {prediction}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'."
)
_YES, _NO = re.compile(r"\byes\b", re.I), re.compile(r"\bno\b", re.I)


def judge_prompt(question: str, gold: str, prediction: str) -> str:
    return JUDGE_PROMPT.format(question=question, gold=gold, prediction=prediction.strip())


def parse_verdict(text: str) -> bool | None:
    """True for yes, False for no, None when the judge said neither or both (a judge error)."""
    yes, no = bool(_YES.search(text)), bool(_NO.search(text))
    return None if yes == no else yes
