"""SQuAD's metrics: per question, graded on the student's greedy answer (exact match, token F1,
the gold answer contained, a judge's yes/no) or read from the gold answer's log-probability."""

from __future__ import annotations

from loop.core.metrics import Metric

METRICS = (
    Metric("exact_match", "EM %", "exact match %", reward="exact_match"),
    Metric("f1", "F1 %", "token F1 %", reward="f1"),
    Metric("contains", "contains %", "gold contained %", reward="contains"),
    Metric("logprob", "logprob", "gold log-prob / token", percent=False, reward="answer_logprob"),
    Metric("judge", "judge %", "judge %", reward="judge"),
    # the cheap proxy: the frozen student's gold log-prob with the self-edit in its prompt
    Metric("context_logprob", "context logprob", "gold log-prob / token, self-edit in context",
           percent=False, reward="context_logprob", shown=False),
)
# what every question is scored on (the judge only with evaluate.judge or reward.metric=judge)
QUESTION_METRICS = ("exact_match", "f1", "contains", "logprob")


def passage_means(question_scores: list[dict]) -> dict[str, float | None]:
    """Per-context means of each metric; EM, F1, contains and judge as percentages.

    Judge errors (no clear yes/no) are left out of the judge's mean and counted in
    `judge_errors`; a context whose verdicts are all errors has no judge mean (None).
    """
    n = len(question_scores)
    out: dict[str, float | None] = {}
    for m in QUESTION_METRICS:
        mean = sum(q[m] for q in question_scores) / n
        out[m] = mean if m == "logprob" else 100 * mean
    if "judge" in question_scores[0]:
        verdicts = [q["judge"] for q in question_scores if q["judge"] is not None]
        out["judge"] = 100 * sum(verdicts) / len(verdicts) if verdicts else None
        out["judge_errors"] = n - len(verdicts)
    return out
