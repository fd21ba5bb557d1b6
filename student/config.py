"""The student's config group (`conf/student/`): which frozen model absorbs the self-edits, and how.

The defaults of `SelfEditData`, `LoraSettings` and `TrainSettings` are SEAL's inner-loop settings
(r=32, alpha=64, lr 1e-3, 10 epochs, batch 1), minus two quirks of the reference code: it trains
on padding, and PEFT's default targets there are only q/v. Presets tune them for their model
(`conf/student/smollm135m.yaml` holds the CPU settings measured in docs/notebook/results.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = ("auto", "float32", "bfloat16", "float16")  # torch dtype names (the teacher keeps its own copy)
BATCHED = ("auto", "true", "false")
PASSAGE_STEPS = ("shared", "own")
# the views student.arc.views may name (student/arc/augment.py's VIEW_TRANSFORMS, one each)
VIEWS = ("identity", "transpose", "flip_rows", "flip_cols", "rot90", "rot180", "rot270")

# Each class's ACCEPTS: what its fields accept, checked at launch (the rules' forms are
# described in loop/core/checks.py, which reads them).
LEARNING_RATE = ("> 0", "a finite number above 0")


def _learning_rates(v) -> bool:
    return (len(v) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool)
                                and math.isfinite(x) for x in v) and 0 < v[0] <= v[1])


@dataclass
class SelfEditData:
    """How a self-edit becomes training sequences."""

    split_lines: bool = True  # one sequence per non-empty line (SEAL); false: the whole edit as one
    title_prefix: bool = True  # each sequence starts with the passage's title, as in SEAL
    with_passage: bool = True  # append the raw passage as one more sequence (SEAL's default)
    max_length: int = 2048  # tokens per sequence; longer ones are cut with a warning

    ACCEPTS: ClassVar[dict] = {"max_length": ">= 1"}


@dataclass
class LoraSettings:
    r: int = 32  # more capacity per self-edit, more memory and time
    alpha: int = 64  # the update is scaled by alpha / r
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))

    ACCEPTS: ClassVar[dict] = {
        "r": ">= 1",
        "alpha": "> 0",
        "dropout": ("in [0, 1)", "a probability in [0, 1)"),
        "targets": ("non-empty", "a non-empty list of module names"),
    }


@dataclass
class TrainSettings:
    lr: float = 1e-3
    epochs: int = 10  # passes over the self-edit's sequences
    batch_size: int = 1  # sequences per optimiser step; SEAL uses 1, the CPU preset all of them
    schedule: str = "linear"  # "linear" (decay to 0, as SEAL's Trainer) or "constant"
    # a batch's sequences in one row without padding (same loss as a padded batch, less compute)
    packing: bool = True
    # where the passage (student.data.with_passage) trains beside a self-edit: `shared`, one
    # more sequence among the self-edit's, in the same batches (SEAL's rule: with full-batch
    # steps the self-edit dilutes it); `own`, alone in the first step of each epoch (the
    # `passage` row's batches), the self-edit's batches added after it (additive: the schedule
    # then spans the added steps too)
    passage_steps: str = "shared"
    method: str = "lora"  # lora: a fresh adapter; full: every weight, restored afterwards
    # true: LoRA self-edits are trained and answered many at once, sharing every pass over the
    # frozen base (student/batched.py); false: one adapter at a time with PEFT (the reference
    # path); auto: true on a GPU; on a CPU, trained one at a time with PEFT and then answered
    # together where answers are generated, all one at a time where they are only scored (on 2
    # CPU cores batched training ran 0.92x one at a time, batched teacher-forced scoring 0.84x,
    # batched generation faster: `python -m loop.bench`). ARC's test-time training takes auto
    # as true.
    batched: str = "auto"
    max_adapters: int = 8  # adapters trained together; lower it if the inner loop runs out of memory
    # each optimiser step's gradient is clipped to this norm (per adapter), as the reference's
    # Trainer does; null: no clipping
    max_grad_norm: float | None = 1.0
    # tokens per forward/backward pass within a batched step (gradients accumulated, same
    # result); unset: 512 on a CPU, where small passes stay in cache, all at once on a GPU
    pass_tokens: int | None = None

    ACCEPTS: ClassVar[dict] = {
        "lr": LEARNING_RATE,
        "epochs": ">= 1",
        "batch_size": ">= 1",
        "schedule": {"one of": ("linear", "constant")},
        "passage_steps": (PASSAGE_STEPS, " or ".join(PASSAGE_STEPS)),
        "method": {"one of": ("lora", "full")},
        "batched": (lambda v: str(v).lower() in BATCHED, "auto, true or false"),
        "max_adapters": ">= 1",
        "max_grad_norm": ("null or > 0", "above 0, or null (no clipping)"),
        "pass_tokens": ("null or >= 1", "at least 1, or null (automatic)"),
    }


def batched_setting(value) -> str:
    """student.train.batched as one of BATCHED (a YAML or command-line boolean included)."""
    text = str(value).lower()
    if text not in BATCHED:
        raise ValueError(f"student.train.batched must be auto, true or false, got {value!r}")
    return text


@dataclass
class EvalSettings:
    max_new_tokens: int = 64  # SEAL answers with up to 64 tokens, greedy
    batch_size: int = 32  # questions per generate call

    ACCEPTS: ClassVar[dict] = {"max_new_tokens": ">= 1", "batch_size": ">= 1"}


@dataclass
class ArcOracle:
    """The hand-tuned test-time training configuration (the reference's fixed TTT settings:
    every augmentation family, loss on the output grid, lr 1e-4, 2 epochs): loop.evaluate's
    `oracle` row for task=arc."""

    families: list[str] = field(default_factory=lambda: ["basic", "size", "chain", "repeat"])
    loss: str = "output"  # output | all
    lr: float = 1e-4
    epochs: int = 2

    ACCEPTS: ClassVar[dict] = {"lr": LEARNING_RATE, "epochs": ">= 1"}


@dataclass
class ArcSettings:
    """ARC test-time training (task=arc). The paper's settings: LoRA r=128/alpha=16 on q, v,
    gate, up, down; batch 2; cosine schedule; leave-one-out and leave-two-out tasks; at most
    250 training tasks; more than 375 steps counts as a failed self-edit."""

    lora: LoraSettings = field(default_factory=lambda: LoraSettings(
        r=128, alpha=16, targets=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]))
    leave_out: list[int] = field(default_factory=lambda: [1, 2])  # demos held out per task
    max_tasks: int = 250  # training tasks kept (a seeded subset when there are more)
    max_tokens: int = 8192  # training tasks or views longer than this are dropped
    max_side: int = 30  # ARC's largest grid side: augmented tasks or views with a longer one are dropped
    batch_size: int = 2
    warmup_steps: int = 11
    max_steps: int = 375  # a self-edit asking for more steps fails (reward 0), as in SEAL
    lr_range: list[float] = field(default_factory=lambda: [1e-6, 1e-2])  # accepted learning rates
    max_epochs: int = 10  # accepted num_train_epochs
    max_grad_norm: float | None = 1.0  # per-step gradient clipping (the reference's); null: none
    permute: bool = True  # add a copy of each training task with its demonstrations reordered
    # ...and its colours permuted (0, the background, stays), when the self-edit switched on an
    # augmentation family: the reference's copy of every task
    permute_colors: bool = True
    # the views of the test input the adapted student answers, each undone before the vote
    # (SEAL's: identity, transposition, both flips, two rotations; see student/arc/augment.py)
    views: list[str] = field(default_factory=lambda: [
        "identity", "transpose", "flip_rows", "flip_cols", "rot90", "rot180"])
    # more views: the identity view with the demonstrations in other orders (the reference's 2)
    view_orders: int = 2
    oracle: ArcOracle = field(default_factory=ArcOracle)

    ACCEPTS: ClassVar[dict] = {
        "leave_out": (lambda v: bool(v) and all(isinstance(n, int) and n >= 1 for n in v),
                      "a non-empty list of demonstration counts, each at least 1"),
        "max_tasks": ">= 1",
        "max_tokens": ">= 1",
        "max_side": ">= 1",
        "batch_size": ">= 1",
        "warmup_steps": ">= 0",
        "max_steps": ">= 1",
        "lr_range": (_learning_rates, "two learning rates [low, high] with 0 < low <= high"),
        "max_epochs": ">= 1",
        "max_grad_norm": ("null or > 0", "above 0, or null (no clipping)"),
        "views": (lambda v: bool(v) and all(n in VIEWS for n in v),
                  f"a non-empty list of views among {list(VIEWS)}"),
        "view_orders": ">= 0",
    }


@dataclass
class StudentConfig:
    # Model identity: filled from conf/model/<preset>.yaml (the same presets serve both roles).
    name: str = MISSING  # the preset's name, used in run names and MLflow tags
    hub_id: str = MISSING  # Hugging Face id, loaded from the HF cache or the hub when `path` is unset
    path: str | None = None  # a local checkpoint folder; wins over hub_id (bundled presets set it)
    revision: str | None = None  # hub revision (branch, tag or commit) for reproducible loads
    instruct: bool = False  # answer prompts go through the tokenizer's chat template
    dtype: str = "auto"  # torch dtype name; auto: bfloat16 on GPU, float32 on CPU (see model.py)
    trust_remote_code: bool = False  # runs code shipped with a checkpoint: only for repos you trust
    # How a self-edit is absorbed and scored.
    data: SelfEditData = field(default_factory=SelfEditData)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    # who answers the questions after absorbing: `transformers` (in process) or `vllm` (a batch's
    # adapters as LoRA requests in one call; needs student.train.batched)
    eval_backend: str = "transformers"
    # eval_backend=vllm on a GPU: the fraction of the GPU's memory the student's engine may take
    # (weights and KV cache); the in-process models share the rest
    vllm_memory: float = 0.3
    arc: ArcSettings = field(default_factory=ArcSettings)

    ACCEPTS: ClassVar[dict] = {
        "dtype": (DTYPES, " or ".join(DTYPES)),
        "eval_backend": {"one of": ("transformers", "vllm")},
        "vllm_memory": ("in (0, 1]", "a fraction of the GPU's memory, in (0, 1]"),
    }
