"""SQuAD-format data: a JSON list of passages
`{"title": str, "context": str, "questions": [{"question": str, "answer": str}]}`
(`data/README.md`); any file in this format works through `task.data=<path>`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loop.core.domain import DataError, read_json


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


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string, got {value!r:.80}")
    return value


def load_squad(path: str | Path) -> list[Passage]:
    path = Path(path)
    rows = read_json(path, "set task.data=<path to a JSON file>")
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
