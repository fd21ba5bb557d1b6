"""Fault injection for the reliability suite (tests/loop/test_faults.py).

`SEAL_FAULT=<point>:<n>` makes the process kill itself with SIGKILL, as the OOM killer or a
preempted node would, the n-th time it passes the named point; several points may be given,
comma-separated. Without the variable (always, outside the suite) a point costs one
environment lookup. The points sit where a kill would hurt most:

- `sample`: a batch of self-edits has just been recorded (the rest of the round's are not);
- `inner`: an inner-loop batch has just been written to the ledger;
- `train`: the teacher's M-step has just taken an optimiser step (its adapter is not saved);
- `save`: the M-step's adapter is staged next to its final folder, not yet renamed into place;
- `json`: a JSON record (a round's summary, results.json, run.json) is written to its temporary
  name, not yet renamed over the final one;
- `tracking`: a call to the tracker (metrics, a table, an artifact) is about to be sent.
"""

from __future__ import annotations

import os
import signal

POINTS = ("sample", "inner", "train", "save", "json", "tracking")
_passed: dict[str, int] = {}


def point(name: str) -> None:
    """Die here if SEAL_FAULT asks for this point at this count."""
    spec = os.environ.get("SEAL_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        target, _, count = item.strip().partition(":")
        if target == name:
            _passed[name] = _passed.get(name, 0) + 1
            if _passed[name] == int(count or 1):
                os.kill(os.getpid(), signal.SIGKILL)
