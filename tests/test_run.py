"""`python -m loop.run` end to end on the bundled models (what `make run` does)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from loop.config import PROJECT_ROOT


@pytest.mark.slow
def test_run_writes_its_folder_and_prints_a_self_edit_and_answers(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "loop.run", "teacher=smollm135m", "student=smollm135m",
         f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"run folder: {run_dir}" in out.stdout
    assert "== teacher self-edit" in out.stdout and "student:" in out.stdout
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.teacher.name == "smollm135m" and saved.student.name == "smollm135m"
