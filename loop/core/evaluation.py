"""What every evaluation shares (`loop.evaluate`, `loop.compare`, each domain's rows): the
launch checks and the run folder, the self-edits of the teacher conditions, intervals and
paired differences, and the text table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from loop.core.adapters import resolve_adapter
from loop.core.checks import check_settings, validate_backends
from loop.core.cli import check_models
from loop.core.config import ConfigError, RunConfig
from loop.core.ledger import append_jsonl, batches_to_run, read_jsonl
from loop.core.metrics import shown
from loop.core.runfolder import check_resume, check_tracking
from loop.core.sampling import make_generator
from loop.core.seeds import derive_seed
from loop.core.stats import bootstrap, paired_difference
from teacher.external import EndpointGenerator
from teacher.model import load_teacher

log = logging.getLogger(__name__)

TEACHER_CONDITIONS = ("teacher_base", "teacher")  # sampled from the local teacher


SELF_EDIT_CONDITIONS = (*TEACHER_CONDITIONS, "external")


def open_evaluation(run: RunConfig, out_dir: Path, command: str,
                    allowed: tuple[str, ...]) -> tuple[Path, dict, list[str]]:
    """What every evaluation checks before working, so a mistake fails at launch: the
    conditions, the models, `teacher.adapter`; then its run folder (a new one, or the one
    `resume=` continues). Returns (run folder, its run.json record, teacher conditions asked)."""
    check_settings(run)
    validate_backends(run)
    check_tracking(run)
    unknown = sorted(set(run.evaluate.conditions) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown evaluate.conditions {unknown} for task={run.task.name}; "
                          f"choose from {list(allowed)}")
    teacher_conditions = [c for c in SELF_EDIT_CONDITIONS if c in run.evaluate.conditions]
    if run.evaluate.sample_only and not teacher_conditions:
        raise ConfigError(f"evaluate.sample_only=true samples self-edits, and none of "
                          f"evaluate.conditions={list(run.evaluate.conditions)} has any: add "
                          f"{' or '.join(SELF_EDIT_CONDITIONS)}")
    local = [c for c in TEACHER_CONDITIONS if c in run.evaluate.conditions]
    check_models(run, roles=("teacher", "student") if local else ("student",))
    if run.teacher.adapter and "teacher" in teacher_conditions and not (
            run.resume and sampled_before(Path(run.resume), "teacher")):
        resolve_adapter(run.teacher.adapter, run)  # a wrong path fails now, not after sampling
    if "external" in teacher_conditions:
        EndpointGenerator(run.evaluate.external, run.teacher.sampling).check()
    out_dir = Path(run.resume) if run.resume else Path(out_dir)
    # an evaluation never trains the teacher: teacher.train.* may differ from the record
    record = check_resume(run, out_dir, command, grows=added_conditions,
                          unread=("teacher.train.",))
    # this command, not the record's: it reproduces the recorded config, and what it changed
    # that the results do not depend on (evaluate.sample_only, how the work is batched) is
    # what the user asked for now
    print(f"resume after a crash with: {command} resume={out_dir}")
    return out_dir, record, teacher_conditions


def sampled_before(out_dir: Path, condition: str) -> bool:
    """Whether a resumed evaluation recorded self-edits of `condition`: its adapter was then
    checked, and is read again only for self-edits still to sample (`sample_self_edits`), so a
    folder whose `teacher` row is sampled resumes where that adapter no longer exists."""
    return any(r["condition"] == condition
               for r in read_jsonl(out_dir / "self_edits.jsonl", repair=False))


def added_conditions(old: dict, new: dict) -> set[str]:
    """The keys a resume may change when it adds rows: `evaluate.conditions` (a superset of the
    recorded one), and the settings of a row that is new (`teacher.adapter` for `teacher`,
    `evaluate.external.*` for `external`). Rows already recorded keep their exact config."""
    before, after = old.get("evaluate.conditions"), new.get("evaluate.conditions")
    if not (isinstance(before, list) and isinstance(after, list)
            and set(before) < set(after)):
        return set()
    keys = {"evaluate.conditions"}
    if "teacher" not in before:
        keys.add("teacher.adapter")
    if "external" not in before:
        keys |= {k for k in new if k.startswith("evaluate.external.")}
    return keys


def sample_self_edits(run: RunConfig, passages, out_dir: Path,
                      prompt: Callable) -> dict[str, dict[str, list[str]]]:
    """{condition: {passage id: self-edits}} for the self-edit conditions asked for, recorded
    in `self_edits.jsonl` (condition, context, sample, seed, text). Those already recorded (a
    resumed evaluation) are read back; each sample has its own seed, so the rest are drawn
    exactly as they would have been. `prompt(run, context)`: the domain's teacher prompt."""
    from tqdm import tqdm

    wanted = [c for c in SELF_EDIT_CONDITIONS if c in run.evaluate.conditions]
    path = out_dir / "self_edits.jsonl"
    done = {(r["condition"], r["context"], r["sample"]): r["text"] for r in read_jsonl(path)}
    keys = [(p.id, i) for p in passages for i in range(run.evaluate.samples)]
    by_id = {p.id: p for p in passages}
    local = None
    for cond in wanted:
        recorded = {key for key in keys if (cond, *key) in done}
        if len(recorded) == len(keys):
            continue
        if cond == "external":
            generator = EndpointGenerator(run.evaluate.external, run.teacher.sampling)
            step = 4 * max(1, run.evaluate.external.concurrency)  # recorded after each batch
        else:
            generator = local = local or load_generator(run)
            step = max(1, run.teacher.sampling.batch_size)
            adapter = resolve_adapter(run.teacher.adapter, run) if (
                cond == "teacher" and run.teacher.adapter) else None
            generator.use_adapter(adapter)
        # a batch recorded in part by a killed run is drawn whole again: the same companions
        for batch in tqdm(batches_to_run(keys, step, recorded), desc=f"{cond}: sampling",
                          unit="batch"):
            # the same seeds for every self-edit condition: only the writer differs
            seeds = [derive_seed(run.seed, "evaluate-sample", pid, i) for pid, i in batch]
            samples = generator.sample([prompt(run, by_id[pid]) for pid, _ in batch], seeds)
            for (pid, i), seed, s in zip(batch, seeds, samples, strict=True):
                if (pid, i) in recorded:
                    continue
                done[(cond, pid, i)] = s.text
                append_jsonl(path, {"condition": cond, "context": pid, "sample": i,
                                    "seed": seed, "text": s.text, "cut": s.cut})
    if not run.teacher.adapter and {"teacher", "teacher_base"} <= set(wanted):
        log.warning("teacher.adapter is not set: `teacher` and `teacher_base` are the same teacher")
    return {cond: {p.id: [done[(cond, p.id, i)] for i in range(run.evaluate.samples)]
                   for p in passages} for cond in wanted}


def sampled_only(run: RunConfig, out_dir: Path, record: dict,
                 self_edits: dict[str, dict[str, list[str]]]) -> dict | None:
    """With `evaluate.sample_only`, what an evaluation returns once its self-edits are recorded
    (the command that scores them printed); None otherwise, and the evaluation goes on."""
    if not run.evaluate.sample_only:
        return None
    counts = {c: sum(len(v) for v in per.values()) for c, per in self_edits.items()}
    command = " ".join(w for w in record["command"].split()
                       if not w.startswith(("evaluate.sample_only=", "resume=")))
    print(f"sampled {', '.join(f'{c} {n}' for c, n in counts.items())} self-edits into "
          f"{out_dir / 'self_edits.jsonl'} (evaluate.sample_only=true: nothing scored). Score "
          f"them on any machine"
          f"{' (the teacher.adapter folder need not exist there)' if 'teacher' in counts else ''}"
          f" with: {command} resume={out_dir}")
    return {"sampled": counts, "out_dir": str(out_dir)}


def load_generator(run: RunConfig):
    return make_generator(run, None if run.teacher.backend == "vllm" else load_teacher(run.teacher))


def summarise(per_passage: dict[str, list[dict[str, float]]], seed: int, resamples: int,
              metrics: tuple[str, ...]) -> dict[str, dict]:
    """Per condition and metric: mean with interval, and the paired difference from every
    condition before it (`vs_<other>`). Rows are paired units (a domain's contexts: passages,
    tasks), in the same order in every condition."""
    summary: dict[str, dict] = {}
    for cond, rows in per_passage.items():
        summary[cond] = {}
        for m in metrics + (("judge",) if "judge" in rows[0] else ()):
            values = [r[m] for r in rows if r[m] is not None]
            if not values:
                continue
            entry = {"estimate": dataclasses.asdict(bootstrap(values, seed, resamples))}
            for ref in list(per_passage)[: list(per_passage).index(cond)]:
                pairs = [(r[m], b[m]) for r, b in zip(rows, per_passage[ref], strict=True)
                         if r[m] is not None and b.get(m) is not None]
                if pairs:
                    entry[f"vs_{ref}"] = dataclasses.asdict(paired_difference(
                        [a for a, _ in pairs], [b for _, b in pairs], seed, resamples))
            summary[cond][m] = entry
        if "judge_errors" in rows[0]:
            summary[cond]["judge_errors"] = sum(r["judge_errors"] for r in rows)
    return summary


def condition_table(summary: dict[str, dict], n_passages: int, n_questions: int,
                    footer: str | None = None) -> str:
    """Means with 95% intervals per condition, then paired differences from `base`."""
    names = {m.name: m.header for m in shown()}
    metrics = [m for m in names if any(m in s for s in summary.values())]

    def cell(e: dict | None) -> str:
        return f"{e['mean']:6.2f} [{e['low']:6.2f}, {e['high']:6.2f}]" if e else f"{'-':>22}"

    # labels of loop.compare can be longer than the conditions' names
    width = max([16, *(len(f"minus {c}") + 1 for c in summary)])

    def block(title: str, key: str, rows: list[str]) -> list[str]:
        head = f"{title:<{width}}" + "".join(f"{names[m]:>24}" for m in metrics)
        return [head, "-" * len(head)] + [
            f"{c:<{width}}" + "".join(f"  {cell(summary[c].get(m, {}).get(key))}" for m in metrics)
            for c in rows]

    lines = block("condition", "estimate", list(summary))
    for ref in summary:  # paired differences from each condition, for those listed after it
        later = [c for c in summary
                 if any(f"vs_{ref}" in summary[c].get(m, {}) for m in metrics)]
        if later:
            lines += [""] + block(f"minus {ref}", f"vs_{ref}", later)
    lines.append(footer or f"{n_passages} passages, {n_questions} questions; mean over passages "
                           "[95% bootstrap interval]; differences are paired by passage")
    errors = {c: s["judge_errors"] for c, s in summary.items() if "judge_errors" in s}
    if errors:
        lines.append("judge errors (no clear yes/no, left out of judge %): "
                     + ", ".join(f"{c} {n}" for c, n in errors.items()))
    return "\n".join(lines)
