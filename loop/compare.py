"""`python -m loop.compare`: rows of several `loop.evaluate` folders side by side, paired by passage.

    python -m loop.compare outputs/dev_a:passage outputs/dev_a:teacher_base=implications-long \
        outputs/dev_b:teacher_base=rewrite

Each argument is `<evaluation folder>:<condition>[=<label>]`. The rows are read back from the
folders' `scores.jsonl` (nothing is recomputed) and printed as `loop.evaluate` prints its own:
each row's mean with a 95% bootstrap interval and its paired difference from every row listed
before it. This is how settings that one evaluation cannot hold together (two self-edit prompts,
two `max_new_tokens`) are compared on the same passages: every row must hold the same passages,
else the command names the ones that differ. Pairing is sound because `loop.evaluate` seeds each
row by its passage, so a `passage` row recorded in one folder is the one the other would record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loop.errors import ConfigError
from loop.evaluate import format_table, passage_means, summarise
from loop.ledger import read_jsonl


def parse_row(spec: str) -> tuple[Path, str, str]:
    """`folder:condition[=label]` -> (folder, condition, label); the label defaults to
    `<folder name>:<condition>`."""
    where, _, label = spec.partition("=")
    folder, sep, condition = where.rpartition(":")
    if not sep or not folder or not condition:
        raise ConfigError(f"a row is <evaluation folder>:<condition>[=<label>], got {spec!r}")
    path = Path(folder)
    return path, condition, label or f"{path.name}:{condition}"


def read_row(folder: Path, condition: str) -> dict[str, dict]:
    """Per passage: the means of one condition recorded in an evaluation folder."""
    scores = folder / "scores.jsonl"
    if not scores.exists():
        raise ConfigError(f"{folder} holds no scores.jsonl: not a loop.evaluate folder")
    rows = {r["context"]: passage_means(r["questions"])
            for r in read_jsonl(scores) if r["condition"] == condition}
    if not rows:
        held = sorted({r["condition"] for r in read_jsonl(scores)})
        raise ConfigError(f"{scores} records no '{condition}' row; it records {held}")
    return rows


def compare(specs: list[str], seed: int = 0, resamples: int = 10_000) -> tuple[dict, int]:
    """The summary (as `loop.evaluate`'s) of the named rows, paired by passage."""
    rows: dict[str, dict[str, dict]] = {}
    for spec in specs:
        folder, condition, label = parse_row(spec)
        if label in rows:
            raise ConfigError(f"two rows are labelled {label!r}: give one a label (=<label>)")
        rows[label] = read_row(folder, condition)
    first, *_ = rows
    ids = sorted(rows[first])
    for label, row in rows.items():
        if sorted(row) != ids:
            only = sorted(set(row) ^ set(ids))
            raise ConfigError(f"rows {first!r} and {label!r} hold different passages (e.g. "
                              f"{only[:3]}); compare evaluations of the same passages")
    per_passage = {label: [row[i] for i in ids] for label, row in rows.items()}
    return summarise(per_passage, seed, resamples), len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loop.compare", description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="+", metavar="FOLDER:CONDITION[=LABEL]")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    args = parser.parse_args(argv)
    try:
        summary, n = compare(args.rows, args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary, n, 0, footer=f"{n} passages; mean over passages [95% bootstrap "
                                             "interval]; differences are paired by passage"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
