"""The frozen student's score per context before any edit: computed once, kept in the run folder.

The student's base never changes, so its baseline answers on a context are the same for every
self-edit, condition and round. They are computed on first use and appended to
`<run folder>/baseline.jsonl`; a resumed run reads them back instead of answering again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loop.core.ledger import append_jsonl, read_jsonl


class BaselineCache:
    def __init__(self, path: Path, student: str):
        self.path, self.student = path, student
        self._scores: dict[str, Any] = {}
        for row in read_jsonl(path):
            if row["student"] == student:
                self._scores[row["context"]] = row["scores"]

    def get(self, context_id: str, compute: Callable[[], Any]) -> Any:
        """The cached scores of `context_id`, computing and recording them the first time."""
        if context_id not in self._scores:
            scores = compute()
            append_jsonl(self.path, {"context": context_id, "student": self.student,
                                     "scores": scores})
            self._scores[context_id] = scores
        return self._scores[context_id]
