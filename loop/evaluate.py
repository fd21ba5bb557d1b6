"""`python -m loop.evaluate`: score conditions on an evaluation set and print one row per condition.

    python -m loop.evaluate                                    # base and passage on eval200
    python -m loop.evaluate task.n_contexts=50                 # a seeded, recorded subset
    python -m loop.evaluate task.data=my_passages.json evaluate.conditions=[base]

Conditions (rows):
- `base`: the frozen student, no adaptation (cached once per context: loop.baseline);
- `passage`: a fresh LoRA trained on the passage alone (the title-prefixed passage as one
  sequence), then discarded.

Every condition is scored on the same contexts, so differences are paired: the table shows each
condition's mean over contexts with a 95% bootstrap interval, and its paired difference from
`base`. Results go to the run folder (`results.json`, `scores.jsonl`, `results.png`) and to an MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import hydra

from loop.cli import check_models, launch
from loop.config import CONF_DIR, ConfigError, RunConfig, register
from loop.judge import add_verdicts, load_judge

log = logging.getLogger(__name__)
register()

CONDITIONS = ("base", "passage")
METRICS = ("exact_match", "f1", "contains", "logprob")  # per question; EM/F1/contains in percent


def passage_means(question_scores: list[dict]) -> dict[str, float | None]:
    """Per-context means of each metric; EM, F1, contains and judge as percentages.

    Judge errors (no clear yes/no) are left out of the judge's mean and counted in
    `judge_errors`; a context whose verdicts are all errors has no judge mean (None).
    """
    n = len(question_scores)
    out: dict[str, float | None] = {}
    for m in METRICS:
        mean = sum(q[m] for q in question_scores) / n
        out[m] = mean if m == "logprob" else 100 * mean
    if "judge" in question_scores[0]:
        verdicts = [q["judge"] for q in question_scores if q["judge"] is not None]
        out["judge"] = 100 * sum(verdicts) / len(verdicts) if verdicts else None
        out["judge_errors"] = n - len(verdicts)
    return out


def score_condition(condition: str, passage, model, tokenizer, run: RunConfig) -> list[dict]:
    """Per-question scores of one condition on one passage, as plain dicts (JSON-ready)."""
    from loop.seeds import derive_seed
    from student.absorb import fresh_adapter, train
    from student.data import training_texts
    from student.evaluate import score_questions

    qa = [(q.question, q.answer) for q in passage.questions]
    if condition == "base":
        return [dataclasses.asdict(s) for s in score_questions(model, tokenizer, passage.title, qa,
                                                               run.student)]
    seed = derive_seed(run.seed, "absorb", condition, passage.id)
    data = dataclasses.replace(run.student.data, with_passage=True)
    texts = training_texts("", passage.title, passage.context, data)
    with fresh_adapter(model, run.student.lora, seed) as adapted:
        result = train(adapted, tokenizer, texts, run.student, seed)
        scores = score_questions(adapted, tokenizer, passage.title, qa, run.student)
    return [{**dataclasses.asdict(s), "seed": seed, "train_loss_first": result.losses[0],
             "train_loss_last": result.losses[-1]} for s in scores]


def summarise(per_passage: dict[str, list[dict[str, float]]], seed: int,
              resamples: int) -> dict[str, dict]:
    """Per condition and metric: mean with interval, and the paired difference from `base`."""
    from loop.stats import bootstrap, paired_difference

    summary = {}
    for cond, rows in per_passage.items():
        summary[cond] = {}
        for m in METRICS + (("judge",) if "judge" in rows[0] else ()):
            values = [r[m] for r in rows if r[m] is not None]
            if not values:
                continue
            entry = {"estimate": dataclasses.asdict(bootstrap(values, seed, resamples))}
            if cond != "base" and "base" in per_passage:
                pairs = [(r[m], b[m]) for r, b in zip(rows, per_passage["base"], strict=True)
                         if r[m] is not None and b[m] is not None]
                diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs], seed,
                                         resamples)
                entry["vs_base"] = dataclasses.asdict(diff)
            summary[cond][m] = entry
        if "judge_errors" in rows[0]:
            summary[cond]["judge_errors"] = sum(r["judge_errors"] for r in rows)
    return summary


def format_table(summary: dict[str, dict], n_passages: int, n_questions: int) -> str:
    """Means with 95% intervals per condition, then paired differences from `base`."""
    metrics = [m for m in (*METRICS, "judge") if any(m in s for s in summary.values())]
    names = {"exact_match": "EM %", "f1": "F1 %", "contains": "contains %", "logprob": "logprob",
             "judge": "judge %"}

    def cell(e: dict | None) -> str:
        return f"{e['mean']:6.2f} [{e['low']:6.2f}, {e['high']:6.2f}]" if e else f"{'-':>22}"

    def block(title: str, key: str, rows: list[str]) -> list[str]:
        head = f"{title:<16}" + "".join(f"{names[m]:>24}" for m in metrics)
        return [head, "-" * len(head)] + [
            f"{c:<16}" + "".join(f"  {cell(summary[c].get(m, {}).get(key))}" for m in metrics)
            for c in rows]

    lines = block("condition", "estimate", list(summary))
    others = [c for c in summary if c != "base" and "vs_base" in summary[c]["f1"]]
    if others:
        lines += [""] + block("minus base", "vs_base", others)
    lines.append(f"{n_passages} passages, {n_questions} questions; mean over passages "
                 "[95% bootstrap interval]; differences are paired by passage")
    errors = {c: s["judge_errors"] for c, s in summary.items() if "judge_errors" in s}
    if errors:
        lines.append("judge errors (no clear yes/no, left out of judge %): "
                     + ", ".join(f"{c} {n}" for c, n in errors.items()))
    return "\n".join(lines)


def evaluate(run: RunConfig, out_dir: Path) -> dict:
    """Score every condition on every selected context; write and return the results."""
    from tqdm import tqdm

    from loop import plots, tracking
    from loop.baseline import BaselineCache
    from loop.tasks import load_squad, select
    from student.model import load_student

    unknown = sorted(set(run.evaluate.conditions) - set(CONDITIONS))
    if unknown:
        raise ConfigError(f"unknown evaluate.conditions {unknown}; choose from {list(CONDITIONS)}")
    passages = select(load_squad(run.task.data), run.task.n_contexts, run.seed)
    n_questions = sum(len(p.questions) for p in passages)
    check_models(run, roles=("student",))
    out_dir.mkdir(parents=True, exist_ok=True)
    judge_model = load_judge(run.evaluate.judge) if run.evaluate.judge else None
    tracker = tracking.start(run.tracking, experiment=run.task.name,
                             run_name=f"evaluate {run.student.name}", config=run,
                             tags={"entry": "loop.evaluate", "teacher": run.teacher.name,
                                   "student": run.student.name, "task": run.task.name})
    model, tokenizer = load_student(run.student)
    baseline = BaselineCache(out_dir / "baseline.jsonl", run.student.name)
    per_passage: dict[str, list[dict[str, float]]] = {c: [] for c in run.evaluate.conditions}
    seconds: dict[str, float] = dict.fromkeys(run.evaluate.conditions, 0.0)
    status = "FAILED"
    try:
        with (out_dir / "scores.jsonl").open("a") as record:
            for passage in tqdm(passages, desc="contexts", unit="ctx"):
                for cond in run.evaluate.conditions:
                    t0 = time.perf_counter()

                    def compute(cond=cond, passage=passage):
                        scores = score_condition(cond, passage, model, tokenizer, run)
                        return add_verdicts(scores, judge_model) if judge_model else scores

                    scores = baseline.get(passage.id, compute) if cond == "base" else compute()
                    seconds[cond] += time.perf_counter() - t0
                    record.write(json.dumps({"context": passage.id, "condition": cond,
                                             "questions": scores}) + "\n")
                    record.flush()
                    per_passage[cond].append(passage_means(scores))
        summary = summarise(per_passage, run.seed, run.evaluate.resamples)
        results = {"task": run.task.name, "data": run.task.data, "student": run.student.name,
                   "contexts": [p.id for p in passages], "n_questions": n_questions,
                   "seconds_per_context": {c: s / len(passages) for c, s in seconds.items()},
                   "summary": summary}
        staged = out_dir / "results.json.tmp"  # a killed run never leaves half a results.json
        staged.write_text(json.dumps(results, indent=2) + "\n")
        staged.replace(out_dir / "results.json")
        print(format_table(summary, len(passages), n_questions))
        means = {c: {m: e["estimate"]["mean"] for m, e in s.items() if isinstance(e, dict)}
                 for c, s in summary.items()}
        for cond, values in means.items():
            tracker.log_metrics({f"{cond}/{m}": v for m, v in values.items()})
        tracker.log_table([{"condition": c, **v} for c, v in means.items()], "results_table.json")
        tracker.log_artifact(out_dir / "results.json")
        title = (f"{run.student.name} on {Path(run.task.data).name}: {len(passages)} passages, "
                 "means with 95% intervals")
        tracker.log_artifact(plots.condition_bars(summary, out_dir / "results.png", title))
        status = "FINISHED"
        return results
    finally:
        tracker.close(status)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg) -> None:
    launch(cfg, evaluate)


if __name__ == "__main__":
    main()
