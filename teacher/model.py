"""Load the teacher: the one function every caller (the loop, tests, benchmarks) uses."""

from __future__ import annotations

import logging

from teacher.config import TeacherConfig

log = logging.getLogger(__name__)


def load_teacher(cfg: TeacherConfig, device: str | None = None):
    """The teacher model (eval mode) and its tokenizer, left-padded for batched sampling.

    Loads `cfg.path` when set (bundled presets and local checkpoints), else `cfg.hub_id` from
    the Hugging Face cache or the hub.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = cfg.path or cfg.hub_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    tokenizer.padding_side = "left"  # decoder-only batches grow to the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # "auto": bf16 on GPUs; float32 on CPUs, where bf16 matmuls without AVX512-BF16/AMX are
    # emulated (100x slower than float32 on the 2-core AVX2 machine measured in docs/differences.md)
    dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if device.startswith("cuda") else "float32"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
    log.info("teacher %s: %s, %.0fM parameters, %s on %s", cfg.name, type(model).__name__,
             model.num_parameters() / 1e6, dtype, device)
    return model.to(device).eval(), tokenizer
