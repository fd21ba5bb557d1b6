"""Load the student: the one function every caller (the loop, tests, benchmarks) uses."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from student.config import StudentConfig

log = logging.getLogger(__name__)


def load_student(cfg: StudentConfig, device: str | None = None):
    """The frozen student base (eval mode, no gradients) and its tokenizer.

    The base never changes: self-edits are absorbed by LoRA adapters on top of it. Loads
    `cfg.path` when set (bundled presets and local checkpoints), else `cfg.hub_id`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = cfg.path or cfg.hub_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    tokenizer.padding_side = "left"  # answers are generated in batches
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # "auto": bf16 on GPUs; float32 on CPUs, where bf16 matmuls without AVX512-BF16/AMX are
    # emulated (far slower than float32: measured in docs/differences.md)
    dtype = auto_dtype(cfg.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
    model.requires_grad_(False)
    log.info("student %s: %s, %.0fM parameters, %s on %s", cfg.name, type(model).__name__,
             model.num_parameters() / 1e6, dtype, device)
    return model.to(device).eval(), tokenizer


def on_cpu(device) -> bool:
    """Whether `device` is the CPU: the CPU-only choices (float32, passes of 512 tokens, one
    pair per M-step pass, no activation checkpointing) apply there; every other device (cuda,
    cuda:1, and the `meta` device that stands for CUDA in tests/emulated) takes the GPU's."""
    import torch

    return torch.device(device).type == "cpu"


def auto_dtype(setting: str, device) -> str:
    """A role's `dtype` resolved: "auto" is bfloat16 off the CPU, float32 on it."""
    return setting if setting != "auto" else "float32" if on_cpu(device) else "bfloat16"


def head_logits(model, hidden):
    """The causal LM's head on some hidden states: what its forward does after the decoder."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2 style
    if cap:
        import torch

        logits = torch.tanh(logits / cap) * cap
    return logits


def gold_logprobs(model, pad_id: int, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]
                  ) -> list[float]:
    """The mean log-probability per gold token of each (token ids, positions of its gold
    tokens), teacher-forced: one padded forward pass of the decoder, and the head only at the
    positions that predict a gold token (t - 1), since a vocabulary-wide row per prompt token
    would be most of the work. Adapters routed by row (student.adapters.Adapters.route) apply."""
    import torch

    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (x, _) in enumerate(sequences):
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    rows = torch.tensor([r for r, (_, at) in enumerate(sequences) for _ in at])
    cols = torch.tensor([t - 1 for _, at in sequences for t in at])
    gold = torch.tensor([x[t] for x, at in sequences for t in at])
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=ids.to(model.device),
                                     attention_mask=mask.to(model.device)).last_hidden_state
        logits = head_logits(model, hidden[rows.to(model.device), cols.to(model.device)])
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp[torch.arange(len(gold), device=model.device), gold.to(model.device)].cpu()
    sums = torch.zeros(len(sequences), dtype=picked.dtype).index_add(0, rows, picked)
    return (sums / torch.tensor([len(at) for _, at in sequences])).tolist()
