"""The cheap reward and its honesty check (`reward.metric=context_logprob`, `reward.screen`).

Absorbing a self-edit is a LoRA training run, so a round of SEAL's size does not fit a CPU
session. The proxy reads the self-edit instead of training on it: the
frozen student's mean gold-answer log-probability per token with the self-edit in its prompt
(no passage, no adapter), minus the same without it. It is the reward of Sakana's RLT (a
teacher rewarded by the student's likelihood of the answer given the teacher's text in
context), applied to SEAL's self-edits; SEAL's v2 paper reports a proxy reward close to full RL
(45.6 against 47.0) at a fraction of the cost.

Three uses: the reward itself (`reward.metric=context_logprob`, nothing absorbed); a screen
(`reward.screen=m`: each context's k self-edits ranked by the proxy, only the best m absorbed);
and, in every SQuAD round that absorbs, the check of whether the proxy tracks absorbing:
Spearman's and Pearson's r across the round's self-edits between the two rewards.
"""

from __future__ import annotations

from pathlib import Path

from loop.core.ledger import append_jsonl, read_jsonl
from loop.core.reward import context_score, paired_gain
from loop.core.stats import agreement
from student.evaluate import context_logprobs, score_questions


def context_rows(model, tokenizer, passage, self_edit: str, student_cfg) -> list[dict]:
    """Per-question rows of the proxy: the gold answer's log-probability with the self-edit in
    the prompt (`context_logprob`)."""
    qa = [(q.question, q.answer) for q in passage.questions]
    lps = context_logprobs(model, tokenizer, passage.title, qa, self_edit, student_cfg)
    return [{"question": q, "gold": a, "context_logprob": lp} for (q, a), lp in zip(qa, lps, strict=True)]


def closed_book(model, tokenizer, passage, run, cache) -> list[dict]:
    """The frozen student's closed-book log-probabilities on a passage (the proxy's baseline),
    once per passage in the baseline cache."""
    def compute():
        qa = [(q.question, q.answer) for q in passage.questions]
        return [{"question": s.question, "gold": s.gold, "logprob": s.logprob}
                for s in score_questions(model, tokenizer, passage.title, qa, run.student,
                                         generate=False)]

    return cache.get(f"closed:{passage.id}", compute)


def round_proxies(student, run, contexts, edits, cache, path: Path) -> dict[tuple[str, int], float]:
    """The proxy reward of every self-edit of a round, {(context, sample): reward}, recorded in
    `path` (read back on resume: what is there is not recomputed)."""
    from tqdm import tqdm

    model, tokenizer = student
    done = {(r["context"], r["sample"]): r["reward"] for r in read_jsonl(path)}
    todo = [(c, i) for c in contexts for i in range(run.loop.k) if (c.id, i) not in done]
    for c, i in tqdm(todo, desc="proxy", unit="self-edit", disable=not todo):
        rows = context_rows(model, tokenizer, c, edits[(c.id, i)].text, run.student)
        score, base, gain = paired_gain(rows, [closed_book(model, tokenizer, c, run, cache)],
                                        "context_logprob")
        append_jsonl(path, {"context": c.id, "sample": i, "score": score, "baseline": base,
                            "reward": gain})
        done[(c.id, i)] = gain
    return done


def screened(proxies: dict[tuple[str, int], float], contexts, k: int,
             m: int) -> set[tuple[str, int]]:
    """Each context's best `m` self-edits by the proxy (ties to the lower sample index)."""
    keep = set()
    for c in contexts:
        ranked = sorted(range(k), key=lambda i: (-proxies[(c.id, i)], i))
        keep |= {(c.id, i) for i in ranked[:m]}
    return keep


def evaluation_agreement(student, run, passages, self_edits: dict[str, dict[str, list[str]]],
                         scores: dict[tuple[str, str], list[dict]], cache,
                         path: Path) -> dict[str, dict]:
    """loop.evaluate's honesty check: per self-edit condition, the proxy reward of each
    (passage, sample) against its absorbed gain in gold-answer log-probability over the frozen
    student, across self-edits. Proxy rewards are recorded in `path` (read back on resume)."""
    model, tokenizer = student
    recorded = {(r["condition"], r["context"], r["sample"]): r["reward"] for r in read_jsonl(path)}
    out = {}
    for cond, by_passage in self_edits.items():
        pairs = []
        for p in passages:
            closed = closed_book(model, tokenizer, p, run, cache)
            base = context_score(closed, "answer_logprob")
            for i, text in enumerate(by_passage[p.id]):
                if (cond, p.id, i) not in recorded:
                    rows = context_rows(model, tokenizer, p, text, run.student)
                    _, _, gain = paired_gain(rows, [closed], "context_logprob")
                    append_jsonl(path, {"condition": cond, "context": p.id, "sample": i,
                                        "reward": gain})
                    recorded[(cond, p.id, i)] = gain
                mine = [q for q in scores[(p.id, cond)] if q.get("sample") == i]
                pairs.append((recorded[(cond, p.id, i)],
                              context_score(mine, "answer_logprob") - base))
        out[cond] = {**agreement([a for a, _ in pairs], [b for _, b in pairs]), "n": len(pairs)}
    return out
