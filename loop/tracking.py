"""Experiment tracking: one MLflow run per invocation; a do-nothing tracker with the same calls.

The default store is a SQLite file in the project folder (`mlflow.db`, artifacts in
`mlartifacts/`; MLflow 3 refuses its old file store), so no server is needed;
`tracking.uri=http://host:port` logs to a shared MLflow server instead. Every run prints the
`mlflow ui` command that shows it.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass
class TrackingConfig:
    enabled: bool = True  # false: nothing is sent anywhere (the run folder still has everything)
    uri: str = "sqlite:///mlflow.db"  # a SQLite file, or http://host:port for an MLflow server
    artifacts: str = "mlartifacts"  # where a new experiment on a local store keeps its artifacts


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_table(self, rows: list[dict], name: str) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def log_artifacts(self, folder: str | Path, artifact_path: str) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Stands in for MLflow when tracking is off, so call sites never branch."""

    run_id = None

    def log_metrics(self, metrics, step=None) -> None: ...
    def log_table(self, rows, name) -> None: ...
    def log_artifact(self, path) -> None: ...
    def log_artifacts(self, folder, artifact_path) -> None: ...
    def close(self, status="FINISHED") -> None: ...


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dataclass as flat `a.b.c` params, the names MLflow's compare view shows."""
    if not is_dataclass(obj):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for f in fields(obj):
        out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
    return out


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    return proc.stdout.strip() or "unknown"


class MlflowTracker:
    def __init__(self, cfg: TrackingConfig, experiment: str, run_name: str, params: dict,
                 tags: dict[str, str], run_id: str | None = None):
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(cfg.uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            local = not cfg.uri.startswith(("http://", "https://", "databricks"))
            location = Path(cfg.artifacts).resolve().as_uri() if local else None
            exp_id = client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        if run_id:  # a resumed run continues its MLflow run; its params are already there
            self.run = mlflow.start_run(run_id=run_id)
        else:
            self.run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.set_tags({**tags, "git_commit": git_commit()})
        self.run_id = self.run.info.run_id
        print(f"MLflow run {self.run_id} in experiment '{experiment}'; "
              f"see it with: mlflow ui --backend-store-uri {cfg.uri}")

    def log_metrics(self, metrics, step=None) -> None:
        self._mlflow.log_metrics(metrics, step=step)

    def log_table(self, rows, name) -> None:
        if rows:
            self._mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, artifact_file=name)

    def log_artifact(self, path) -> None:
        self._mlflow.log_artifact(str(path))

    def log_artifacts(self, folder, artifact_path) -> None:
        self._mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def close(self, status="FINISHED") -> None:
        self._mlflow.end_run(status=status)


def start(cfg: TrackingConfig, experiment: str, run_name: str, config: Any,
          tags: dict[str, str], run_id: str | None = None,
          exclude: tuple[str, ...] = ()) -> Tracker:
    """The MLflow run (a new one, or `run_id` continued), or a NullTracker when tracking is off."""
    if not cfg.enabled:
        return NullTracker()
    params = {k: v for k, v in flatten(config).items() if k not in exclude}
    return MlflowTracker(cfg, experiment, run_name, params, tags, run_id)
