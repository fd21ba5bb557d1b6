"""ARC's evaluation rows (`python -m loop.evaluate task=arc`): `base`, `teacher_base`,
`teacher`, `oracle`, their success rates with task-resampled intervals, and per-family tables
for 1D-ARC.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict

from loop.core import plots
from loop.core.config import ConfigError, RunConfig
from loop.core.domain import Domain, select
from loop.core.evaluation import condition_table, open_evaluation, sample_self_edits, sampled_only
from loop.core.evaluation import summarise as summarise_units
from loop.core.ledger import append_jsonl, read_jsonl, write_json_atomic
from loop.core.runfolder import dataset_name, tracked
from loop.core.seeds import derive_seed
from loop.core.stats import clustered_difference
from loop.tasks.arc.solve import score_base, score_self_edits
from student.arc.augment import FAMILIES
from student.arc.selfedit import STRATEGIES, TTTConfig, parse, to_json
from student.model import load_student


def family(task_id: str) -> str | None:
    """A 1D-ARC task's family, its id without the number (`1d_move_1p_7` -> `1d_move_1p`);
    None for ids without one (ARC-AGI's hex ids)."""
    m = re.fullmatch(r"(.+)_\d+", task_id)
    return m.group(1) if m else None


def per_family(per_task: dict[str, dict[str, list[float]]]) -> tuple[dict, dict]:
    """({family: {condition: success %}}, {family: tasks}) over the tasks that have a family."""
    groups: dict[str, list[dict]] = {}
    for tid, row in per_task.items():
        if (f := family(tid)) is not None:
            groups.setdefault(f, []).append(row)
    table = {f: {c: 100 * sum(sum(r[c]) / len(r[c]) for r in rows) / len(rows) for c in rows[0]}
             for f, rows in groups.items()}
    return table, {f: len(rows) for f, rows in groups.items()}


def oracle_text(run: RunConfig) -> str:
    """The oracle's configuration as a self-edit; a setting the schema refuses is a ConfigError."""
    o, arc = run.student.arc.oracle, run.student.arc
    unknown = sorted(set(o.families) - set(FAMILIES))
    if unknown or o.loss not in STRATEGIES.values():
        raise ConfigError(f"student.arc.oracle: families must be among {list(FAMILIES)} and loss "
                          f"output or all; got families={list(o.families)} loss={o.loss}")
    text = to_json(TTTConfig(tuple(f for f in FAMILIES if f in o.families), o.loss, o.lr,
                             o.epochs))
    parsed = parse(text, tuple(arc.lr_range), arc.max_epochs)
    if parsed.config is None:
        raise ConfigError(f"student.arc.oracle: {parsed.reason}")
    return text


def work_order(tasks: list, seed: int) -> list:
    """The tasks in the order an evaluation scores them: a seeded shuffle of the selected ones.
    A 1D-ARC evaluation of 100 tasks is hours of test-time training on a CPU, run across
    sessions with `resume=`; in this order the tasks scored when it stops are a random sample of
    the whole, all families mixed, instead of the first families of the file."""
    order = list(tasks)
    random.Random(derive_seed(seed, "evaluation order")).shuffle(order)
    return order


def summarise(task_ids: list[str], conditions: list[str], n: int, done: dict, seed: int,
              resamples: int) -> dict[str, dict]:
    """Success (%) per condition with 95% intervals, and paired differences, from `done`'s rows
    keyed (task, condition, sample; None for `base`). The unit is the task: the self-edits of
    one task share its difficulty, so they are averaged first (a task's success rate), and the
    bootstrap resamples tasks, pairing conditions by task. The estimate is the paper's success
    rate over (task, self-edit) units, since every task has `n` of them."""
    def rate(tid: str, cond: str) -> float:
        samples = [None] if cond == "base" else range(n)
        return 100 * sum(done[(tid, cond, i)]["success"] for i in samples) / len(samples)

    units = {c: [{"success": rate(tid, c)} for tid in task_ids] for c in conditions}
    summary = summarise_units(units, seed, resamples, metrics=("success",))
    return add_family_differences(summary, task_ids, units, seed, resamples)


def add_family_differences(summary: dict[str, dict], task_ids: list[str],
                           units: dict[str, list[dict]], seed: int,
                           resamples: int) -> dict[str, dict]:
    """`summary` (as `summarise`'s) with, for tasks that all have a 1D-ARC family, two or more
    families, each paired difference again with the families resampled instead of the tasks
    (`summary[row]["success_by_family"]["vs_<ref>"]`, its `n` the families): the tasks of a
    family share their rule and may succeed or fail together, which the task-resampled interval
    does not allow for. With few families it is itself approximate. `units` are the rows'
    per-task means, in `task_ids`' order."""
    families = [family(tid) for tid in task_ids]
    if None in families or len(set(families)) < 2:
        return summary
    conditions = list(units)
    for i, cond in enumerate(conditions):
        for ref in conditions[:i]:
            summary[cond].setdefault("success_by_family", {})[f"vs_{ref}"] = asdict(
                clustered_difference(
                    [u["success"] for u in units[cond]], [u["success"] for u in units[ref]],
                    families, seed, resamples))
    return summary


def family_difference_lines(summary: dict[str, dict]) -> list[str]:
    """The paired differences with families resampled (`add_family_differences`), as text; none
    when the summary has none."""
    rows = [(f"{cond} minus {key[3:]}", e) for cond, metrics in summary.items()
            for key, e in metrics.get("success_by_family", {}).items()]
    if not rows:
        return []
    width = max(len(name) for name, _ in rows) + 2
    return [f"paired differences with the {rows[0][1]['n']} task families resampled instead of "
            "the tasks (a family's tasks share their rule) [95% bootstrap interval]:",
            *(f"  {name:<{width}}{e['mean']:6.2f} [{e['low']:6.2f}, {e['high']:6.2f}]"
              for name, e in rows)]


def family_table(families: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
    """Success % per task family, one row each, as text."""
    conditions = list(next(iter(families.values())))
    width = max(len(f) for f in families) + 6
    lines = [f"{'family (tasks)':<{width}}" + "".join(f"{c:>14}" for c in conditions),
             "-" * (width + 14 * len(conditions))]
    for f in sorted(families):
        lines.append(f"{f + f' ({counts[f]})':<{width}}"
                     + "".join(f"{families[f][c]:>14.1f}" for c in conditions))
    return "\n".join(lines)


def evaluate(run: RunConfig, out_dir, command: str, domain: Domain) -> dict:
    """loop.evaluate for task=arc: the paper's rows on the evaluation tasks.

    - `base`: the student in context only (no training);
    - `teacher_base` / `teacher`: test-time training with `evaluate.samples` self-edits per task
      from the untrained teacher / the teacher with `teacher.adapter` (same seeds: paired);
    - `oracle`: test-time training with the hand-tuned configuration (`student.arc.oracle`).
    The success rate is the paper's, over (task, self-edit) units; its interval resamples tasks
    (`summarise`); `oracle` uses the teacher conditions' seeds.
    Rows of `scores.jsonl` are appended per unit, task by task in `work_order`, and read back by
    `resume=`.
    """
    from tqdm import tqdm

    conditions = list(run.evaluate.conditions)
    oracle = oracle_text(run) if "oracle" in conditions else None  # a bad setting fails now
    tasks = select(domain.load(run.task, held_out=True), run.task.n_contexts, run.seed)
    out_dir, record, teacher_conditions = open_evaluation(run, out_dir, command, domain.conditions)
    scores_path = out_dir / "scores.jsonl"
    done = {(r["context"], r["condition"], r["sample"]): r for r in read_jsonl(scores_path)}
    self_edits = sample_self_edits(run, tasks, out_dir, domain.prompt) if teacher_conditions else {}
    stopped = sampled_only(run, out_dir, record, self_edits)
    if stopped is not None:
        return stopped
    with tracked(run, out_dir, record, "loop.evaluate", f"evaluate {run.student.name}",
                 {dataset_name(run.task): tasks}) as tracker:
        model, tokenizer = load_student(run.student)
        n = run.evaluate.samples
        jobs = [(t, c, i) for t in work_order(tasks, run.seed) for c in conditions
                for i in ([None] if c == "base" else range(n))]
        todo = [j for j in jobs if (j[0].id, j[1], j[2]) not in done]
        # a (task, condition)'s samples are absorbed together (student.train.batched); one
        # recorded in part by a killed run is computed whole, so each keeps its companions
        batches = {}
        for task, cond, i in jobs:
            batches.setdefault((task.id, cond), (task, cond, []))[2].append(i)
        bar = tqdm(total=len(todo), desc="arc: evaluations", unit="eval")
        for task, cond, samples in batches.values():
            if all((task.id, cond, i) in done for i in samples):
                continue
            t0 = time.perf_counter()
            if cond == "base":
                rows = [{**score_base(model, tokenizer, task, run)[0], "failure": None}]
            else:
                texts = [oracle if cond == "oracle" else self_edits[cond][task.id][i]
                         for i in samples]
                seeds = [derive_seed(run.seed, "absorb", "teacher", task.id, i) for i in samples]
                rows = [{**scores[0], "failure": failure, "seed": seed, "train_loss": losses}
                        for (scores, losses, failure), seed in zip(
                            score_self_edits(model, tokenizer, task, texts, run, seeds), seeds,
                            strict=True)]
            share = (time.perf_counter() - t0) / len(samples)
            missing = [(i, row) for i, row in zip(samples, rows, strict=True)
                       if (task.id, cond, i) not in done]
            for i, row in missing:
                row = {"context": task.id, "condition": cond, "sample": i, "seconds": share,
                       **row}
                append_jsonl(scores_path, row)
                done[(task.id, cond, i)] = row
            bar.update(len(missing))
        bar.close()
        summary = summarise([t.id for t in tasks], conditions, n, done, run.seed,
                            run.evaluate.resamples)
        failures = {c: sum(1 for t in tasks for i in range(n)
                           if done[(t.id, c, None if c == "base" else i)].get("failure"))
                    for c in conditions}
        per_task = {t.id: {c: [done[(t.id, c, None if c == "base" else i)]["success"]
                               for i in range(n)] for c in conditions} for t in tasks}
        seconds = {c: sum(r["seconds"] for (_, cc, _), r in done.items() if cc == c) / len(tasks)
                   for c in conditions}
        families, counts = per_family(per_task)
        results = {"task": run.task.name, "data": run.task.data, "student": run.student.name,
                   "contexts": [t.id for t in tasks], "samples": n, "summary": summary,
                   "failed_self_edits": failures, "per_task": per_task,
                   "per_family": families, "seconds_per_context": seconds}
        write_json_atomic(out_dir / "results.json", results)
        footer = (f"{len(tasks)} tasks x {n} self-edits; success % (pass@2): the mean over tasks "
                  "of each task's mean over its self-edits [95% bootstrap interval, resampling "
                  "tasks]; differences paired by task\n"
                  "self-edits that failed before training (invalid or over budget): "
                  + ", ".join(f"{c} {k}" for c, k in failures.items() if c != "base"))
        print(condition_table(summary, len(tasks), 0, footer=footer))
        if by_family := family_difference_lines(summary):
            print("\n".join(by_family))
        if families:
            print(family_table(families, counts))
        tracker.log_metrics({f"{c}/success": s["success"]["estimate"]["mean"]
                             for c, s in summary.items()})
        tracker.log_table([{"task": tid, **{c: sum(v) / len(v) for c, v in row.items()}}
                           for tid, row in per_task.items()], "per_task.json")
        tracker.log_artifact(out_dir / "results.json")
        title = f"{run.student.name} on ARC ({len(tasks)} tasks x {n}): success with 95% intervals"
        tracker.log_artifact(plots.condition_bars(summary, out_dir / "results.png", title))
        if families:
            tracker.log_artifact(plots.family_bars(
                families, counts, out_dir / "families.png",
                f"{run.student.name} on {run.task.name}: success per task family"))
        return results
