"""Contexts and their downstream tasks: SQuAD passages and ARC tasks.

The data formats (`data/README.md`):
- squad: a JSON list of passages
  `{"title": str, "context": str, "questions": [{"question": str, "answer": str}]}`;
- arc (Kaggle's): a challenges file `{task id: {"train": [{"input", "output"}], "test":
  [{"input"}]}}` and its solutions file `{task id: [output grid per test input]}`.
Any file of either format works through `task.data=<path>` (for ARC, the challenges file; the
solutions file is found by name or given as `task.solutions`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING


@dataclass
class TaskConfig:
    name: str = MISSING  # the task's name; also the MLflow experiment's name
    format: str = "squad"  # squad (passages and questions) or arc (few-shot grid tasks)
    data: str = MISSING  # a JSON file in the shared format; relative paths are from the cwd
    n_contexts: int | None = None  # a seeded subset of this many contexts (None: all of them)
    # loop.evaluate: `single`, one fresh student per passage (the paper's main setting);
    # `together`, all passages (and their self-edits) absorbed in one training run, then every
    # question asked (the paper's continued-pretraining setting, task=squad_cpt)
    absorb: str = "single"
    # arc: the solutions file; None: the challenges file's name with "challenges" -> "solutions"
    solutions: str | None = None
    ids: list[str] | None = None  # only these contexts (ARC task ids; SQuAD "<file>/<index>")
    # what loop.evaluate reads by default (the held-out set): its data file and ids
    eval_data: str | None = None
    eval_ids: list[str] | None = None
    # a development part of task.data, the same for every run and seed: `train` leaves its
    # `dev_size` passages out (what the loop trains the teacher on), `dev` keeps only them
    # (where every choice is made, so the evaluation set is touched once), `all` keeps all
    split: str = "all"
    dev_size: int = 50


@dataclass
class Question:
    question: str
    answer: str


@dataclass
class Passage:
    id: str  # "<file stem>/<index in the file>": stable across runs, used for seeds and resume
    title: str
    context: str
    questions: list[Question]


class DataError(ValueError):
    """A dataset file that does not match the format; the message names the file and entry."""


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string, got {value!r:.80}")
    return value


def load_squad(path: str | Path) -> list[Passage]:
    path = Path(path)
    rows = _read_json(path, "set task.data=<path to a JSON file>")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list of passages")
    passages = []
    for i, row in enumerate(rows):
        where = f"{path}: passage {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with title, context, questions")
        qs = row.get("questions")
        if not isinstance(qs, list) or not qs:
            raise DataError(f"{where}: 'questions' must be a non-empty list")
        questions = []
        for j, q in enumerate(qs):
            if not isinstance(q, dict):
                raise DataError(f"{where}, question {j}: expected an object with question, answer")
            questions.append(Question(_text(q, "question", f"{where}, question {j}"),
                                      _text(q, "answer", f"{where}, question {j}")))
        passages.append(Passage(f"{path.stem}/{i}", _text(row, "title", where),
                                _text(row, "context", where), questions))
    return passages


def load_contexts(task: TaskConfig, held_out: bool = False) -> list:
    """The contexts of task.data in the task's format: SQuAD passages or ARC tasks; only
    `task.ids` when set, else (`held_out`, loop.evaluate) only `task.eval_ids` when set."""
    if task.format not in ("squad", "arc"):
        raise DataError(f"unknown task.format '{task.format}'; choose squad or arc")
    contexts = load_arc(task.data, task.solutions) if task.format == "arc" else load_squad(task.data)
    contexts = split(contexts, task.split, task.dev_size)
    ids, key = (task.ids, "task.ids") if task.ids is not None or not held_out else (
        task.eval_ids, "task.eval_ids")
    if ids is None:
        return contexts
    by_id = {c.id: c for c in contexts}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{task.data}: no context with id {missing[0]} ({key}); it has "
                        f"{', '.join(list(by_id)[:12])}{' ...' if len(by_id) > 12 else ''}")
    return [by_id[i] for i in ids]


# the dev split's own seed: never a run's seed, so that no run, whatever its seed, moves a
# passage between the teacher's training passages and the dev passages
DEV_SEED = 20_261_130


def split(contexts: list, which: str, dev_size: int) -> list:
    """`task.split` of a file's contexts, in file order: the seeded `dev_size` dev contexts,
    the rest (`train`), or all of them."""
    if which == "all":
        return contexts
    if which not in ("train", "dev"):
        raise DataError(f"unknown task.split '{which}'; choose all, train or dev")
    if dev_size >= len(contexts):
        raise DataError(f"task.split={which} with task.dev_size={dev_size}: the file has only "
                        f"{len(contexts)} contexts; set task.split=all to use every one of them "
                        "(or a smaller task.dev_size)")
    dev = set(random.Random(DEV_SEED).sample(range(len(contexts)), dev_size))
    return [c for i, c in enumerate(contexts) if (i in dev) == (which == "dev")]


def select(passages: list[Passage], n: int | None, seed: int) -> list[Passage]:
    """A seeded subset of n passages in file order (all of them when n is None or too large)."""
    if n is None or n >= len(passages):
        return passages
    if n < 1:
        raise DataError(f"task.n_contexts must be at least 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(passages)), n))
    return [passages[i] for i in keep]


@dataclass
class Example:
    input: list[list[int]]
    output: list[list[int]]


@dataclass
class ArcTask:
    id: str  # the task's id in the file (e.g. "6150a2bd")
    train: list[Example]  # the demonstrations: the context the teacher and student see
    test: list[Example]  # the held-out inputs with their solutions: the downstream task


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file ({what})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


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
    from student.arc.grids import check

    path = Path(challenges)
    sol_path = solutions_path(path, str(solutions) if solutions else None)
    tasks_json = _read_json(path, "set task.data=<an ARC challenges file>")
    sols = _read_json(sol_path, "the solutions file; set task.solutions=<path>")
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
