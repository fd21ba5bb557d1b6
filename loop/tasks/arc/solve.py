"""ARC's scoring: the student test-time trained on a task's demonstrations as a self-edit
configures it (`student.arc.ttt`), then pass@2 on the test input; or in context only (`base`).

A score is a list with one entry, `{"success": 0.0 or 1.0, "logprob": ..., ...}`, so
`reward.metric=success` averages it like any other metric (in percent: a reward is 100 for a
solved task), and `reward.metric=answer_logprob` reads the mean log-probability per token of the
gold test output after training (dense: it moves when nothing is solved yet; None for a
self-edit that failed before training, which is then never kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loop.core.config import RunConfig
from loop.core.domain import Absorbed
from loop.tasks.arc.data import ArcTask
from loop.tasks.arc.prompts import arc_prompt
from student.arc.augment import FAMILIES
from student.arc.predict import solve
from student.arc.selfedit import FLAGS, STRATEGIES, TTTConfig
from student.arc.ttt import absorb_and_solve, absorb_and_solve_many, training_tasks
from student.batched import memory_advice
from student.config import batched_setting


def pairs(examples) -> list[tuple]:
    return [(e.input, e.output) for e in examples]


def prompt(task: ArcTask, run: RunConfig | None = None) -> list[dict]:
    """The teacher's prompt for a task: SEAL's, or with teacher.sampling.arc_prompt=limits the
    same with the limits the student enforces (`limits`) appended."""
    told = run is not None and run.teacher.sampling.arc_prompt == "limits"
    return arc_prompt(pairs(task.train), limits(task, run.student.arc) if told else None)


def limits(task: ArcTask, settings) -> str:
    """What makes an ARC self-edit fail before training, written from the settings that decide
    it (student.arc: the learning-rate range, the epochs, the step budget, the batch) and, for
    the budget, this task's own number of training tasks under each augmentation family (no
    family, each alone, all four), as `student.arc.ttt.training_tasks` builds them (the seed of
    a family's random transforms moves the counts a little; tasks longer than
    student.arc.max_tokens, dropped later, are counted)."""
    low, high = settings.lr_range
    batch = max(1, settings.batch_size)
    flag = {fam: key for key, fam in FLAGS.items()}

    def line(label: str, families: tuple[str, ...]) -> str:
        n = len(training_tasks(pairs(task.train), TTTConfig(families, "output", low, 1),
                               settings, 0))
        if not n:
            return f"    - {label}: no training task (every configuration fails)"
        per_epoch = math.ceil(n / batch)
        most = min(settings.max_epochs, settings.max_steps // per_epoch)
        allowed = (f"at most {most} epoch{'s' if most > 1 else ''}" if most else
                   "over the budget even for 1 epoch")
        return f"    - {label}: about {n} training tasks, {per_epoch} steps per epoch: {allowed}"

    options = [line("no augmentation", ())]
    options += [line(f"{flag[f]} only", (f,)) for f in FAMILIES]
    options.append(line("all four", tuple(FAMILIES)))
    strategies = " or ".join(f'"{s}"' for s in STRATEGIES)
    return "\n".join([
        "### Limits",
        "",
        "This pipeline refuses a configuration outside these limits; a refused configuration "
        "trains nothing and counts as a failure:",
        f"- learning_rate: a number from {low:g} to {high:g}",
        f"- num_train_epochs: a whole number from 1 to {settings.max_epochs}",
        f"- strategy: exactly {strategies}",
        "- each use_..._augmentations: true or false",
        f"- at most {settings.max_steps} optimiser steps in all, {batch} training tasks per step: "
        f"steps = num_train_epochs x ceil(training tasks / {batch}). The augmentations switched "
        "on decide how many training tasks there are; for this task:",
        *options,
    ])


def score_base(model, tokenizer, task: ArcTask, run: RunConfig) -> list[dict]:
    """The student as it is, in context only (the paper's ICL row)."""
    result = solve(model, tokenizer, pairs(task.train), pairs(task.test), run.student.arc,
                   run.student.instruct)
    return [{"success": float(result.success), "logprob": result.logprob,
             "attempts": result.attempts, "answers": result.answers}]


def score_self_edits(model, tokenizer, task: ArcTask, texts: list[str], run: RunConfig,
                     seeds: list[int]) -> list[Absorbed]:
    """(scores, first and last training loss, why it failed before training) of each
    self-edit of one task: trained together, student.train.max_adapters at a time, unless
    student.train.batched=false."""
    args = (model, tokenizer, pairs(task.train), pairs(task.test))
    # auto included: ARC's adapters train together on every device (measured: docs/batched.md)
    if batched_setting(run.student.train.batched) != "false":
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
