"""Contexts and their downstream tasks. SQuAD knowledge incorporation for now.

The data format (`data/README.md`): a JSON list of passages
`{"title": str, "context": str, "questions": [{"question": str, "answer": str}]}`.
Any file of that format works through `task.data=<path>`.
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
    data: str = MISSING  # a JSON file in the shared format; relative paths are from the cwd
    n_contexts: int | None = None  # a seeded subset of this many contexts (None: all of them)
    # loop.evaluate: `single`, one fresh student per passage (the paper's main setting);
    # `together`, all passages (and their self-edits) absorbed in one training run, then every
    # question asked (the paper's continued-pretraining setting, task=squad_cpt)
    absorb: str = "single"


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
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (set task.data=<path to a JSON file>)") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
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


def select(passages: list[Passage], n: int | None, seed: int) -> list[Passage]:
    """A seeded subset of n passages in file order (all of them when n is None or too large)."""
    if n is None or n >= len(passages):
        return passages
    if n < 1:
        raise DataError(f"task.n_contexts must be at least 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(passages)), n))
    return [passages[i] for i in keep]
