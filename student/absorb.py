"""Absorbing a self-edit: a fresh LoRA adapter on the frozen base, trained by SFT, then removed.

    with fresh_adapter(base, cfg.lora, seed) as model:
        train(model, tokenizer, texts, cfg, seed)
        ...evaluate model...
    # base is exactly as before: unload() removes the LoRA layers, base weights are never trained

Departures from SEAL's inner loop: padding never enters the loss (SEAL pads to 2048 tokens and
trains on it); LoRA targets every projection by default (SEAL gets PEFT's q/v default); the
training loop is a plain AdamW loop, not a Trainer (no per-adapter Trainer start-up cost).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass

from student.config import PASSAGE_STEPS, LoraSettings, StudentConfig
from student.data import collate, encode, pack

log = logging.getLogger(__name__)


@contextmanager
def fresh_adapter(model, lora: LoraSettings, seed: int):
    """The base wrapped in a new, seeded LoRA adapter; on exit the base is unwrapped again."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA's A matrices are initialised at random, B at zero
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)  # wraps the base's modules in place
    try:
        yield peft_model
    finally:
        peft_model.unload()  # restores the original modules; the base weights were never trained


@contextmanager
def restored(model):
    """On exit, the weights exactly as they were on entry (frozen, eval mode): for runs that
    change the base itself (full fine-tuning, merged adapters)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield model
    finally:
        model.load_state_dict(saved)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()


@contextmanager
def full_finetune(model):
    """Every weight of the base trainable; on exit the saved weights are put back and frozen."""
    with restored(model):
        for p in model.parameters():
            p.requires_grad_(True)
        yield model


def absorbing(model, cfg: StudentConfig, seed: int):
    """The student ready to absorb: a fresh LoRA, or (student.train.method=full) all weights."""
    if cfg.train.method == "full":
        import torch

        torch.manual_seed(seed)
        return full_finetune(model)
    if cfg.train.method != "lora":
        raise ValueError(f"unknown student.train.method '{cfg.train.method}'; choose lora or full")
    return fresh_adapter(model, cfg.lora, seed)


@dataclass
class TrainResult:
    losses: list[float]  # one per optimiser step
    sequences: int
    tokens: int
    truncated: int  # sequences cut to student.data.max_length


@dataclass
class Plan:
    """What training on a self-edit's texts does, step by step: the batch of every optimiser
    step (in seeded order) and its learning rate. Both training paths run the same plan."""

    steps: list[dict]
    lrs: list[float]
    sequences: int
    tokens: int
    truncated: int


def plan(model, tokenizer, texts: list[str], cfg: StudentConfig, seed: int,
         packing: bool | None = None) -> Plan:
    """`texts` (each a sequence) as optimiser steps: student.train.epochs passes in a seeded
    order, student.train.batch_size sequences per step, the lr schedule evaluated per step.

    With student.train.passage_steps=own and student.data.with_passage, the last text (the
    passage, where `student.data.training_texts` puts it) trains alone in the first step of
    every epoch, and the others in their own batches after it."""
    import torch

    # never train past the model's context, whatever student.data.max_length says
    context = getattr(model.config, "max_position_embeddings", None) or cfg.data.max_length
    enc = encode(tokenizer, texts, min(cfg.data.max_length, context))
    n, batch = len(enc.input_ids), max(1, cfg.train.batch_size)
    own = separate_passage(n, cfg)
    shuffled = enc.input_ids[:-1] if own else enc.input_ids
    total = step_count(n, cfg)
    factor = schedule(cfg.train.schedule, total)
    packing = cfg.train.packing if packing is None else packing

    def step(chunk):
        return pack(chunk) if packing else collate(chunk, tokenizer.pad_token_id)

    order = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(cfg.train.epochs):
        if own:
            steps.append(step(enc.input_ids[-1:]))
        perm = torch.randperm(len(shuffled), generator=order).tolist()
        for i in range(0, len(shuffled), batch):
            steps.append(step([shuffled[j] for j in perm[i : i + batch]]))
    return Plan(steps, [cfg.train.lr * factor(s) for s in range(total)], n,
                sum(map(len, enc.input_ids)), enc.truncated)


def separate_passage(n_texts: int, cfg: StudentConfig) -> bool:
    """Whether the passage trains in steps of its own (student.train.passage_steps=own), which
    needs it among the texts (student.data.with_passage) and something beside it."""
    if cfg.train.passage_steps not in PASSAGE_STEPS:
        raise ValueError(f"student.train.passage_steps must be one of {list(PASSAGE_STEPS)}, "
                         f"got {cfg.train.passage_steps!r}")
    return cfg.train.passage_steps == "own" and cfg.data.with_passage and n_texts > 1


def step_count(n_texts: int, cfg: StudentConfig) -> int:
    """The optimiser steps `plan` makes of `n_texts` sequences."""
    batch = max(1, cfg.train.batch_size)
    if separate_passage(n_texts, cfg):
        return cfg.train.epochs * (1 + math.ceil((n_texts - 1) / batch))
    return cfg.train.epochs * math.ceil(n_texts / batch)


def schedule(name: str, total: int):
    """The lr factor at each step: `linear` decays to 0 (SEAL's Trainer), `constant` stays 1."""
    if name == "linear":
        return lambda s: 1 - s / total
    if name == "constant":
        return lambda s: 1.0
    raise ValueError(f"unknown student.train.schedule '{name}'; choose linear or constant")


def train(model, tokenizer, texts: list[str], cfg: StudentConfig, seed: int) -> TrainResult:
    """SFT of the adapter's parameters on `texts` (each a sequence), in seeded order: the
    one-adapter-at-a-time path (student.train.batched=false)."""
    import torch

    p = plan(model, tokenizer, texts, cfg, seed)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=0.0)
    factor = schedule(cfg.train.schedule, len(p.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses = optimise(model, iter(p.steps), opt, sched, cfg.train.max_grad_norm)
    return TrainResult(losses, p.sequences, p.tokens, p.truncated)


def train_alone(model, tokenizer, texts: list[str], cfg: StudentConfig,
                seed: int) -> tuple[dict, TrainResult]:
    """A fresh LoRA adapter trained alone on `texts` (`train`, PEFT) and taken off the base:
    ({module name: (A, B)}, what training did), for `student.adapters.Adapters(weights=)`."""
    with fresh_adapter(model, cfg.lora, seed) as adapted:
        result = train(adapted, tokenizer, texts, cfg, seed)
        weights = peft_weights(adapted)
    return weights, result


def peft_weights(peft_model) -> dict:
    """{module name: (A (r × in), B (out × r))} of a PEFT model's default LoRA adapter, copied."""
    return {name: (module.lora_A["default"].weight.detach().clone(),
                   module.lora_B["default"].weight.detach().clone())
            for name, module in peft_model.base_model.model.named_modules()
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})}


def optimise(model, batches, opt, sched, max_grad_norm: float | None = None) -> list[float]:
    """One optimiser step per batch (model inputs with labels), its gradient clipped to
    `max_grad_norm` (None: not clipped); the loss of each step. The model is in train mode
    meanwhile and in eval mode afterwards."""
    import torch

    device = next(model.parameters()).device
    params = [p for group in opt.param_groups for p in group["params"]]
    losses = []
    model.train()
    for inputs in batches:
        loss = model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}).loss
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses

