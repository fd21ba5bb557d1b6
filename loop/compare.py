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


REWARD_METRICS = ("logprob", "f1", "contains")


def sample_means(folder: Path, condition: str) -> dict[str, list[dict[str, float]]]:
    """Per passage, per self-edit sample (in sample order): the means of each metric."""
    out: dict[str, list[dict[str, float]]] = {}
    for r in read_jsonl(folder / "scores.jsonl"):
        if r["condition"] != condition:
            continue
        by_sample: dict[int, list[dict]] = {}
        for q in r["questions"]:
            by_sample.setdefault(q.get("sample", 0), []).append(q)
        out[r["context"]] = [{m: v for m, v in passage_means(qs).items() if m in REWARD_METRICS}
                             for _, qs in sorted(by_sample.items())]
    return out


def reward_agreement(rows: list[dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, float]]:
    """Would two rewards pick the same self-edit? Over every pair of samples of one passage:
    per metric, the share of pairs it cannot order (a tie: best-of-k then falls back on the
    sample index); per pair of metrics, among the pairs both order, the share ordered alike."""
    pairs = [(a, b) for row in rows for samples in row.values()
             for i, a in enumerate(samples) for b in samples[i + 1:]]
    out: dict[str, dict[str, float]] = {"n_pairs": {"all": float(len(pairs))}}
    for m in REWARD_METRICS:
        out.setdefault("tied", {})[m] = sum(a[m] == b[m] for a, b in pairs) / max(1, len(pairs))
    for i, m in enumerate(REWARD_METRICS):
        for n in REWARD_METRICS[i + 1:]:
            both = [(a, b) for a, b in pairs if a[m] != b[m] and a[n] != b[n]]
            alike = sum((a[m] > b[m]) == (a[n] > b[n]) for a, b in both)
            out.setdefault("alike", {})[f"{m}~{n}"] = alike / len(both) if both else float("nan")
            out.setdefault("both_ordered", {})[f"{m}~{n}"] = float(len(both))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loop.compare", description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="+", metavar="FOLDER:CONDITION[=LABEL]")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--rewards", action="store_true",
                        help="instead: would the metrics, as rewards, pick the same of a passage's "
                             "self-edits? (ties, and pairs ordered alike, over the rows' samples)")
    args = parser.parse_args(argv)
    try:
        if args.rewards:
            rows = [sample_means(*parse_row(spec)[:2]) for spec in args.rows]
            a = reward_agreement(rows)
            print(f"{int(a['n_pairs']['all'])} pairs of self-edits of one passage")
            print("tied (best-of-k cannot choose): " + ", ".join(
                f"{m} {v:.0%}" for m, v in a["tied"].items()))
            print("ordered alike, of the pairs both metrics order: " + ", ".join(
                f"{k} {v:.0%} of {int(a['both_ordered'][k])}" for k, v in a["alike"].items()))
            return 0
        summary, n = compare(args.rows, args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary, n, 0, footer=f"{n} passages; mean over passages [95% bootstrap "
                                             "interval]; differences are paired by passage"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
