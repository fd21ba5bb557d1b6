"""The ARC domain in the loop: contexts are ARC tasks, a self-edit is a JSON training
configuration, the score is pass@2 success of the student after test-time training on it.

The loop's machinery is shared with SQuAD (rounds, ledger, filters, M-step, tracking); this
module holds what differs: loading tasks, the teacher's prompt, and scoring a self-edit.
A score is a list with one entry, `{"success": 0.0 or 1.0}`, so `reward.metric=success`
averages it like any other metric (in percent): a reward is 100 for a solved task.
"""

from __future__ import annotations

from loop.config import ConfigError, RunConfig
from loop.tasks import ArcTask


def pairs(examples) -> list[tuple]:
    return [(e.input, e.output) for e in examples]


def prompt(task: ArcTask) -> str:
    from teacher.prompts import arc_prompt

    return arc_prompt(pairs(task.train))


def score_base(model, tokenizer, task: ArcTask, run: RunConfig) -> list[dict]:
    """The student as it is, in context only (the paper's ICL row)."""
    from student.arc.ttt import solve

    result = solve(model, tokenizer, pairs(task.train), pairs(task.test), run.student.arc,
                   run.student.instruct)
    return [{"success": float(result.success), "attempts": result.attempts,
             "answers": result.answers}]


def score_self_edits(model, tokenizer, task: ArcTask, texts: list[str], run: RunConfig,
                     seeds: list[int]) -> list[tuple[list[dict], list[float], str | None]]:
    """(scores, first and last training loss, why it failed before training) of each
    self-edit of one task: trained together, student.train.max_adapters at a time, unless
    student.train.batched=false."""
    from student.arc.ttt import absorb_and_solve, absorb_and_solve_many

    args = (model, tokenizer, pairs(task.train), pairs(task.test))
    if run.student.train.batched:
        from student.batched import memory_advice

        with memory_advice(min(len(texts), run.student.train.max_adapters), run.student.train):
            results = absorb_and_solve_many(*args, texts, run.student.arc, run.student.instruct,
                                            seeds, run.student.train.max_adapters,
                                            run.student.train.pass_tokens)
    else:
        results = [absorb_and_solve(*args, text, run.student.arc, run.student.instruct, seed)
                   for text, seed in zip(texts, seeds, strict=True)]
    return [_row(result) for result in results]


def _row(result) -> tuple[list[dict], list[float], str | None]:
    losses = [result.losses[0], result.losses[-1]] if result.losses else []
    return ([{"success": float(result.success), "attempts": result.attempts,
              "answers": result.answers, "tasks": result.tasks, "steps": result.steps}],
            losses, result.failure)


CONDITIONS = ("base", "teacher_base", "teacher", "oracle")


def oracle_text(run: RunConfig) -> str:
    """The oracle's configuration as a self-edit; a setting the schema refuses is a ConfigError."""
    from student.arc.augment import FAMILIES
    from student.arc.selfedit import STRATEGIES, TTTConfig, parse, to_json

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


def evaluate(run: RunConfig, out_dir, command: str) -> dict:
    """loop.evaluate for task=arc: the paper's rows on the evaluation tasks.

    - `base`: the student in context only (no training);
    - `teacher_base` / `teacher`: test-time training with `evaluate.samples` self-edits per task
      from the untrained teacher / the teacher with `teacher.adapter` (same seeds: paired);
    - `oracle`: test-time training with the hand-tuned configuration (`student.arc.oracle`).
    A unit is a (task, self-edit index) pair, as in the paper's success rate; `base` has one
    value per task, repeated for its units, and `oracle` uses the teacher conditions' seeds.
    Rows of `scores.jsonl` are appended per unit and read back by `resume=`.
    """
    import time

    from tqdm import tqdm

    from loop import plots
    from loop.evaluate import format_table, open_evaluation, sample_self_edits
    from loop.evaluate import summarise as summarise_units
    from loop.ledger import append_jsonl, read_jsonl, write_json_atomic
    from loop.outer import dataset_name, start_tracking
    from loop.seeds import derive_seed
    from loop.tasks import load_contexts, select
    from student.model import load_student

    conditions = list(run.evaluate.conditions)
    oracle = oracle_text(run) if "oracle" in conditions else None  # a bad setting fails now
    tasks = select(load_contexts(run.task, held_out=True), run.task.n_contexts, run.seed)
    out_dir, record, teacher_conditions = open_evaluation(run, out_dir, command, CONDITIONS)
    scores_path = out_dir / "scores.jsonl"
    done = {(r["context"], r["condition"], r["sample"]): r for r in read_jsonl(scores_path)}
    self_edits = sample_self_edits(run, tasks, out_dir) if teacher_conditions else {}
    tracker = start_tracking(run, out_dir, record, "loop.evaluate", f"evaluate {run.student.name}",
                             {dataset_name(run.task): tasks})
    status = "FAILED"
    try:
        model, tokenizer = load_student(run.student)
        n = run.evaluate.samples
        jobs = [(t, c, i) for t in tasks for c in conditions
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
        # paired units: (task, sample); base repeats its one value per task
        units = {c: [{"success": 100 * done[(t.id, c, None if c == "base" else i)]["success"]}
                     for t in tasks for i in range(n)] for c in conditions}
        summary = summarise_units(units, run.seed, run.evaluate.resamples, metrics=("success",))
        failures = {c: sum(1 for t in tasks for i in range(n)
                           if done[(t.id, c, None if c == "base" else i)].get("failure"))
                    for c in conditions}
        per_task = {t.id: {c: [done[(t.id, c, None if c == "base" else i)]["success"]
                               for i in range(n)] for c in conditions} for t in tasks}
        seconds = {c: sum(r["seconds"] for (_, cc, _), r in done.items() if cc == c) / len(tasks)
                   for c in conditions}
        results = {"task": run.task.name, "data": run.task.data, "student": run.student.name,
                   "contexts": [t.id for t in tasks], "samples": n, "summary": summary,
                   "failed_self_edits": failures, "per_task": per_task,
                   "seconds_per_context": seconds}
        write_json_atomic(out_dir / "results.json", results)
        footer = (f"{len(tasks)} tasks x {n} self-edits; success % (pass@2) over (task, "
                  "self-edit) units [95% bootstrap interval]; differences paired by unit\n"
                  "self-edits that failed before training (invalid or over budget): "
                  + ", ".join(f"{c} {k}" for c, k in failures.items() if c != "base"))
        print(format_table(summary, len(tasks), 0, footer=footer))
        tracker.log_metrics({f"{c}/success": s["success"]["estimate"]["mean"]
                             for c, s in summary.items()})
        tracker.log_table([{"task": tid, **{c: sum(v) / len(v) for c, v in row.items()}}
                           for tid, row in per_task.items()], "per_task.json")
        tracker.log_artifact(out_dir / "results.json")
        title = f"{run.student.name} on ARC ({len(tasks)} tasks x {n}): success with 95% intervals"
        tracker.log_artifact(plots.condition_bars(summary, out_dir / "results.png", title))
        status = "FINISHED"
        return results
    finally:
        tracker.close(status)
