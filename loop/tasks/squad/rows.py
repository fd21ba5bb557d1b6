"""SQuAD's evaluation rows (`python -m loop.evaluate`; the `loop.evaluate` module says what
each row is) in the paper's three settings: `single` (one fresh student per passage),
`together` (continued pretraining: every passage absorbed in one run) and `sequential` (edits
one after the other, the forgetting experiment).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import loop.tasks.squad.absorb as absorb
from loop.core import plots
from loop.core.baseline import BaselineCache
from loop.core.config import RunConfig
from loop.core.domain import Domain, select
from loop.core.evaluation import condition_table, open_evaluation, sample_self_edits, sampled_only, summarise
from loop.core.judge import add_verdicts, load_judge
from loop.core.ledger import append_jsonl, batches_to_run, read_jsonl, write_json_atomic
from loop.core.runfolder import dataset_name, tracked
from loop.core.seeds import derive_seed
from loop.core.stats import pearson
from loop.tasks.squad.absorb import passage_texts, score_context
from loop.tasks.squad.metrics import QUESTION_METRICS, passage_means
from loop.tasks.squad.proxy import evaluation_agreement
from student.absorb import absorbing, fresh_adapter, restored, step_count, train
from student.data import training_texts
from student.evaluate import score_questions
from student.model import load_student

log = logging.getLogger(__name__)


def score_condition(condition: str, passage, model, tokenizer, run: RunConfig,
                    self_edits: list[str] | None = None) -> list[dict]:
    """Per-question scores of one condition on one passage, as plain dicts (JSON-ready).

    Teacher conditions get the passage's self-edits and score every (self-edit, question).
    `base` answers on the backend the adapters answer on (student.eval_backend), so every
    difference in the table is between answers of one backend.
    """
    if condition == "base":
        return score_context(model, tokenizer, passage, run, None, generate=True)
    return score_condition_many(condition, [passage], model, tokenizer, run,
                                {passage.id: self_edits or []})[0]


def score_condition_many(condition: str, passages, model, tokenizer, run: RunConfig,
                         self_edits: dict[str, list[str]]) -> list[list[dict]]:
    """`score_condition` (not `base`) for many passages: all their adapters are absorbed and
    scored together, student.train.max_adapters per pass when student.train.batched.
    `passage_matched` gets the self-edits of the row it is matched to (`matched_row`)."""
    if condition == "passage_matched":
        return score_matched(passages, model, tokenizer, run, self_edits)
    jobs, owner = [], []
    for n, passage in enumerate(passages):
        if condition == "passage":
            mine = [(absorb_seed(run, "passage", passage.id),
                     condition_texts(condition, passage, run, None))]
        else:  # the same absorb seeds for both teacher conditions: paired down to the sample
            mine = [(absorb_seed(run, "teacher", passage.id, i),
                     condition_texts(condition, passage, run, text))
                    for i, text in enumerate(self_edits.get(passage.id) or [])]
        for i, (seed, texts) in enumerate(mine):
            jobs.append((passage, texts, seed))
            owner.append((n, i))
    return absorbed(jobs, owner, len(passages), model, tokenizer, run)


def absorb_seed(run: RunConfig, *where) -> int:
    """An adapter's seed: the run's seed, the row kind and the passage (and sample); with
    evaluate.absorb_seed set, another draw of the same absorbing (the reward's noise)."""
    extra = ("absorb_seed", run.evaluate.absorb_seed) if run.evaluate.absorb_seed else ()
    return derive_seed(run.seed, "absorb", *where, *extra)


def absorbed(jobs, owner, n_passages: int, model, tokenizer, run: RunConfig,
             extra: dict | None = None) -> list[list[dict]]:
    """The jobs absorbed and scored; each passage's question rows (with the sample, seed and
    first and last training losses, and `extra`'s fields)."""
    # judged later, with the other conditions
    # through the module: tests spy on the batches it forms
    results = absorb.absorb_and_score_many(model, tokenizer, jobs, run, judge_model=None,
                                           generate=True)
    out: list[list[dict]] = [[] for _ in range(n_passages)]
    for (n, i), (_, _, seed), (scores, losses) in zip(owner, jobs, results, strict=True):
        first, last = losses or (None, None)
        out[n] += [{**s, "sample": i, "seed": seed, "train_loss_first": first,
                    "train_loss_last": last, **(extra or {})} for s in scores]
    return out


def matched_row(conditions) -> str | None:
    """The self-edit row `passage_matched` matches its training steps to: `teacher`, else
    `teacher_base`, else `external` (None: none is asked for)."""
    return next((c for c in ("teacher", "teacher_base", "external") if c in conditions), None)


def matched_steps(passage, run: RunConfig, self_edits: list[str]) -> int:
    """The optimiser steps the matched row's self-edits train for on this passage (their mean,
    rounded; `student.absorb.step_count`): the steps `passage_matched` gives the passage alone."""
    counts = [step_count(len(condition_texts("teacher", passage, run, text)), run.student)
              for text in self_edits or [""]]
    return max(1, round(sum(counts) / len(counts)))


def score_matched(passages, model, tokenizer, run: RunConfig,
                  self_edits: dict[str, list[str]]) -> list[list[dict]]:
    """The `passage_matched` row: the passage alone (the `passage` row's text and seed), trained
    for as many optimiser steps as the matched row's self-edits on that passage, so that a
    self-edit row's gain over it is the self-edit's content, not its extra training. The
    passage alone is one sequence, one step per epoch: the steps are student.train.epochs."""
    by_steps: dict[int, list[int]] = {}
    for n, passage in enumerate(passages):
        by_steps.setdefault(matched_steps(passage, run, self_edits.get(passage.id)), []).append(n)
    out: list[list[dict]] = [[] for _ in passages]
    for steps, members in by_steps.items():
        longer = dataclasses.replace(run, student=dataclasses.replace(
            run.student, train=dataclasses.replace(run.student.train, epochs=steps)))
        jobs = [(passages[n], passage_texts(passages[n], run),
                 absorb_seed(run, "passage", passages[n].id)) for n in members]
        rows = absorbed(jobs, [(k, 0) for k in range(len(members))], len(members), model,
                        tokenizer, longer, {"steps": steps})
        for n, scores in zip(members, rows, strict=True):
            out[n] = scores
    return out


def condition_texts(condition: str, passage, run: RunConfig, self_edit: str | None) -> list[str]:
    """What a condition trains on for one passage: the passage alone, or a self-edit by SEAL's rule."""
    if condition in ("passage", "passage_matched"):
        return passage_texts(passage, run)
    return training_texts(self_edit or "", passage.title, passage.context, run.student.data)


def score_together(condition: str, passages, model, tokenizer, run: RunConfig,
                   self_edits: dict[str, list[str]] | None) -> dict[str, list[dict]]:
    """task.absorb=together: one student absorbs every passage's texts in one training run
    (continued pretraining), then answers every question; scores are kept per passage."""
    texts = []
    for p in passages:
        edits = (self_edits or {}).get(p.id) or [None]
        for text in edits if condition != "passage" else [None]:
            texts += condition_texts(condition, p, run, text)
    # the same seed for every condition: they differ only by what they absorb
    seed = derive_seed(run.seed, "absorb-together")
    out = {}
    with absorbing(model, run.student, seed) as adapted:
        result = train(adapted, tokenizer, texts, run.student, seed)
        for p in passages:
            qa = [(q.question, q.answer) for q in p.questions]
            out[p.id] = [{**dataclasses.asdict(s), "seed": seed, "sequences": len(texts),
                          "train_loss_first": result.losses[0],
                          "train_loss_last": result.losses[-1]}
                         for s in score_questions(adapted, tokenizer, p.title, qa, run.student)]
    return out


def score_sequential(condition: str, passages, model, tokenizer, run: RunConfig,
                     self_edits: dict[str, list[str]] | None):
    """task.absorb=sequential (forgetting): edits j = 0, 1, ... absorbed one after the other;
    after edit j every passage i <= j is scored. `evaluate.forgetting`: `grow` keeps training one
    adapter (or, with student.train.method=full, the weights); `merge` merges each edit's fresh
    LoRA into the weights before the next, as the paper's forgetting experiment does. The base is
    restored afterwards either way. Returns the last row's per-passage scores and the matrix of
    per-passage means (row j: after edit j)."""
    from tqdm import tqdm

    def texts(p):
        edits = (self_edits or {}).get(p.id) or [None]
        return condition_texts(condition, p, run, edits[0])  # the first self-edit per passage

    def score(m, p):
        qa = [(q.question, q.answer) for q in p.questions]
        return [dataclasses.asdict(s) for s in score_questions(m, tokenizer, p.title, qa, run.student)]

    mode = run.evaluate.forgetting
    seed = derive_seed(run.seed, "absorb-sequential")
    matrix, last = [], {}
    with ExitStack() as stack:
        if mode == "grow":
            current = stack.enter_context(absorbing(model, run.student, seed))
        else:  # merge: each edit's LoRA goes into the weights, which are put back at the end
            current = stack.enter_context(restored(model))
        for j, p in enumerate(tqdm(passages, desc=f"{condition}: sequential edits", unit="edit")):
            if mode == "grow":
                train(current, tokenizer, texts(p), run.student, derive_seed(seed, j))
            else:
                with fresh_adapter(model, run.student.lora, derive_seed(seed, j)) as adapted:
                    train(adapted, tokenizer, texts(p), run.student, derive_seed(seed, j))
                    adapted.merge_adapter()  # into the base weights; unload() then keeps them
            last = {q.id: score(current, q) for q in passages[: j + 1]}
            matrix.append([passage_means(last[q.id]) for q in passages[: j + 1]])
    return last, matrix


def proxy_correlations(per_passage: dict[str, list[dict]]) -> dict[str, dict[str, float | None]]:
    """How well the cheap reward tracks the real ones: per condition, Pearson's r across
    passages between its gain over `base` in gold-answer log-probability (no generation) and
    its gain in each generated-answer metric."""
    out: dict[str, dict[str, float | None]] = {}
    if "base" not in per_passage or len(per_passage["base"]) < 2:
        return out
    base = per_passage["base"]
    for cond, rows in per_passage.items():
        if cond == "base":
            continue
        lp = [r["logprob"] - b["logprob"] for r, b in zip(rows, base, strict=True)]
        out[cond] = {}
        for m in ("f1", "contains", "judge"):
            pairs = [(x, r[m] - b[m]) for x, r, b in zip(lp, rows, base, strict=True)
                     if r.get(m) is not None and b.get(m) is not None]
            if len(pairs) >= 2:
                out[cond][m] = pearson([x for x, _ in pairs], [y for _, y in pairs])
    return out


def fmt(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def evaluate(run: RunConfig, out_dir: Path, command: str, domain: Domain) -> dict:
    """Score every condition on every selected context; write and return the results.

    With `resume=<folder>` the folder's recorded self-edits and scores are read back and only
    the missing ones computed (the config must match the folder's `run.json`)."""
    from tqdm import tqdm

    passages = select(domain.load(run.task, held_out=True), run.task.n_contexts, run.seed)
    by_id = {p.id: p for p in passages}
    out_dir, record, teacher_conditions = open_evaluation(run, out_dir, command, domain.conditions)
    n_questions = sum(len(p.questions) for p in passages)
    recorded = read_jsonl(out_dir / "scores.jsonl")
    done = {(r["context"], r["condition"]): r["questions"] for r in recorded}
    if done:
        print(f"resuming: {len(done)} (passage, condition) scores read back from {out_dir}")
    # self-edits first, then the teacher is freed before the student's work
    self_edits = (sample_self_edits(run, passages, out_dir, domain.prompt)
                  if teacher_conditions else {})
    stopped = sampled_only(run, out_dir, record, self_edits)
    if stopped is not None:
        return stopped
    judge_model = load_judge(run.evaluate.judge) if run.evaluate.judge else None
    with tracked(run, out_dir, record, "loop.evaluate", f"evaluate {run.student.name}",
                 {dataset_name(run.task): passages}) as tracker:
        model, tokenizer = load_student(run.student)
        baseline = BaselineCache(out_dir / "baseline.jsonl", run.student.name)
        together: dict[str, dict[str, list[dict]]] = {}
        per_passage: dict[str, list[dict[str, float]]] = {c: [] for c in run.evaluate.conditions}
        seconds: dict[str, float] = dict.fromkeys(run.evaluate.conditions, 0.0)
        for r in recorded:  # time spent before a resume
            if r["condition"] in seconds:
                seconds[r["condition"]] += r.get("seconds", 0.0)
        forgetting: dict[str, list[list[dict]]] = {}
        for cond in [c for c in run.evaluate.conditions if c != "base"]:
            t0 = time.perf_counter()
            matrix_file = out_dir / f"forgetting_{cond}.json"
            if all((p.id, cond) in done for p in passages) and (
                    run.task.absorb != "sequential" or matrix_file.exists()):
                if run.task.absorb == "sequential":
                    forgetting[cond] = json.loads(matrix_file.read_text())
                continue  # a resumed run: every score of this condition is recorded
            if run.task.absorb == "together":
                log.info("%s: absorbing all %d passages together", cond, len(passages))
                together[cond] = score_together(cond, passages, model, tokenizer, run,
                                                self_edits.get(cond))
            elif run.task.absorb == "sequential":
                together[cond], forgetting[cond] = score_sequential(
                    cond, passages, model, tokenizer, run, self_edits.get(cond))
                write_json_atomic(matrix_file, forgetting[cond])
            seconds[cond] += time.perf_counter() - t0
        if run.task.absorb == "single":  # many passages' adapters per batched pass
            for cond in [c for c in run.evaluate.conditions if c != "base"]:
                per = 1 if cond in ("passage", "passage_matched") else max(1, run.evaluate.samples)
                edits = self_edits.get(matched_row(run.evaluate.conditions)
                                       if cond == "passage_matched" else cond, {})
                # a batch recorded in part is computed whole: every passage keeps its companions
                recorded = {p.id for p in passages if (p.id, cond) in done}
                groups = batches_to_run([p.id for p in passages],
                                        run.student.train.max_adapters // per, recorded)
                for ids in tqdm(groups, desc=cond, unit="batch", disable=not groups):
                    group = [by_id[pid] for pid in ids]
                    t0 = time.perf_counter()
                    results = score_condition_many(cond, group, model, tokenizer, run, edits)
                    share = (time.perf_counter() - t0) / len(group)
                    for passage, scores in zip(group, results, strict=True):
                        if passage.id in recorded:
                            continue
                        if judge_model:
                            scores = add_verdicts(scores, judge_model, passage.title)
                        append_jsonl(out_dir / "scores.jsonl",
                                     {"context": passage.id, "condition": cond,
                                      "seconds": share, "questions": scores})
                        done[(passage.id, cond)] = scores
                        seconds[cond] += share
        for passage in tqdm(passages, desc="contexts", unit="ctx"):
            for cond in run.evaluate.conditions:
                if (passage.id, cond) in done:
                    per_passage[cond].append(passage_means(done[(passage.id, cond)]))
                    continue
                t0 = time.perf_counter()

                def compute(cond=cond, passage=passage):
                    if cond in together:
                        scores = together[cond][passage.id]
                    else:
                        scores = score_condition(cond, passage, model, tokenizer, run,
                                                 self_edits.get(cond, {}).get(passage.id))
                    if not judge_model:
                        return scores
                    return add_verdicts(scores, judge_model, passage.title)

                scores = baseline.get(passage.id, compute) if cond == "base" else compute()
                spent = time.perf_counter() - t0
                seconds[cond] += spent
                append_jsonl(out_dir / "scores.jsonl", {"context": passage.id, "condition": cond,
                                                        "seconds": spent, "questions": scores})
                per_passage[cond].append(passage_means(scores))
        summary = summarise(per_passage, run.seed, run.evaluate.resamples, QUESTION_METRICS)
        proxy = proxy_correlations(per_passage)
        agreement = {}
        if self_edits and run.task.absorb == "single":  # the in-context proxy vs absorbing
            agreement = evaluation_agreement((model, tokenizer), run, passages, self_edits, done,
                                             baseline, out_dir / "proxy.jsonl")
        results = {"task": run.task.name, "data": run.task.data, "student": run.student.name,
                   "contexts": [p.id for p in passages], "n_questions": n_questions,
                   "seconds_per_context": {c: s / len(passages) for c, s in seconds.items()},
                   "summary": summary, "proxy_correlation": proxy,
                   "proxy_agreement": agreement}
        if forgetting:
            results["forgetting"] = {"mode": run.evaluate.forgetting, "matrix": forgetting}
        write_json_atomic(out_dir / "results.json", results)  # never half a results.json
        print(condition_table(summary, len(passages), n_questions))
        if proxy:
            print("the cheap reward (log-prob gain over base) vs the other gains, Pearson r "
                  "across passages: " + "; ".join(
                      f"{cond} " + ", ".join(f"{m} {'-' if r is None else f'{r:.2f}'}"
                                             for m, r in rs.items()) for cond, rs in proxy.items()))
        for cond, a in agreement.items():
            print(f"{cond}: the in-context proxy (context_logprob) vs the absorbed log-prob gain "
                  f"across {a['n']} self-edits: Spearman {fmt(a['spearman'])}, Pearson "
                  f"{fmt(a['pearson'])}")
            tracker.log_metrics({f"{cond}/proxy_{k}": a[k] for k in ("spearman", "pearson")
                                 if a[k] is not None})
        means = {c: {m: e["estimate"]["mean"] for m, e in s.items() if isinstance(e, dict)}
                 for c, s in summary.items()}
        for cond, values in means.items():
            tracker.log_metrics({f"{cond}/{m}": v for m, v in values.items()})
        tracker.log_table([{"condition": c, **v} for c, v in means.items()], "results_table.json")
        tracker.log_artifact(out_dir / "results.json")
        title = (f"{run.student.name} on {Path(run.task.data).name}: {len(passages)} passages, "
                 "means with 95% intervals")
        tracker.log_artifact(plots.condition_bars(summary, out_dir / "results.png", title))
        if forgetting:
            tracker.log_artifact(plots.forgetting(forgetting, out_dir / "forgetting.png",
                                                  run.evaluate.forgetting))
        return results
