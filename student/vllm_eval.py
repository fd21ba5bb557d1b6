"""The student's questions answered by vLLM (`student.eval_backend=vllm`): a batch's candidate
adapters scored in one call, one LoRA request per adapter.

The same prompts and grades as `student.evaluate.score_questions_many`: the closed-book prompt
tokenized exactly as the transformers backend does, greedy answers of up to
`student.eval.max_new_tokens`, and the gold answer's mean log-probability per token, here from
vLLM's prompt log-probabilities of prompt + gold. Every adapter gets a LoRA name and id never
used before in the process: vLLM caches adapters by id, and a reused id could serve another
adapter's weights.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from student.config import StudentConfig
from student.evaluate import QuestionScore
from student.grade import contains, exact_match, f1
from student.prompts import answer_prompt, render

_IDS = itertools.count(1_000_001)  # apart from the teacher's ids, should both share an engine


def score_many(llm, adapters: list[Path], items: list[tuple[str, list[tuple[str, str]]]],
               cfg: StudentConfig, generate: bool = True) -> list[list[QuestionScore]]:
    """Scores of adapters[i] (PEFT folders; None: the base) on items[i] = (title, [(question,
    gold), ...]), every question of every adapter in one vLLM call (two with `generate`)."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest

    if len(items) != len(adapters):
        raise ValueError(f"score_many: {len(items)} items for {len(adapters)} adapters")
    tokenizer = llm.get_tokenizer()
    loras = []
    for path in adapters:
        n = next(_IDS)
        loras.append(None if path is None else LoRARequest(f"student-{n}", n, str(Path(path).resolve())))
    rows = [(i, q, a) for i, (_, qa) in enumerate(items) for q, a in qa]
    prompts = [tokenizer(render(tokenizer, answer_prompt(items[i][0], q), cfg.instruct),
                         add_special_tokens=not cfg.instruct)["input_ids"] for i, q, _ in rows]
    golds = [tokenizer(a.strip(), add_special_tokens=False)["input_ids"] for _, _, a in rows]
    lora_per_row = [loras[i] for i, _, _ in rows]
    # prompt + gold, one token generated: the prompt log-probabilities hold each gold token's
    scored = llm.generate([TokensPrompt(prompt_token_ids=p + g) for p, g in zip(prompts, golds,
                                                                                strict=True)],
                          SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0),
                          lora_request=lora_per_row, use_tqdm=False)
    logps = []
    for out, p, g in zip(scored, prompts, golds, strict=True):
        per = out.prompt_logprobs
        logps.append(sum(per[len(p) + t][g[t]].logprob for t in range(len(g))) / len(g))
    preds = None
    if generate:
        answers = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                               SamplingParams(max_tokens=cfg.eval.max_new_tokens, temperature=0),
                               lora_request=lora_per_row, use_tqdm=False)
        preds = [o.outputs[0].text.strip() for o in answers]
    out: list[list[QuestionScore]] = [[] for _ in items]
    for n, (i, q, a) in enumerate(rows):
        if preds is None:
            out[i].append(QuestionScore(q, a, logps[n]))
        else:
            p = preds[n]
            out[i].append(QuestionScore(q, a, logps[n], p, exact_match(p, a), f1(p, a),
                                        contains(p, a)))
    return out
