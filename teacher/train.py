"""The M-step of ReST-EM: TRL SFT of a LoRA adapter on the kept (prompt -> self-edit) pairs.

TRL has no ReST trainer; the idiomatic form is what this does: a fresh `SFTTrainer` per round on
prompt/completion data, so the loss covers the self-edit only, never the prompt (for an
instruct teacher a prompt's cue, the assistant's begun answer such as self-qa's "Question 1:",
is trained with the self-edit: it is the assistant's text). For an instruct teacher the pairs
are chat messages, so TRL renders them with the same chat template the teacher samples with.
The adapter is saved in PEFT's format, staged and renamed into place: a killed run never
leaves half an adapter where a resumed run would load it.

On a CPU the trainer computes the same loss its own way (`completion_loss`): the LM head only
at the self-edit's positions, one pair per forward pass, gradients accumulated over the batch.
TRL's fused head is built for GPUs (Triton); on a CPU it runs as torch ops over every position,
and costs as much as the transformer blocks (`python -m loop.bench --mstep`: 2.4x faster).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from teacher.config import TeacherConfig
from teacher.model import on_cpu
from teacher.prompts import Prompt, as_messages, as_text, cue

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    losses: list[float]  # the mean loss of each logged step
    steps: int
    examples: int


def _step_callback(fault: Callable[[str], None]):
    from transformers import TrainerCallback

    class StepFault(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            fault("train")

    return StepFault()


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, per-token stats) of a causal LM on `inputs`, with the LM head applied only at the
    positions whose next token the loss reads (the self-edit's), not at the prompt's or padding.

    The loss is TRL's: the summed token NLL over `num_items_in_batch` (the tokens of the whole
    accumulated batch) or, without it, over this batch's scored tokens. It is what TRL's fused
    head computes, up to float order; on a CPU that head runs its vocabulary chunks through torch
    ops (exp, sub, mul over 151k-wide tiles, recomputed in the backward), and for every prompt
    token too, which costs as much as the 0.5B teacher's transformer blocks
    (`python -m loop.bench --mstep` times the two)."""
    import torch

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = (targets != -100).any(0).nonzero().flatten()  # positions that predict a scored token
    out = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False,
                logits_to_keep=keep)
    targets = targets[:, keep]
    scored = targets != -100
    logp = out.logits[scored].float().log_softmax(-1)  # the scored positions, one pass
    truth = targets[scored]
    summed = -logp.gather(-1, truth[:, None]).sum()
    count = scored.sum() if num_items_in_batch is None else num_items_in_batch
    loss = summed / torch.as_tensor(count, device=summed.device).clamp(min=1)
    with torch.no_grad():
        logp = logp.detach()
        stats = {"scored": scored.sum(), "entropy": -(logp.exp() * logp).sum(-1).sum(),
                 "correct": (logp.argmax(-1) == truth).sum()}
    return loss, stats


def completion_head_trainer(base):
    """`base` (TRL's SFTTrainer) computing its loss with `completion_loss`, logging what TRL
    logs (entropy, token accuracy, tokens seen)."""

    import torch

    class CompletionHeadTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # the trainer then counts the scored tokens of every accumulated micro-batch and
            # passes them as num_items_in_batch: the loss is the whole batch's token mean
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (return_outputs or self.args.loss_type != "nll" or self.compute_loss_func
                    or self.label_smoother is not None or self.aux_loss_enabled):
                # logits asked for, another loss, or an MoE's auxiliary loss: TRL's own path
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, stats = completion_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages: as TRL does
            gather = self.accelerator.gather_for_metrics
            mode = "train" if self.model.training else "eval"
            scored = gather(stats["scored"]).sum()
            if scored > 0:
                self._metrics[mode]["entropy"].append((gather(stats["entropy"]).sum() / scored).item())
                self._metrics[mode]["mean_token_accuracy"].append(
                    (gather(stats["correct"]).sum() / scored).item())
            if mode == "train":  # tokens seen, padding excluded (TRL's `num_tokens`)
                mask = inputs.get("attention_mask")
                seen = mask.sum() if mask is not None else torch.tensor(inputs["input_ids"].numel())
                self._total_train_tokens += gather(seen.to(loss.device)).sum().item()
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CompletionHeadTrainer


def checkpointing_key(config_class) -> str:
    names = {f.name for f in dataclasses.fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else (
        "gradient_checkpointing")


def checkpointing(setting, gpu: bool) -> bool:
    """teacher.train.checkpointing resolved: auto is on on a GPU, off on a CPU."""
    value = str(setting).lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"teacher.train.checkpointing must be auto, true or false, got {setting!r}")
    return gpu if value == "auto" else value == "true"


def pair_rows(pairs: list[tuple[Prompt, str]], instruct: bool) -> list[dict]:
    """TRL's prompt/completion rows: chat messages for instruct models, plain text otherwise."""
    if instruct:  # a cue (the assistant's begun answer) is part of what the teacher learns,
        # spelt as it was sampled: the cue's last word, then the model's " What ..."
        return [{"prompt": as_messages(p)[:-1] if cue(p) is not None else as_messages(p),
                 "completion": [{"role": "assistant",
                                 "content": f"{cue(p).rstrip()} {c}" if cue(p) else c}]}
                for p, c in pairs]
    return [{"prompt": as_text(p), "completion": c} for p, c in pairs]


def train_adapter(model, tokenizer, pairs: list[tuple[Prompt, str]], cfg: TeacherConfig, out: Path,
                  seed: int, start_from: Path | None = None,
                  fault: Callable[[str], None] | None = None, head: str = "auto",
                  micro_batch: int | None = None) -> TrainStats:
    """Train a LoRA on `model` (left unchanged) and save it at `out`.

    `start_from`: an adapter to keep training (cfg.train.from_base=false); None: a fresh one.
    `fault`: loop.core.faults.point, called after each optimiser step ("train") and between staging
    and renaming the adapter ("save"), for the reliability suite.
    `head`: "fused", TRL's fused LM head over every position (Triton kernels on a GPU);
    "completion", the head on the self-edit's positions only (`completion_loss`); "auto": fused
    on a GPU, completion on a CPU. `micro_batch` (None: 1 on a CPU, the whole batch on a GPU):
    pairs per forward pass, the gradients accumulated over teacher.train.batch_size pairs; one
    pair at a time pads nothing, and a CPU gains nothing from a wider matmul;
    teacher.train.micro_batch, when set, is used where `micro_batch` is None. Neither changes
    the optimiser's steps or the loss beyond float order (tests/teacher/test_train.py).
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from trl import SFTConfig, SFTTrainer

    cuda = not on_cpu(next(model.parameters()).device)  # a GPU (or tests/emulated's meta device)
    if head not in ("auto", "fused", "completion"):
        raise ValueError(f"head={head!r}: auto, fused or completion")
    completion = head == "completion" or (head == "auto" and not cuda)
    # under `accelerate launch` (loop.mstep) each of WORLD_SIZE processes takes an equal share
    # of the global batch: the same steps and, up to float order, the same adapter as one
    # process (when the pairs fill whole global batches: accelerate pads a short last one by
    # repeating pairs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.train.batch_size % world:
        raise ValueError(f"teacher.train.batch_size={cfg.train.batch_size} is the global batch: it "
                         f"must split evenly over {world} processes")
    per_process = cfg.train.batch_size // world
    micro = micro_batch or cfg.train.micro_batch or (per_process if cuda else 1)
    if micro < 1 or per_process % micro:
        raise ValueError(f"micro_batch={micro} must divide the {per_process} pairs of a step "
                         "on each process")
    torch.manual_seed(seed)
    if start_from is not None:
        peft_model = PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
    else:
        lora = cfg.train.lora
        peft_model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.targets), task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory(prefix="seal-teacher-") as scratch:
        args = SFTConfig(
            output_dir=scratch, seed=seed, data_seed=seed,
            learning_rate=cfg.train.lr, num_train_epochs=cfg.train.epochs,
            per_device_train_batch_size=micro, gradient_accumulation_steps=per_process // micro,
            lr_scheduler_type="linear",
            logging_steps=1, save_strategy="no", report_to="none",  # MLflow is ours, not the Trainer's
            use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
            # TRL turns checkpointing on: slower per step on a CPU, where it is off unless
            # asked; on a GPU it is what lets a 7B's batch of 1,024-token self-edits fit
            # (transformers renamed the setting: gradient_ before 5.20, activation_ after)
            **{checkpointing_key(SFTConfig): checkpointing(cfg.train.checkpointing, cuda)},
            # no truncation: a self-edit is already capped by teacher.sampling.max_new_tokens
            completion_only_loss=True, max_length=None)
        trainer_class = completion_head_trainer(SFTTrainer) if completion else SFTTrainer
        trainer = trainer_class(model=peft_model, args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(pair_rows(pairs, cfg.instruct)),
                             callbacks=[_step_callback(fault)] if fault else None)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        steps = trainer.state.global_step
        if trainer.accelerator.is_main_process:  # DDP keeps every process's weights equal: one writes
            staged = out.with_name(out.name + ".tmp")
            shutil.rmtree(staged, ignore_errors=True)
            peft_model.save_pretrained(str(staged))
            (staged / "train_losses.json").write_text(json.dumps(losses))
            (staged / "train_info.json").write_text(json.dumps(
                {"examples": len(pairs), "steps": steps, "processes": world}))
            if fault:
                fault("save")
            shutil.rmtree(out, ignore_errors=True)
            staged.rename(out)
        trainer.accelerator.wait_for_everyone()
    peft_model.unload()  # the base as it was: its weights were frozen throughout
    model.eval()
    log.info("teacher adapter: %d examples, %d steps on %d process%s, loss %.3f -> %.3f, saved "
             "to %s", len(pairs), steps, world, "es" * (world > 1), losses[0], losses[-1], out)
    return TrainStats(losses, steps, len(pairs))
