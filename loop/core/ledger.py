"""Append-only records in the run folder, the basis of resume.

`ledger.jsonl` holds one line per inner-loop evaluation (one self-edit absorbed with one inner
seed, then scored), written and flushed as soon as it finishes. A resumed run reads the ledger
back and redoes nothing it finds there. A run killed mid-write leaves at most one torn last
line: it is dropped (and cut from the file) on reading, and that evaluation is simply redone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loop.core import faults

log = logging.getLogger(__name__)


def read_jsonl(path: Path, repair: bool = True) -> list[dict]:
    """The complete lines of a JSONL file; a torn last line (a killed writer) is cut off the
    file (`repair=False`: only left out, for a reader of a file another process may be writing)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        log.warning("%s: dropping a torn last line (%d bytes) left by a killed run", path,
                    len(data) - end)
        with path.open("r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]


def batches_to_run(keys: list, size: int, done: Container) -> list[list]:
    """The batches an uninterrupted run forms (`keys` in consecutive groups of `size`), less
    those whose keys are all in `done`.

    A batch that a killed run recorded only in part is returned whole, and its caller recomputes
    it whole but records only the missing keys: a result depends on its batch companions
    (padding and batch shapes choose the float kernels, whose last bits differ between CPUs), so
    only the same batch reproduces the uninterrupted run bit for bit. At most one batch per
    phase is computed twice.
    """
    groups = [keys[i : i + max(1, size)] for i in range(0, len(keys), max(1, size))]
    return [g for g in groups if any(k not in done for k in g)]


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line and push it to the disk before returning."""
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """A JSONL file replaced whole: absent, the old one, or the complete new one."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    staged.replace(path)


def write_json_atomic(path: Path, obj) -> None:
    """A JSON file that is either absent, the old one, or the complete new one."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps(obj, indent=2) + "\n")
    faults.point("json")
    staged.replace(path)


@dataclass
class Evaluation:
    """One inner-loop evaluation: a self-edit absorbed with one inner seed, then scored."""

    round: int
    context: str
    sample: int  # the self-edit's index among the context's k samples
    inner: int  # which of reward.inner_seeds
    self_edit_hash: str
    seed: int  # the derived seed of the fresh adapter and the data order
    metric: str
    baseline: float
    score: float
    reward: float
    seconds: float
    train_loss: list[float] = field(default_factory=list)  # first and last step
    scores: dict[str, float] = field(default_factory=dict)  # every metric computed, means
    failure: str | None = None  # why the self-edit was not absorbed (ARC: invalid, over budget)

    @property
    def key(self) -> tuple[int, str, int, int]:
        return (self.round, self.context, self.sample, self.inner)


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.done: dict[tuple[int, str, int, int], Evaluation] = {}
        for row in read_jsonl(path):
            e = Evaluation(**row)
            self.done[e.key] = e

    def get(self, round: int, context: str, sample: int, inner: int,
            self_edit_hash: str) -> Evaluation | None:
        e = self.done.get((round, context, sample, inner))
        if e is not None and e.self_edit_hash != self_edit_hash:
            raise RuntimeError(f"{self.path}: the recorded evaluation of {e.key} is of another "
                               "self-edit than the one in this run folder; the folder was mixed "
                               "up with another run")
        return e

    def add(self, e: Evaluation) -> None:
        append_jsonl(self.path, asdict(e))
        self.done[e.key] = e
