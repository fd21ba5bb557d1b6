"""`python -m loop.run` end to end on the bundled models (what `make run` does, smaller)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from loop.core.config import PROJECT_ROOT


@pytest.mark.slow
def test_run_writes_its_folder_its_table_and_its_mlflow_run(tmp_path):
    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "loop.run", "experiment=smoke", "teacher=smollm135m",
         "student=smollm135m", f"tracking.uri={uri}", f"tracking.artifacts={tmp_path}/art",
         f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"run folder: {run_dir}" in out.stdout
    assert f"mlflow ui --backend-store-uri {uri}" in out.stdout
    assert f"resume={run_dir}" in out.stdout  # how to continue it after a crash
    table = out.stdout[out.stdout.index("round self-edits"):].splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["0", "1"]  # one row per round
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.teacher.name == "smollm135m" and saved.student.name == "smollm135m"
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["rounds"]) == 2 and (run_dir / results["final_adapter"]).is_dir()
