"""Answering questions with the student, closed book (no passage in the prompt)."""

from __future__ import annotations

from student.prompts import render


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
