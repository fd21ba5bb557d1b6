"""The outer loop: ReST-EM rounds of sample -> absorb and score -> filter -> train the teacher.

The same rounds serve every domain (`loop.tasks`: SQuAD passages, ARC tasks); a domain says
what the teacher reads, how a batch of self-edits is scored and what the baseline is.

    summary = rounds.run(run_config, run_folder)   # what `python -m loop.run` does

Each round:
1. E-step (`loop.core.sampling`): the teacher (base + the previous round's adapter) samples k
   self-edits per context, one derived seed per sample (`round_<r>/self_edits.jsonl`, appended
   per batch).
2. Inner loop (`loop.core.inner`): each self-edit is absorbed by a fresh LoRA on the frozen student
   (once per inner seed) and scored on the context's task; reward = score - the student's cached
   baseline (`baseline.jsonl`). One `ledger.jsonl` line per evaluation, flushed.
3. Filter (loop.core.reward), then the M-step (`loop.core.mstep`): TRL SFT of a teacher LoRA on the kept
   (prompt -> self-edit) pairs (`round_<r>/teacher_adapter`, staged and renamed into place).
4. `round_<r>/summary.json`, MLflow metrics (step = round), the self-edit table, plots.

Everything a round writes is either appended line by line or renamed into place, so
`resume=<run folder>` finds finished work and redoes none of it: a finished round is read
back whole; in an unfinished one, recorded self-edits and evaluations are kept.

Departures from SEAL: the teacher is a separate model; rewards are measured against a
baseline (SEAL's best-of-k ignores it, and is still the default filter); the teacher is
trained as a LoRA and sampled as base + adapter, the adapter's update added into the weights for
each sampling call and the weights restored exactly (teacher.sampling.merged), never reloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
from pathlib import Path

from loop.core import executor as executors
from loop.core import memory, plots, vllm
from loop.core.adapters import model_config
from loop.core.baseline import BaselineCache
from loop.core.checks import check_settings, validate_backends
from loop.core.config import ConfigError, RunConfig
from loop.core.domain import Domain, domain_of, select
from loop.core.inner import inner_round, self_edit_rows
from loop.core.judge import load_judge
from loop.core.ledger import Ledger, write_json_atomic
from loop.core.mstep import m_step, m_step_text
from loop.core.reward import Scored, keep
from loop.core.runfolder import check_resume, check_tracking, dataset_name, tracked
from loop.core.sampling import make_generator, sample_round
from loop.core.seeds import derive_seed
from loop.core.stats import agreement
from student.model import load_student
from teacher.model import load_teacher

log = logging.getLogger(__name__)


def validate(run: RunConfig) -> None:
    """Everything `loop.run` checks at launch, before a folder is made or a model loads: every
    setting (`loop.core.checks`), then the settings that must go together."""
    check_settings(run)
    if run.task.absorb != "single":
        raise ConfigError(f"task={run.task.name} (task.absorb={run.task.absorb}) is a setting of "
                          "loop.evaluate; the loop trains the teacher on single passages")
    domain_of(run.task).check(run)  # what only the task's domain needs
    if run.reward.metric == "judge" and not run.reward.judge:
        raise ConfigError("reward.metric=judge needs a judge: reward.judge=<model preset>")
    in_context = run.reward.metric == "context_logprob"
    if in_context and (run.reward.baseline.startswith("passage") or run.reward.inner_seeds != 1):
        raise ConfigError("reward.metric=context_logprob absorbs nothing: it is measured against "
                          "the frozen student (reward.baseline=student or none), once per self-"
                          f"edit (reward.inner_seeds=1); got reward.baseline={run.reward.baseline} "
                          f"reward.inner_seeds={run.reward.inner_seeds}")
    if run.reward.screen and (in_context or run.reward.screen > run.loop.k):
        raise ConfigError(f"reward.screen={run.reward.screen} absorbs the best of loop.k="
                          f"{run.loop.k} self-edits by the proxy: it must be at most loop.k, with "
                          "a reward.metric that absorbs (not context_logprob)")
    if run.executor.name == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("executor=ray needs Ray: pip install -e '.[distributed]'")
    validate_backends(run)
    t = run.teacher.train
    if t.batch_size % t.processes:
        raise ConfigError(f"teacher.train.batch_size={t.batch_size} is the M-step's global batch: it "
                          f"must split evenly over teacher.train.processes={t.processes}")
    per_process = t.batch_size // t.processes
    if t.micro_batch and per_process % t.micro_batch:
        raise ConfigError(f"teacher.train.micro_batch={t.micro_batch} must divide the "
                          f"{per_process} pairs each of teacher.train.processes={t.processes} "
                          f"takes of teacher.train.batch_size={t.batch_size}")
    memory.check(run)  # on a GPU (or for plan.gpu_memory): refused here, not out of memory later


def round_contexts(pool: list, n: int, rounds: int, seed: int) -> list[list]:
    """n contexts per round: disjoint across rounds while the pool lasts, then a fresh shuffle."""
    if not 1 <= n <= len(pool):
        raise ConfigError(f"loop.contexts_per_round={n}, but the pool has {len(pool)} contexts")
    order: list[int] = []
    out, shuffles = [], 0
    for _ in range(rounds):
        if len(order) < n:  # the pool is used up: the rest first, then a new seeded shuffle
            perm = list(range(len(pool)))
            random.Random(derive_seed(seed, "contexts", shuffles)).shuffle(perm)
            shuffles += 1
            order += [i for i in perm if i not in order[:n]]
        out.append([pool[i] for i in order[:n]])
        order = order[n:]
    return out


def more_rounds(old: dict, new: dict) -> set[str]:
    """What a `loop.run` resume may change to extend a run: `loop.rounds`, upwards. The first
    rounds' contexts do not depend on the number of rounds (`round_contexts` draws them as a
    prefix), so finished rounds stay what they were and the new ones continue from the last
    teacher adapter."""
    try:
        grows = int(new["loop.rounds"]) > int(old["loop.rounds"])
    except (KeyError, TypeError, ValueError):
        return set()
    return {"loop.rounds"} if grows else set()


def run(run: RunConfig, out_dir: Path, command: str = "python -m loop.run") -> dict:
    """All rounds; returns (and writes to `results.json`) the per-round summaries."""
    validate(run)
    check_tracking(run)
    domain = domain_of(run.task)
    out_dir = Path(run.resume) if run.resume else out_dir
    pool = select(domain.load(run.task), run.task.n_contexts, run.seed)
    schedule = round_contexts(pool, run.loop.contexts_per_round, run.loop.rounds, run.seed)
    record = check_resume(run, out_dir, command, grows=more_rounds)
    print(f"resume after a crash with: {record['command']} resume={out_dir}")
    with tracked(run, out_dir, record, "loop.run", f"{run.teacher.name} -> {run.student.name}",
                 {f"{dataset_name(run.task)} round {r}": c
                  for r, c in enumerate(schedule)}) as tracker:
        executor = None
        try:
            teacher = load_teacher(run.teacher)
            generator = make_generator(run, teacher)
            student = load_student(run.student)
            judge_model = load_judge(run.reward.judge, "reward.judge") if run.reward.judge else None
            executor = executors.make(run, student, judge_model, domain.score_batch, load_judge)
            baseline = BaselineCache(out_dir / "baseline.jsonl", run.student.name)
            ledger = Ledger(out_dir / "ledger.jsonl")
            summaries, adapter = [], None
            for r, contexts in enumerate(schedule):
                summary, adapter = one_round(run, domain, r, contexts, out_dir, generator, teacher,
                                             student, ledger, baseline, judge_model, adapter, tracker,
                                             executor)
                summaries.append(summary)
            results = {"teacher": run.teacher.name, "student": run.student.name,
                       "task": run.task.name, "metric": run.reward.metric,
                       "final_adapter": str(adapter.relative_to(out_dir)) if adapter else None,
                       "executor": {"name": run.executor.name, "retried_batches": executor.retries},
                       "rounds": summaries}
            write_json_atomic(out_dir / "results.json", results)
            tracker.log_artifact(out_dir / "results.json")
            if adapter and domain.teacher_model and tracker.run_id:
                tracker.log_model(domain.teacher_model, adapter, model_config(run.teacher),
                                  step=len(summaries) - 1)
            print(round_table(summaries, run.reward.metric, run.reward.baseline))
            if adapter:
                print(f"trained teacher adapter: {adapter}")
            return results
        finally:
            if executor is not None:
                executor.close()
            if "vllm" in (run.teacher.backend, run.student.eval_backend):
                vllm.close()


def one_round(run: RunConfig, domain: Domain, r: int, contexts: list, out_dir: Path, generator,
              teacher, student, ledger: Ledger, baseline, judge_model, adapter: Path | None,
              tracker, executor=None) -> tuple[dict, Path | None]:
    """One round, or its record when it finished before (a resumed run)."""
    rdir = out_dir / f"round_{r}"
    rdir.mkdir(parents=True, exist_ok=True)
    if (rdir / "summary.json").exists():
        summary = json.loads((rdir / "summary.json").read_text())
        log.info("round %d: finished before, read back", r)
        return summary, out_dir / summary["adapter"] if summary["adapter"] else None
    t_round = time.perf_counter()
    if generator.adapter != adapter:
        generator.use_adapter(adapter)
    edits = sample_round(generator, run, r, contexts, rdir / "self_edits.jsonl", domain.prompt)
    t0 = time.perf_counter()
    proxies, absorb = domain.proxies(student, run, contexts, edits, baseline, rdir / "proxy.jsonl")
    proxy_s = time.perf_counter() - t0
    evals = inner_round(student, run, domain, r, contexts, edits, ledger, baseline, judge_model,
                        executor, absorb)
    rows = self_edit_rows(run, contexts, edits, evals, kept=set())
    for x in rows:
        x["proxy"] = proxies.get((x["context"], x["sample"]))
    kept = kept_self_edits(rows, edits, run)
    for x in rows:
        x["kept"] = (x["context"], x["sample"]) in kept
    adapter_dir = rdir / "teacher_adapter"
    generator.use_adapter(None)  # the M-step wraps the bare base (no adapter on it)
    t0 = time.perf_counter()
    if adapter_dir.exists():  # trained before the run was killed: staged and renamed, so whole
        new_adapter = adapter_dir
        losses = json.loads((adapter_dir / "train_losses.json").read_text())
    else:
        new_adapter, losses = m_step(teacher, run, r, contexts, edits, kept, adapter, adapter_dir,
                                     domain.prompt)
    train_s = time.perf_counter() - t0
    inner_s = sum(e.seconds for e in evals)
    absorbed = [x for x in rows if x["reward"] is not None]
    both = [x for x in absorbed if x["proxy"] is not None]
    agree = agreement([x["proxy"] for x in both], [x["reward"] for x in both])
    summary = {
        "round": r, "contexts": [c.id for c in contexts], "self_edits": len(rows),
        "evaluations": len(evals),
        # relative to the run folder, which may be moved or copied before a resume
        "adapter": str(new_adapter.relative_to(out_dir)) if new_adapter else None,
        "metrics": {
            "reward/mean": sum(x["reward"] for x in absorbed) / len(absorbed),
            "reward/max": max(x["reward"] for x in absorbed),
            "filter/kept_frac": len(kept) / len(rows),
            "proxy/spearman": nan_if_none(agree["spearman"]),
            "proxy/pearson": nan_if_none(agree["pearson"]),
            "teacher/cut_frac": sum(e.cut for e in edits.values()) / len(edits),
            "student/score_base": mean(x["baseline"] for x in rows),
            "student/score_after": mean(x["score"] for x in rows),
            "student/score_after_kept": mean(x["score"] for x in rows if x["kept"]),
            "teacher/sft_loss": sum(losses) / len(losses) if losses else float("nan"),
            "time/sample_s": sum(e.seconds for e in edits.values()),
            "time/proxy_s": proxy_s,
            "time/inner_s": inner_s,
            "time/train_s": train_s,
            "time/round_s": time.perf_counter() - t_round,
            "throughput/self_edits_per_min": 60 * len(evals) / inner_s if inner_s else 0.0,
            **domain.round_metrics(evals),
        },
        "rewards": [x["reward"] for x in rows],
        "proxy_rewards": [x["proxy"] for x in rows],
    }
    write_json_atomic(rdir / "self_edit_table.json", rows)
    tracker.log_metrics({k: v for k, v in summary["metrics"].items() if v == v}, step=r)
    # a unique first column: MLflow's table view groups rows by it (by context, one self-edit
    # of each context would hide the others)
    tracker.log_table([{"id": f"{x['context']}#{x['sample']}", **x} for x in rows],
                      f"round_{r}/self_edits.json")
    if new_adapter is not None and new_adapter == adapter_dir:
        tracker.log_artifacts(adapter_dir, f"round_{r}/teacher_adapter")
    write_json_atomic(rdir / "summary.json", summary)  # last: the round is now finished
    rounds = [json.loads((out_dir / f"round_{i}" / "summary.json").read_text())
              for i in range(r + 1)]
    tracker.log_artifact(plots.rounds(rounds, out_dir / "rounds.png", run.reward.metric))
    return summary, new_adapter


def kept_self_edits(rows: list[dict], edits: dict, run: RunConfig) -> set[tuple[str, int]]:
    """(context, sample) of the round's self-edits the M-step trains on: `reward.filter` over
    those absorbed (a reward) with text to train on and a score. One with no score (ARC's
    answer_logprob after failing before training, a judge with no verdict) is recorded with
    reward 0 but never kept: nothing shows that it helped."""
    scored = [Scored(x["context"], x["sample"], x["reward"],
                     trainable=bool(m_step_text(edits[(x["context"], x["sample"])]))
                     and x["score"] is not None)
              for x in rows if x["reward"] is not None]
    return {(s.context, s.sample) for s in keep(scored, run.reward)}


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value  # NaN: left out of MLflow and the table


def mean(values) -> float:
    """The mean of the values that are not None; NaN when there are none (left out of MLflow)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def round_table(summaries: list[dict], metric: str, baseline: str = "student") -> str:
    """The rounds as text; the proxy columns only where a proxy was computed (SQuAD), the
    failure columns only where self-edits can fail before training (ARC)."""
    nan = float("nan")

    def present(key: str) -> bool:
        return any(s["metrics"].get(key, nan) == s["metrics"].get(key, nan) for s in summaries)

    proxied, failing = present("proxy/spearman"), present("student/invalid_frac")
    head = (f"{'round':>5} {'self-edits':>10} {'reward mean':>12} {'reward max':>11} "
            f"{'kept':>6} {'cut':>5} {'base':>8} {'after':>8} "
            + (f"{'proxy rho':>9} {'proxy r':>7} " if proxied else "")
            + (f"{'invalid':>7} {'over':>5} " if failing else "")
            + f"{'sample s':>9} {'inner s':>8} {'train s':>8} {'evals/min':>9}")
    against = {"student": " - the frozen student's", "passage": " - the passage-only student's",
               "passage_matched": " - the passage-only student's, trained as many steps",
               "none": ""}[baseline]
    what = ("the frozen student's log-prob with the self-edit in its prompt" if metric ==
            "context_logprob" else f"{metric} after absorbing the self-edit")
    legend = [f"reward = {what}{against}"]
    if proxied:
        legend.append("proxy rho / r: Spearman / Pearson between the proxy (context_logprob) and "
                      "the absorbed reward")
    if failing:
        legend.append("invalid / over: fractions of the self-edits that failed before training "
                      "(invalid, or over student.arc.max_steps)")
    lines = ["; ".join(legend), head, "-" * len(head)]
    for s in summaries:
        m = s["metrics"]
        lines.append(f"{s['round']:>5} {s['self_edits']:>10} {m['reward/mean']:>12.3f} "
                     f"{m['reward/max']:>11.3f} {m['filter/kept_frac']:>6.2f} "
                     f"{m.get('teacher/cut_frac', nan):>5.2f} "
                     f"{m['student/score_base']:>8.3f} {m['student/score_after']:>8.3f} "
                     + (f"{m.get('proxy/spearman', nan):>9.2f} "
                        f"{m.get('proxy/pearson', nan):>7.2f} " if proxied else "")
                     + (f"{m.get('student/invalid_frac', nan):>7.2f} "
                        f"{m.get('student/over_budget_frac', nan):>5.2f} " if failing else "")
                     + f"{m['time/sample_s']:>9.1f} {m['time/inner_s']:>8.1f} "
                     f"{m['time/train_s']:>8.1f} {m['throughput/self_edits_per_min']:>9.1f}")
    return "\n".join(lines)
