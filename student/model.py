"""Load the student: the one function every caller (the loop, tests, benchmarks) uses."""

from __future__ import annotations

import logging

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
    # emulated (100x slower than float32 on the 2-core AVX2 machine measured in docs/differences.md)
    dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if device == "cuda" else "float32"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
    model.requires_grad_(False)
    log.info("student %s: %s, %.0fM parameters, %s on %s", cfg.name, type(model).__name__,
             model.num_parameters() / 1e6, dtype, device)
    return model.to(device).eval(), tokenizer


def head_logits(model, hidden):
    """The causal LM's head on some hidden states: what its forward does after the decoder."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2 style
    if cap:
        import torch

        logits = torch.tanh(logits / cap) * cap
    return logits
