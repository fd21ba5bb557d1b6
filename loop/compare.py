"""`python -m loop.compare`: rows of several `loop.evaluate` folders side by side, paired by passage or task.

    python -m loop.compare outputs/dev_a:passage outputs/dev_a:teacher_base=implications-long \
        outputs/dev_b:teacher_base=rewrite
    python -m loop.compare --rewards outputs/dev_a:teacher_base   # would two rewards agree?
    python -m loop.compare --noise outputs/dev_a:teacher_base outputs/dev_a_seed1:teacher_base

Each argument is `<evaluation folder>:<condition>[=<label>]`. The rows are read back from the
folders' `scores.jsonl` (nothing is recomputed, nothing is written) and printed as
`loop.evaluate` prints its own: each row's mean with a 95% bootstrap interval and its paired
difference from every row listed before it. This is how settings that one evaluation cannot
hold together (two self-edit prompts, two inner-loop settings) are compared on the same
passages. The rows must hold the same passages, from evaluations with the same seed, student
and data (`run.json`), else the command says what differs: `loop.evaluate` derives every seed
from the run's seed and the passage, so a `passage` row recorded in one folder is then the one
another evaluation of those passages records (unless `evaluate.absorb_seed` or the student's
settings differ). The settings that do differ between the folders are printed under the
table.

ARC folders (`task=arc`, `task=arc1d`) compare the same way, paired by task: a row's unit is a
task's success rate over its self-edits, as `loop.evaluate` bootstraps it. `--shared` pairs the
rows on the passages or tasks every one of them holds whole, and says how many it left out: how
an evaluation still running (a 1D-ARC one runs for hours, across sessions) is read part way.
On 1D-ARC tasks each difference is also given with the task families resampled instead of the
tasks (the ARC domain's `summarise_units`).

    python -m loop.compare --shared outputs/eval1d:teacher_base outputs/eval1d:teacher
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)
from loop.core.cli import user_errors
from loop.core.domain import Domain, provided
from loop.core.errors import ConfigError
from loop.core.evaluation import condition_table
from loop.core.ledger import read_jsonl
from loop.tasks.squad.metrics import passage_means

# run.json keys that must agree for rows of two folders to pair: the seeds, the answerer, the data
# (not student.path: a bundled model's path is the machine's cache folder)
MUST_AGREE = ("seed", "student.name", "student.hub_id", "student.revision", "task.data",
              "task.split")
REWARD_METRICS = ("logprob", "f1", "contains")  # the per-question metrics a SQuAD reward can use


def parse_row(spec: str) -> tuple[Path, str, str]:
    """`folder:condition[=label]` -> (folder, condition, label). The folder is what comes before
    the last ':' (it may hold '=' and ':'); the label, which defaults to `<folder name>:<condition>`,
    may not hold ':'."""
    folder, sep, rest = spec.rpartition(":")
    condition, _, label = rest.partition("=")
    if not sep or not folder or not condition:
        raise ConfigError(f"a row is <evaluation folder>:<condition>[=<label>], got {spec!r}")
    path = Path(folder)
    return path, condition, label or f"{path.name}:{condition}"


def read_records(folder: Path, condition: str) -> list[dict]:
    """The `scores.jsonl` records of one condition in an evaluation folder, in the order
    `loop.evaluate` scored them (a resume: the last of a unit), read without touching the file
    (it may be running)."""
    scores = folder / "scores.jsonl"
    if not scores.exists():
        raise ConfigError(f"{folder} holds no scores.jsonl: not a loop.evaluate folder")
    records = read_jsonl(scores, repair=False)
    mine = {(r["context"], r.get("sample")): r for r in records if r["condition"] == condition}
    if not mine:
        held = sorted({r["condition"] for r in records})
        raise ConfigError(f"{scores} records no '{condition}' row; it records {held}")
    return list(mine.values())


def domain_of_records(records: list[dict], where: Path) -> Domain:
    """The domain whose `loop.evaluate` wrote these records."""
    for domain in provided().values():
        if domain.reads(records[0]):
            return domain
    raise ConfigError(f"{where}: its records are of no domain this version knows")


def settings(folder: Path) -> dict:
    """The flat config an evaluation folder recorded (`run.json`); {} for a folder without one."""
    path = folder / "run.json"
    return json.loads(path.read_text())["config"] if path.exists() else {}


def check_pairable(folders: list[Path]) -> list[str]:
    """Refuse folders whose rows would not pair (another seed, student or data); return the
    settings that differ between them otherwise (sorted)."""
    configs = {f: settings(f) for f in dict.fromkeys(folders)}
    first, *_ = configs
    differ = set()
    for folder, config in configs.items():
        for key in sorted(set(config) | set(configs[first])):
            a, b = configs[first].get(key), config.get(key)
            if a == b:
                continue
            if key in MUST_AGREE:
                raise ConfigError(f"{first} and {folder} differ in {key} ({a!r} vs {b!r}): "
                                  "their rows do not pair")
            differ.add(key)
    return sorted(differ - {"evaluate.conditions"})


def compare(specs: list[str], seed: int = 0, resamples: int = 10_000,
            shared: bool = False) -> tuple[dict, int, list[str], int]:
    """The summary (as `loop.evaluate`'s) of the named rows, paired by passage or task in the
    first row's order; the number of units paired; the settings that differ between the
    folders; the units left out (`shared`: those some row does not hold whole)."""
    rows: dict[str, dict[str, dict]] = {}
    kinds = {}
    folders = []
    partial: set[str] = set()  # tasks some row holds only in part
    for spec in specs:
        folder, condition, label = parse_row(spec)
        if label in rows:
            raise ConfigError(f"two rows are labelled {label!r}: give one a label (=<label>)")
        records = read_records(folder, condition)
        kinds[label] = domain_of_records(records, folder)
        rows[label], some = kinds[label].row_units(records, condition, settings(folder), folder)
        partial |= some
        folders.append(folder)
    if len({d.name for d in kinds.values()}) > 1:
        first = next(iter(kinds.values()))
        mine = sorted(label for label, d in kinds.items() if d.name == first.name)
        others = sorted({d.title for d in kinds.values() if d.name != first.name})
        raise ConfigError(f"rows {mine} are {first.title} evaluations and the others "
                          f"{' and '.join(others)}: compare evaluations of one task")
    first, *_ = rows
    order = list(rows[first])
    if shared:
        held = [u for u in order if all(u in row for row in rows.values())]
        left_out = len(set().union(*rows.values()) | partial) - len(held)
        order = held
        if not order:
            raise ConfigError("the rows hold no passage or task in common")
    else:
        left_out = 0
        if partial:
            raise ConfigError(f"tasks {sorted(partial)[:3]} have only some of their self-edits "
                              "recorded (an evaluation still running?): pair on the tasks all "
                              "rows hold whole with --shared")
        for label, row in rows.items():
            if set(row) != set(order):
                only = sorted(set(row) ^ set(order))
                raise ConfigError(f"rows {first!r} and {label!r} hold different passages or "
                                  f"tasks (e.g. {only[:3]}); compare evaluations of the same "
                                  "ones, or pair on those all rows hold with --shared")
    differ = check_pairable(folders)
    units = {label: [row[u] for u in order] for label, row in rows.items()}
    summary = next(iter(kinds.values())).summarise_units(units, order, seed, resamples)
    return summary, len(order), differ, left_out


def sample_means(folder: Path, condition: str) -> dict[str, list[dict[str, float]]]:
    """Per passage, per self-edit sample (in sample order): the means of each reward metric."""
    out: dict[str, list[dict[str, float]]] = {}
    records = read_records(folder, condition)
    if (domain := domain_of_records(records, folder)).name != "squad":
        raise ConfigError(f"{folder} is an {domain.title} evaluation: --rewards compares "
                          "SQuAD's reward metrics")
    for r in records:
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
    if not pairs:
        raise ConfigError("no passage has two self-edits: --rewards needs a self-edit row "
                          "(teacher_base, teacher, external) of evaluate.samples >= 2")
    out: dict[str, dict[str, float]] = {"n_pairs": {"all": float(len(pairs))}}
    out["tied"] = {m: sum(a[m] == b[m] for a, b in pairs) / len(pairs) for m in REWARD_METRICS}
    out["alike"], out["both_ordered"] = {}, {}
    for i, m in enumerate(REWARD_METRICS):
        for n in REWARD_METRICS[i + 1:]:
            both = [(a, b) for a, b in pairs if a[m] != b[m] and a[n] != b[n]]
            alike = sum((a[m] > b[m]) == (a[n] > b[n]) for a, b in both)
            out["alike"][f"{m}~{n}"] = alike / len(both) if both else float("nan")
            out["both_ordered"][f"{m}~{n}"] = float(len(both))
    return out


def rewards_report(specs: list[str]) -> str:
    """`--rewards`: the agreement of the reward metrics over the named rows' self-edits."""
    seen = [parse_row(spec)[:2] for spec in specs]
    if len(set(seen)) < len(seen):
        raise ConfigError("a row is named twice: its pairs would count twice")
    a = reward_agreement([sample_means(folder, condition) for folder, condition in seen])
    return "\n".join([
        f"{int(a['n_pairs']['all'])} pairs of self-edits of one passage",
        "tied (best-of-k cannot choose): " + ", ".join(
            f"{m} {v:.0%}" for m, v in a["tied"].items()),
        "ordered alike, of the pairs both metrics order: " + ", ".join(
            f"{k} {v:.0%} of {int(a['both_ordered'][k])}" for k, v in a["alike"].items())])


def noise(first: dict, second: dict, baseline: dict[str, dict[str, float]] | None
          ) -> dict[str, dict[str, float | None]]:
    """The same self-edits absorbed under two seeds (`sample_means` of each; `baseline`: per
    passage, the means subtracted from both, e.g. the `passage` row): per metric, the Spearman
    correlation of the self-edits' gains, the share whose gain has the same sign (> 0 or not:
    what `reward.filter=threshold` at 0 keeps), and of a passage's pairs that both seeds
    order, the share ordered alike (what best-of-k picks). Self-edits of both are paired by
    passage and sample."""
    from loop.core.stats import spearman

    keys = [(c, i) for c in first if c in second and (baseline is None or c in baseline)
            for i in range(min(len(first[c]), len(second[c])))]
    if len(keys) < 3:
        raise ConfigError(f"--noise pairs the two rows' self-edits by passage and sample; "
                          f"{len(keys)} are in both (at least 3 needed)")
    out: dict[str, dict[str, float | None]] = {"n": {"all": float(len(keys))}}
    for m in REWARD_METRICS:
        def gain(row, c, i, m=m):
            return row[c][i][m] - (baseline[c][m] if baseline is not None else 0.0)

        a = [gain(first, c, i) for c, i in keys]
        b = [gain(second, c, i) for c, i in keys]
        pairs = [((c, i), (c, j)) for c in {k[0] for k in keys}
                 for i in range(len(first[c])) for j in range(i + 1, len(first[c]))
                 if (c, j) in keys and (c, i) in keys]
        ordered = [(x, y) for x, y in pairs
                   if gain(first, *x) != gain(first, *y) and gain(second, *x) != gain(second, *y)]
        alike = sum((gain(first, *x) > gain(first, *y)) == (gain(second, *x) > gain(second, *y))
                    for x, y in ordered)
        out[m] = {"spearman": spearman(a, b),
                  "same_sign": sum((x > 0) == (y > 0) for x, y in zip(a, b, strict=True)) / len(a),
                  "positive": sum(x > 0 for x in a) / len(a),
                  "pairs_alike": alike / len(ordered) if ordered else None,
                  "pairs": float(len(ordered))}
    return out


def noise_report(specs: list[str]) -> str:
    """`--noise`: two rows of the same self-edits absorbed under two seeds
    (evaluate.absorb_seed), their gains over the first folder's `passage` row where it has one."""
    if len(specs) != 2:
        raise ConfigError("--noise compares two rows: the same self-edits under two absorb seeds")
    (fa, ca, _), (fb, cb, _) = (parse_row(s) for s in specs)
    check_pairable([fa, fb])  # the same seed, student and data
    texts = []
    for folder, cond in ((fa, ca), (fb, cb)):
        texts.append({(r["context"], r["sample"]): r["text"]
                      for r in read_jsonl(folder / "self_edits.jsonl", repair=False)
                      if r["condition"] == cond})
    shared = texts[0].keys() & texts[1].keys()
    if not shared or any(texts[0][k] != texts[1][k] for k in shared):
        raise ConfigError(f"{fa}:{ca} and {fb}:{cb} hold different self-edits: --noise needs the "
                          "same ones absorbed twice (copy self_edits.jsonl, change "
                          "evaluate.absorb_seed)")
    try:
        base = {r["context"]: {m: v for m, v in passage_means(r["questions"]).items()
                               if m in REWARD_METRICS} for r in read_records(fa, "passage")}
    except ConfigError:  # no passage row: the scores themselves
        base = None
    n = noise(sample_means(fa, ca), sample_means(fb, cb), base)
    what = "gain over the passage row" if base is not None else "score"
    lines = [f"{int(n['n']['all'])} self-edits absorbed under both seeds; per self-edit, its {what}"]
    for m in REWARD_METRICS:
        e = n[m]
        rho = "-" if e["spearman"] is None else f"{e['spearman']:.2f}"
        alike = "-" if e["pairs_alike"] is None else f"{e['pairs_alike']:.0%}"
        lines.append(f"{m}: Spearman {rho}; same sign under both seeds {e['same_sign']:.0%} "
                     f"(above 0 under the first: {e['positive']:.0%}); a passage's pairs ordered "
                     f"alike {alike} of {int(e['pairs'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loop.compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="+", metavar="FOLDER:CONDITION[=LABEL]")
    parser.add_argument("--seed", type=int, default=0,
                        help="the bootstrap's seed (the table; --rewards has none)")
    parser.add_argument("--shared", action="store_true",
                        help="pair on the passages or tasks every row holds whole (an evaluation "
                             "still running), and say how many were left out")
    parser.add_argument("--rewards", action="store_true",
                        help="instead: would the metrics, as rewards, pick the same of a passage's "
                             "self-edits? (ties, and pairs ordered alike, over the rows' samples)")
    parser.add_argument("--noise", action="store_true",
                        help="instead: two rows of the same self-edits absorbed under two seeds "
                             "(evaluate.absorb_seed): how much do their rewards agree?")
    args = parser.parse_args(argv)
    try:
        if args.noise:
            print(noise_report(args.rows))
            return 0
        if args.rewards:
            print(rewards_report(args.rows))
            return 0
        summary, n, differ, left_out = compare(args.rows, args.seed, shared=args.shared)
        folder, condition, _ = parse_row(args.rows[0])
        domain = domain_of_records(read_records(folder, condition), folder)
    except user_errors() as e:  # a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    unit = f"{domain.unit}s"
    footer = (f"{n} {unit}; mean over {unit} [95% bootstrap interval]; differences are paired "
              f"by {domain.unit}")
    if args.shared:
        footer += f"; left out: {left_out} (not held whole by every row)"
    print(condition_table(summary, n, 0, footer=footer))
    if lines := domain.summary_lines(summary):
        print("\n".join(lines))
    if differ:
        print("the folders' settings differ in: " + ", ".join(differ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
