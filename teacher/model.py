"""Load the teacher: the one function every caller (the loop, tests, benchmarks) uses."""

from __future__ import annotations

import logging

from teacher.config import TeacherConfig

log = logging.getLogger(__name__)


def on_cpu(device) -> bool:
    """Whether `device` is the CPU, where the CPU-only choices apply (float32, one pair per
    M-step pass, no checkpointing); every other device (cuda, cuda:1, and the `meta` device
    that stands for CUDA in tests/emulated) takes the GPU's. (The student has its own copy:
    the roles never import each other.)"""
    import torch

    return torch.device(device).type == "cpu"


def auto_dtype(setting: str, device) -> str:
    """`teacher.dtype` resolved: "auto" is bfloat16 off the CPU, float32 on it."""
    return setting if setting != "auto" else "float32" if on_cpu(device) else "bfloat16"


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
    # emulated (far slower than float32: measured in docs/differences.md)
    dtype = auto_dtype(cfg.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
    log.info("teacher %s: %s, %.0fM parameters, %s on %s", cfg.name, type(model).__name__,
             model.num_parameters() / 1e6, dtype, device)
    return model.to(device).eval(), tokenizer
