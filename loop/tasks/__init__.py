"""The domains: one package per domain, each behind the small interface of `loop.tasks.base`.

    loop/tasks/config.py  TaskConfig (the `task` config group)
    loop/tasks/base.py    the dev split, the seeded subset, Domain, Absorbed
    loop/tasks/squad/     SQuAD passages: data, absorbing and scoring, loop.evaluate's rows
    loop/tasks/arc/       ARC tasks: data, test-time training and pass@2, loop.evaluate's rows

`task.format` names the package. A third domain is one package, `loop/tasks/<name>/`, whose
`__init__` defines `DOMAIN` (an instance of a `Domain` subclass), and one
`conf/task/<name>.yaml` with `format: <name>`; nothing else names the domains.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from loop.tasks.base import DataError, Domain, TaskConfig


def formats() -> list[str]:
    """The domains there are: the packages in this folder."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.ispkg)


def domain(task: TaskConfig) -> Domain:
    """The domain `task.format` names (its package imported on first use)."""
    if task.format not in formats():
        raise DataError(f"unknown task.format '{task.format}'; choose {' or '.join(formats())}")
    return importlib.import_module(f"loop.tasks.{task.format}").DOMAIN


def load_contexts(task: TaskConfig, held_out: bool = False) -> list:
    """The contexts of task.data in the task's format: SQuAD passages or ARC tasks; only
    `task.ids` when set, else (`held_out`, loop.evaluate) only `task.eval_ids` when set."""
    return domain(task).load(task, held_out)
