"""The inner loop of a round: every (self-edit, inner seed) absorbed by the student and scored,
its reward against the student's baseline written to the ledger as soon as its batch is done."""

from __future__ import annotations

from loop.core import faults
from loop.core.config import RunConfig
from loop.core.domain import Absorbed, Domain, Key
from loop.core.executor import LocalExecutor
from loop.core.ledger import Evaluation, Ledger
from loop.core.metrics import rewards
from loop.core.reward import context_score, paired_gain
from loop.core.sampling import SelfEdit
from loop.core.seeds import derive_seed
from student.config import batched_setting


def metric_means(questions: list[dict]) -> dict[str, float]:
    return {m: v for m in rewards() if (v := context_score(questions, m)) is not None}


def inner_round(student, run: RunConfig, domain: Domain, r: int, contexts: list,
                edits: dict[tuple[str, int], SelfEdit], ledger: Ledger, baseline,
                judge_model, executor=None,
                absorb: set[tuple[str, int]] | None = None) -> list[Evaluation]:
    """Every (self-edit, inner seed) of the round absorbed and scored, or read from the ledger;
    with `absorb` (reward.screen) only those self-edits. With reward.metric=context_logprob
    each self-edit is read in context by the frozen student instead (loop.tasks.squad.proxy).

    The missing ones are absorbed in batches of student.train.max_adapters (one with
    student.train.batched=false), cut by the domain (`Domain.groups`: ARC batches one task's
    self-edits, SQuAD batches across passages); each is written to the ledger as soon as its
    batch is scored. The batches run on `executor` (loop.core.executor: this process by default, or
    Ray workers) through `domain.score_batch`; only this process writes."""
    from tqdm import tqdm

    metric = run.reward.metric
    by_id = {c.id: c for c in contexts}
    keys = [(c.id, i, j) for c in contexts for i in range(run.loop.k)
            for j in range(run.reward.inner_seeds) if absorb is None or (c.id, i) in absorb]
    done: dict[Key, Evaluation] = {}
    for cid, i, j in keys:
        if (e := ledger.get(r, cid, i, j, edits[(cid, i)].hash)) is not None:
            done[(cid, i, j)] = e
    bases: dict[str, list[list[dict]]] = {}

    def base_score(c) -> list[list[dict]]:
        if c.id not in bases:
            bases[c.id] = domain.baseline(student, run, c, baseline, judge_model)
        return bases[c.id]

    def record(cid, i, j, seed, result: Absorbed, seconds) -> None:
        score, b, gain = paired_gain(result.scores, base_score(by_id[cid]), metric)
        e = Evaluation(r, cid, i, j, edits[(cid, i)].hash, seed, metric, b, score, gain, seconds,
                       result.losses, metric_means(result.scores), result.failure)
        ledger.add(e)
        done[(cid, i, j)] = e

    seeds = {key: derive_seed(run.seed, "absorb", r, *key) for key in keys}
    # max_adapters self-edits per batch (one at a time with student.train.batched=false, so a
    # kill loses at most the batch in flight). A batch recorded in part by a killed run is
    # computed whole again, so that every result has the companions it had
    size = (run.student.train.max_adapters
            if batched_setting(run.student.train.batched) != "false" else 1)
    groups = domain.groups(run, keys, size, done)
    todo = [key for key in keys if key not in done]
    texts = {key: e.text for key, e in edits.items()}
    with tqdm(total=len(keys), initial=len(keys) - len(todo), desc=f"round {r}: inner loop",
              unit="eval") as bar:
        for c in {cid: by_id[cid] for cid, _, _ in todo}.values():
            base_score(c)  # baselines first: they are not part of a batch's time
        executor = executor or LocalExecutor(student, judge_model, domain.score_batch)
        items = [domain.batch(run, g, by_id, texts, seeds) for g in groups]
        for n, (results, seconds) in executor.map(run, items):
            group = groups[n]
            missing = [(key, result) for key, result in zip(group, results, strict=True)
                       if key not in done]
            for key, result in missing:
                record(*key, seeds[key], result, seconds / len(group))
            bar.update(len(missing))
            faults.point("inner")
    return [done[key] for key in keys]


def self_edit_rows(run: RunConfig, contexts: list, edits, evals: list[Evaluation],
                   kept: set[tuple[str, int]]) -> list[dict]:
    """The round's self-edit table: one row per self-edit, its reward and score averaged over
    inner seeds (a score of None, a judge with no verdict, is left out of the mean)."""
    rows = []
    for c in contexts:
        for i in range(run.loop.k):
            mine = [e for e in evals if (e.context, e.sample) == (c.id, i)]
            scores = [e.score for e in mine if e.score is not None]
            rows.append({"context": c.id, "sample": i,  # reward None: screened out, not absorbed
                         "reward": sum(e.reward for e in mine) / len(mine) if mine else None,
                         "score": sum(scores) / len(scores) if scores else None,
                         "baseline": mine[0].baseline if mine else None,
                         "kept": (c.id, i) in kept, "self_edit": edits[(c.id, i)].text})
    return rows
