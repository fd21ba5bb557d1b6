"""Sampling self-edits from the teacher (transformers backend, the embedded default)."""

from __future__ import annotations

from teacher.prompts import render


def sample(model, tokenizer, prompts: list[str], *, instruct: bool, max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 0.95, seed: int = 0) -> list[str]:
    """One completion per prompt, sampled in one batched `generate` call."""
    import torch

    torch.manual_seed(seed)
    texts = [render(tokenizer, p, instruct) for p in prompts]
    # The chat template already holds the special tokens it needs.
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not instruct)
    batch = batch.to(model.device)
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=temperature > 0, temperature=temperature or None,
                             top_p=top_p, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
