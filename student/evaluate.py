"""Scoring the student on a passage's questions, closed book (no passage in the prompt)."""

from __future__ import annotations

from dataclasses import dataclass

from student.batched import fill
from student.config import StudentConfig
from student.grade import answer_span, contains, exact_match, f1, judge_prompt, parse_verdict
from student.model import gold_logprobs
from student.prompts import answer_prompt, render


def answer(model, tokenizer, prompts: list[str], *, instruct: bool,
           max_new_tokens: int = 64) -> list[str]:
    """Greedy answers to many prompts in one batched `generate` call."""
    import torch

    texts = [render(tokenizer, p, instruct) for p in prompts]
    # The chat template already holds the special tokens it needs.
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not instruct)
    batch = batch.to(model.device)
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def answer_logprob(model, tokenizer, prompts: list[str], golds: list[str], *,
                   instruct: bool) -> list[float]:
    """Mean log-probability per token of each gold answer after its prompt (teacher-forced).

    Dense and generation-free: it moves with what the student absorbed even when the greedy
    answer does not change, which is what a small student's rewards need.
    """
    sequences = []
    for prompt, gold in zip(prompts, golds, strict=True):
        p = tokenizer(render(tokenizer, prompt, instruct), add_special_tokens=not instruct)["input_ids"]
        g = tokenizer(gold.strip(), add_special_tokens=False)["input_ids"]
        sequences.append((p + g, range(len(p), len(p) + len(g))))
    return gold_logprobs(model, tokenizer.pad_token_id, sequences)


def context_logprobs(model, tokenizer, title: str, qa: list[tuple[str, str]], context: str,
                     cfg: StudentConfig) -> list[float]:
    """`answer_logprob` of each (question, gold) with `context` (a self-edit) before the closed-
    book prompt: how much the frozen student's answers gain from reading it, with no training
    (the in-context proxy of absorbing it). One forward per question, student.eval.batch_size
    per call."""
    prompts = [f"{context.strip()}\n\n{answer_prompt(title, q)}" for q, _ in qa]
    golds = [a for _, a in qa]
    step, out = max(1, cfg.eval.batch_size), []
    for i in range(0, len(prompts), step):
        out += answer_logprob(model, tokenizer, prompts[i : i + step], golds[i : i + step],
                              instruct=cfg.instruct)
    return out


@dataclass
class QuestionScore:
    question: str
    gold: str
    logprob: float  # mean log-probability per token of the gold answer
    # the greedy answer and its grades; None when scored by log-probability only (no generation)
    prediction: str | None = None
    exact_match: float | None = None
    f1: float | None = None
    contains: float | None = None

    @classmethod
    def graded(cls, question: str, gold: str, logprob: float, prediction: str) -> QuestionScore:
        """The prediction kept whole; exact match, F1 and contains graded on its first line."""
        span = answer_span(prediction)
        return cls(question, gold, logprob, prediction, exact_match(span, gold), f1(span, gold),
                   contains(span, gold))


def score_questions(model, tokenizer, title: str, qa: list[tuple[str, str]],
                    cfg: StudentConfig, generate: bool = True) -> list[QuestionScore]:
    """Answer (question, gold) pairs about a passage titled `title`, closed book, and grade them.

    `generate=False` skips the answers and scores the gold answers' log-probability only: one
    forward pass, several times faster than generating on a CPU.
    """
    prompts = [answer_prompt(title, q) for q, _ in qa]
    golds = [a for _, a in qa]
    preds, logps = [], []
    step = max(1, cfg.eval.batch_size)
    for i in range(0, len(prompts), step):
        chunk = prompts[i : i + step]
        if generate:
            preds += answer(model, tokenizer, chunk, instruct=cfg.instruct,
                            max_new_tokens=cfg.eval.max_new_tokens)
        logps += answer_logprob(model, tokenizer, chunk, golds[i : i + step], instruct=cfg.instruct)
    if not generate:
        return [QuestionScore(q, a, lp) for (q, a), lp in zip(qa, logps, strict=True)]
    return [QuestionScore.graded(q, a, lp, p) for (q, a), p, lp in zip(qa, preds, logps, strict=True)]


def score_questions_many(model, tokenizer, adapters, items: list[tuple[str, list[tuple[str, str]]]],
                         cfg: StudentConfig, generate: bool = True) -> list[list[QuestionScore]]:
    """`score_questions` for adapter i of `adapters` (student.adapters.Adapters) on items[i] =
    (title, [(question, gold), ...]), many adapters per call: the rows of every (adapter,
    question) in adapter order, each adapter's rows routed to it, whole adapters up to
    student.eval.batch_size rows per call."""
    if len(items) != adapters.k:
        raise ValueError(f"score_questions_many: {len(items)} items for {adapters.k} adapters")
    out: list[list[QuestionScore]] = [[] for _ in items]
    todo = [i for i, (_, qa) in enumerate(items) if qa]
    try:
        for group in fill([len(items[i][1]) for i in todo], max(1, cfg.eval.batch_size)):
            mine = [todo[g] for g in group]
            qa = [(i, q, a) for i in mine for q, a in items[i][1]]
            prompts = [answer_prompt(items[i][0], q) for i, q, _ in qa]
            adapters.route([i for i, _, _ in qa])
            preds = answer(model, tokenizer, prompts, instruct=cfg.instruct,
                           max_new_tokens=cfg.eval.max_new_tokens) if generate else None
            logps = answer_logprob(model, tokenizer, prompts, [a for _, _, a in qa],
                                   instruct=cfg.instruct)
            for n, (i, q, a) in enumerate(qa):
                if preds is None:
                    out[i].append(QuestionScore(q, a, logps[n]))
                else:
                    out[i].append(QuestionScore.graded(q, a, logps[n], preds[n]))
    finally:
        adapters.route(None)
    return out


def judge(model, tokenizer, items: list[tuple[str, str, str]], *,
          instruct: bool) -> list[tuple[bool | None, str]]:
    """(verdict, reply) per (question, gold, prediction), from a local model with SEAL's prompt.

    The verdict is None when the reply is neither a clear yes nor a clear no: a judge error,
    counted apart from wrong answers. The reply is data: it is parsed, never executed.
    """
    prompts = [judge_prompt(q, g, p) for q, g, p in items]
    replies = answer(model, tokenizer, prompts, instruct=instruct, max_new_tokens=8)
    return [(parse_verdict(r), r) for r in replies]
