"""The M-step of ReST-EM: TRL SFT of a LoRA adapter on the kept (prompt -> self-edit) pairs.

TRL has no ReST trainer; the idiomatic form is what this does: a fresh `SFTTrainer` per round on
prompt/completion data, so the loss covers the self-edit only, never the prompt. For an
instruct teacher the pairs are chat messages, so TRL renders them with the same chat template
the teacher samples with. The adapter is saved in PEFT's format, staged and renamed into place:
a killed run never leaves half an adapter where a resumed run would load it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from teacher.config import TeacherConfig
from teacher.prompts import Prompt, as_messages, as_text

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


def checkpointing_key(config_class) -> str:
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else (
        "gradient_checkpointing")


def pair_rows(pairs: list[tuple[Prompt, str]], instruct: bool) -> list[dict]:
    """TRL's prompt/completion rows: chat messages for instruct models, plain text otherwise."""
    if instruct:
        return [{"prompt": as_messages(p),
                 "completion": [{"role": "assistant", "content": c}]} for p, c in pairs]
    return [{"prompt": as_text(p), "completion": c} for p, c in pairs]


def train_adapter(model, tokenizer, pairs: list[tuple[Prompt, str]], cfg: TeacherConfig, out: Path,
                  seed: int, start_from: Path | None = None,
                  fault: Callable[[str], None] | None = None) -> TrainStats:
    """Train a LoRA on `model` (left unchanged) and save it at `out`.

    `start_from`: an adapter to keep training (cfg.train.from_base=false); None: a fresh one.
    `fault`: loop.faults.point, called after each optimiser step ("train") and between staging
    and renaming the adapter ("save"), for the reliability suite.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    if start_from is not None:
        peft_model = PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
    else:
        lora = cfg.train.lora
        peft_model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.targets), task_type="CAUSAL_LM"))
    cuda = next(model.parameters()).is_cuda
    # under `accelerate launch` (loop.mstep) each of WORLD_SIZE processes takes an equal share
    # of the global batch: the same steps and, up to float order, the same adapter as one process
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.train.batch_size % world:
        raise ValueError(f"teacher.train.batch_size={cfg.train.batch_size} is the global batch: it "
                         f"must split evenly over {world} processes")
    with tempfile.TemporaryDirectory(prefix="seal-teacher-") as scratch:
        args = SFTConfig(
            output_dir=scratch, seed=seed, data_seed=seed,
            learning_rate=cfg.train.lr, num_train_epochs=cfg.train.epochs,
            per_device_train_batch_size=cfg.train.batch_size // world, lr_scheduler_type="linear",
            logging_steps=1, save_strategy="no", report_to="none",  # MLflow is ours, not the Trainer's
            use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
            # TRL turns checkpointing on: 40% slower per step on CPU (stack.md); transformers
            # renamed the setting (gradient_ before 5.20, activation_ after)
            **{checkpointing_key(SFTConfig): False},
            # no truncation: a self-edit is already capped by teacher.sampling.max_new_tokens
            completion_only_loss=True, max_length=None)
        trainer = SFTTrainer(model=peft_model, args=args, processing_class=tokenizer,
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
