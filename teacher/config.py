"""The teacher's config group (`conf/teacher/`): which model writes the self-edits."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


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
