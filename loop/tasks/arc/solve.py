"""ARC's scoring: the student test-time trained on a task's demonstrations as a self-edit
configures it (`student.arc.ttt`), then pass@2 on the test input; or in context only (`base`).

A score is a list with one entry, `{"success": 0.0 or 1.0, "logprob": ..., ...}`, so
`reward.metric=success` averages it like any other metric (in percent: a reward is 100 for a
solved task), and `reward.metric=answer_logprob` reads the mean log-probability per token of the
gold test output after training (dense: it moves when nothing is solved yet; None for a
self-edit that failed before training, which is then never kept).
"""

from __future__ import annotations

from dataclasses import dataclass

from loop.core.config import RunConfig
from loop.tasks.arc.data import ArcTask
from loop.tasks.base import Absorbed


def pairs(examples) -> list[tuple]:
    return [(e.input, e.output) for e in examples]


def prompt(task: ArcTask) -> list[dict]:
    from teacher.prompts import arc_prompt

    return arc_prompt(pairs(task.train))


def score_base(model, tokenizer, task: ArcTask, run: RunConfig) -> list[dict]:
    """The student as it is, in context only (the paper's ICL row)."""
    from student.arc.predict import solve

    result = solve(model, tokenizer, pairs(task.train), pairs(task.test), run.student.arc,
                   run.student.instruct)
    return [{"success": float(result.success), "logprob": result.logprob,
             "attempts": result.attempts, "answers": result.answers}]


def score_self_edits(model, tokenizer, task: ArcTask, texts: list[str], run: RunConfig,
                     seeds: list[int]) -> list[Absorbed]:
    """(scores, first and last training loss, why it failed before training) of each
    self-edit of one task: trained together, student.train.max_adapters at a time, unless
    student.train.batched=false."""
    from student.arc.ttt import absorb_and_solve, absorb_and_solve_many
    from student.config import batched_setting

    args = (model, tokenizer, pairs(task.train), pairs(task.test))
    # auto included: ARC's adapters train together on every device (1.05x one at a time on a
    # 2-core CPU, docs/batched.md)
    if batched_setting(run.student.train.batched) != "false":
        from student.batched import memory_advice

        with memory_advice(min(len(texts), run.student.train.max_adapters), run.student.train):
            results = absorb_and_solve_many(*args, texts, run.student.arc, run.student.instruct,
                                            seeds, run.student.train.max_adapters,
                                            run.student.train.pass_tokens)
    else:
        results = [absorb_and_solve(*args, text, run.student.arc, run.student.instruct, seed)
                   for text, seed in zip(texts, seeds, strict=True)]
    return [_row(result) for result in results]


def _row(result) -> Absorbed:
    losses = [result.losses[0], result.losses[-1]] if result.losses else []
    return Absorbed([{"success": float(result.success), "logprob": result.logprob,
                      "attempts": result.attempts, "answers": result.answers,
                      "tasks": result.tasks, "steps": result.steps}],
                    losses, result.failure)


@dataclass
class ArcBatch:
    """Self-edits of one task, each test-time trained with its own seed and scored."""

    task: ArcTask
    texts: list[str]
    seeds: list[int]
