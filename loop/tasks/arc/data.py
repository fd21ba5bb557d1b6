"""ARC data in Kaggle's format (`data/README.md`): a challenges file `{task id: {"train":
[{"input", "output"}], "test": [{"input"}]}}` and its solutions file `{task id: [output grid per
test input]}`; `task.data` names the challenges file, the solutions file is found by name or
given as `task.solutions`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loop.core.domain import DataError, read_json
from student.arc.grids import check


@dataclass
class Example:
    input: list[list[int]]
    output: list[list[int]]


@dataclass
class ArcTask:
    id: str  # the task's id in the file (e.g. "6150a2bd")
    train: list[Example]  # the demonstrations: the context the teacher and student see
    test: list[Example]  # the held-out inputs with their solutions: the downstream task


def solutions_path(challenges: str | Path, solutions: str | None = None) -> Path:
    if solutions:
        return Path(solutions)
    path = Path(challenges)
    if "challenges" not in path.name:
        raise DataError(f"{path}: cannot guess its solutions file (no 'challenges' in the name); "
                        "set task.solutions=<path>")
    return path.with_name(path.name.replace("challenges", "solutions"))


def load_arc(challenges: str | Path, solutions: str | Path | None = None) -> list[ArcTask]:
    """ARC tasks in the Kaggle format, every grid validated; the message of a bad entry names
    the file, the task and the grid."""
    path = Path(challenges)
    sol_path = solutions_path(path, str(solutions) if solutions else None)
    tasks_json = read_json(path, "set task.data=<an ARC challenges file>")
    sols = read_json(sol_path, "the solutions file; set task.solutions=<path>")
    if not isinstance(tasks_json, dict) or not tasks_json:
        raise DataError(f"{path}: expected a non-empty JSON object of task id -> task")
    if not isinstance(sols, dict):
        raise DataError(f"{sol_path}: expected a JSON object of task id -> output grids")
    tasks = []
    for tid, task in tasks_json.items():
        where = f"{path}: task {tid}"
        try:
            if not isinstance(task, dict):
                raise ValueError("expected an object with train and test")
            train, test = task.get("train"), task.get("test")
            if not isinstance(train, list) or not train:
                raise ValueError("'train' must be a non-empty list of examples")
            if not isinstance(test, list) or not test:
                raise ValueError("'test' must be a non-empty list of inputs")
            demos = []
            for i, ex in enumerate(train):
                if not isinstance(ex, dict):
                    raise ValueError(f"train {i}: expected an object with input and output")
                demos.append(Example(check(ex.get("input"), f"train {i} input"),
                                     check(ex.get("output"), f"train {i} output")))
            outs = sols.get(tid)
            if not isinstance(outs, list) or len(outs) != len(test):
                raise DataError(f"{sol_path}: task {tid}: expected {len(test)} output grid(s), "
                                f"got {outs!r:.60}")
            tests = []
            for i, (ex, out) in enumerate(zip(test, outs, strict=True)):
                if not isinstance(ex, dict):
                    raise ValueError(f"test {i}: expected an object with input")
                tests.append(Example(check(ex.get("input"), f"test {i} input"),
                                     check(out, f"{sol_path.name} output {i}")))
        except ValueError as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{where}: {e}") from None
        tasks.append(ArcTask(tid, demos, tests))
    return tasks
