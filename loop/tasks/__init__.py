"""The domains: one module per domain, each behind the small interface of `loop.tasks.base`.

    loop/tasks/base.py    TaskConfig, the dev split, the seeded subset, Domain, Absorbed
    loop/tasks/squad/     SQuAD passages: data, absorbing and scoring, loop.evaluate's rows
    loop/tasks/arc/       ARC tasks: data, test-time training and pass@2, loop.evaluate's rows

A third domain is one package with a `Domain` subclass in its `__init__`, two lines in `domain` below, and a
`conf/task/<name>.yaml` with `format: <its name>` (and its name in `loop.checks`'s rule for
`task.format`).
"""

from __future__ import annotations

from loop.tasks.base import DataError, Domain, TaskConfig


def domain(task: TaskConfig) -> Domain:
    """The domain `task.format` names (its module imported on first use)."""
    if task.format == "squad":
        from loop.tasks.squad import Squad

        return Squad()
    if task.format == "arc":
        from loop.tasks.arc import Arc

        return Arc()
    raise DataError(f"unknown task.format '{task.format}'; choose squad or arc")


def load_contexts(task: TaskConfig, held_out: bool = False) -> list:
    """The contexts of task.data in the task's format: SQuAD passages or ARC tasks; only
    `task.ids` when set, else (`held_out`, loop.evaluate) only `task.eval_ids` when set."""
    return domain(task).load(task, held_out)
