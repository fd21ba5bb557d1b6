"""The student's config group (`conf/student/`): which frozen model absorbs the self-edits."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class StudentConfig:
    # Model identity: filled from conf/model/<preset>.yaml (the same presets serve both roles).
    name: str = MISSING  # the preset's name, used in run names and MLflow tags
    hub_id: str = MISSING  # Hugging Face id, loaded from the HF cache or the hub when `path` is unset
    path: str | None = None  # a local checkpoint folder; wins over hub_id (bundled presets set it)
    revision: str | None = None  # hub revision (branch, tag or commit) for reproducible loads
    instruct: bool = False  # answer prompts go through the tokenizer's chat template
    dtype: str = "bfloat16"  # torch dtype of the frozen base; bf16 is also the faster one on CPU
    trust_remote_code: bool = False  # runs code shipped with a checkpoint: only for repos you trust
