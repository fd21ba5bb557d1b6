"""The teacher's config group (`conf/teacher/`): which model writes the self-edits, how it
samples them, and how the M-step trains it.

The defaults are SEAL's: temperature 1.0 / top_p 0.95 sampling, and a LoRA r=64 / alpha=128 on
every projection trained by TRL SFT with lr 3e-4 for 2 epochs at batch 10. The CPU default run
(`conf/config.yaml`) shortens the self-edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

# every linear projection of Llama/Qwen-style blocks (the student has its own copy of this list:
# the two roles never import each other)
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = ("auto", "float32", "bfloat16", "float16")  # torch dtype names (the student keeps its own copy)

# Each class's ACCEPTS: what its fields accept, checked at launch (the rules' forms are
# described in loop/core/checks.py, which reads them).


@dataclass
class SamplingSettings:
    # SQuAD: implications(-long, -very-long), rewrite, self-qa (SEAL's), self-qa-list
    prompt: str = "implications"
    # task=arc: `seal` (the reference's instruction, verbatim) or `limits` (the same, then the
    # limits student.arc enforces, written from those settings and the task's own demonstrations)
    arc_prompt: str = "seal"
    temperature: float = 1.0  # 0: greedy (every sample of a context is the same)
    top_p: float = 0.95
    max_new_tokens: int = 1024  # a self-edit is cut here; longer means slower inner loops too
    batch_size: int = 16  # samples per generate call; more is faster until memory runs out
    # with a trained adapter (transformers backend): sample from the base weights with the
    # adapter's update added for each call, put back exactly afterwards, instead of through
    # PEFT's extra low-rank matmuls (`python -m loop.bench --sampling` times the two)
    merged: bool = True

    ACCEPTS: ClassVar[dict] = {
        "temperature": (">= 0", "a finite number, at least 0 (0: greedy)"),
        "top_p": "in (0, 1]",
        "max_new_tokens": ">= 1",
        "batch_size": ">= 1",
    }


@dataclass
class TeacherLora:  # the same rules as student.config.LoraSettings (the roles never import each other)
    r: int = 64
    alpha: int = 128
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))

    ACCEPTS: ClassVar[dict] = {
        "r": ">= 1",
        "alpha": "> 0",
        "dropout": ("in [0, 1)", "a probability in [0, 1)"),
        "targets": ("non-empty", "a non-empty list of module names"),
    }


@dataclass
class TeacherTrainSettings:
    """The M-step: SFT on the kept (prompt -> self-edit) pairs, loss on the self-edit only."""

    lr: float = 3e-4
    epochs: int = 2
    batch_size: int = 10
    # ReST-EM trains every round's adapter from the base teacher on that round's kept samples;
    # false: keep training the previous round's adapter
    from_base: bool = True
    # >1: the M-step runs under `accelerate launch` on this many processes (one per GPU; CPU
    # processes without one), data-parallel with the same global batch (loop/mstep.py)
    processes: int = 1
    # pairs per forward/backward pass, gradients accumulated over batch_size (same steps, same
    # loss up to float order); null: 1 on a CPU, the whole batch on a GPU. `python -m loop.plan`
    # shows what a pass holds: lower it where the plan does not fit
    micro_batch: int | None = None
    # recompute each block's activations in the backward instead of keeping them (about a third
    # more compute, a small fraction of the memory); auto: on on a GPU, off on a CPU (slower per
    # step there, where memory is not what runs short)
    checkpointing: str = "auto"  # auto, true, false
    lora: TeacherLora = field(default_factory=TeacherLora)

    ACCEPTS: ClassVar[dict] = {
        "lr": ("> 0", "a finite number above 0"),
        "epochs": ">= 1",
        "batch_size": ">= 1",
        "processes": ">= 1",
        "micro_batch": ("null or >= 1", "null or a positive integer"),
        "checkpointing": (lambda v: str(v).lower() in ("auto", "true", "false"), "auto, true or false"),
    }


@dataclass
class EndpointConfig:
    """An OpenAI-compatible endpoint that writes self-edits (`loop.evaluate`'s `external` row):
    a hosted model, a `vllm serve`, or `python -m teacher.serve`. The key is read from the
    environment variable named by `key_env` and never stored in a config, a log or MLflow."""

    url: str | None = None  # e.g. http://localhost:8000/v1; unset: $OPENAI_BASE_URL
    model: str | None = None  # the served model's name; unset: $SEAL_EXTERNAL_MODEL
    key_env: str = "OPENAI_API_KEY"  # the variable holding the key (unset: no key is sent)
    # /chat/completions with the prompt's messages (one user message; a cue such as self-qa's
    # "Question 1: " ends it, see continue_cue); false: /completions with the prompt as text
    chat: bool = True
    # chat and a prompt with a cue: true sends the cue as the assistant's begun turn with
    # vLLM's `continue_final_message` (vllm serve, python -m loop.serve); false (hosted APIs
    # that refuse unknown keys) appends it to the user message
    continue_cue: bool = False
    concurrency: int = 8  # requests in flight at once
    timeout: float = 300.0  # seconds per request
    retries: int = 3  # per request, on connection errors, 429 and 5xx, with backoff
    max_response_bytes: int = 4_000_000  # a longer response body is refused, never parsed

    ACCEPTS: ClassVar[dict] = {
        "concurrency": ">= 1",
        "timeout": ("> 0", "seconds, above 0"),
        "retries": ">= 0",
        "max_response_bytes": ">= 1",
    }


@dataclass
class TeacherConfig:
    # Model identity: filled from conf/model/<preset>.yaml (the same presets serve both roles).
    name: str = MISSING  # the preset's name, used in run names and MLflow tags
    hub_id: str = MISSING  # Hugging Face id, loaded from the HF cache or the hub when `path` is unset
    path: str | None = None  # a local checkpoint folder; wins over hub_id (bundled presets set it)
    revision: str | None = None  # hub revision (branch, tag or commit) for reproducible loads
    instruct: bool = False  # wrap prompts in the tokenizer's chat template
    dtype: str = "auto"  # torch dtype name; auto: bfloat16 on GPU, float32 on CPU (see model.py)
    trust_remote_code: bool = False  # runs code shipped with a checkpoint: only for repos you trust
    # a trained teacher LoRA for loop.evaluate: an adapter folder, a loop.run folder (its final
    # adapter), the MLflow run id of a loop.run, or its logged model (runs:/<run id>/teacher)
    adapter: str | None = None
    backend: str = "transformers"  # who samples: transformers (in process) or vllm (an engine)
    # backend=vllm on a GPU: the fraction of the GPU's memory the teacher's engine may take
    # (weights and KV cache); the in-process models (the M-step's teacher, the student) share the rest
    vllm_memory: float = 0.3
    # backend=vllm: GPUs the teacher's engine shards the model over (vLLM's tensor parallelism)
    vllm_tensor_parallel: int = 1
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    train: TeacherTrainSettings = field(default_factory=TeacherTrainSettings)

    ACCEPTS: ClassVar[dict] = {
        "dtype": (DTYPES, " or ".join(DTYPES)),
        "backend": {"one of": ("transformers", "vllm")},
        "vllm_memory": ("in (0, 1]", "a fraction of the GPU's memory, in (0, 1]"),
        "vllm_tensor_parallel": (">= 1", "a number of GPUs, at least 1"),
    }
