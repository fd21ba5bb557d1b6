"""Experiment tracking: one MLflow run per invocation; a do-nothing tracker with the same calls.

The default store is a SQLite file in the project folder (`mlflow.db`, artifacts in
`mlartifacts/`; MLflow 3 refuses its old file store), so no server is needed;
`tracking.uri=http://host:port` logs to a shared MLflow server instead. Every run prints its page
in the MLflow UI (and, for a local store, the `mlflow ui` command that serves it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from loop.core.assets import cache_dir
from loop.core.errors import PROJECT_ROOT
from loop.core.mlflow_params import run_params
from loop.core.mlflow_run import (  # noqa: F401 (their home: loop.core.tracking)
    OUTAGE,
    PENDING,
    MlflowTracker,
    TrackingConfig,
    TrackingError,
    check_reachable,
)

log = logging.getLogger(__name__)


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_table(self, rows: list[dict], name: str) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def log_artifacts(self, folder: str | Path, artifact_path: str) -> None: ...
    def log_dataset(self, name: str, source: str | Path, ids: list[str], context: str) -> None: ...
    def log_model(self, module: str, adapter: str | Path, config: dict, step: int = 0) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Stands in for MLflow when tracking is off, so call sites never branch."""

    run_id = None

    def log_metrics(self, metrics, step=None) -> None: ...
    def log_table(self, rows, name) -> None: ...
    def log_artifact(self, path) -> None: ...
    def log_artifacts(self, folder, artifact_path) -> None: ...
    def log_dataset(self, name, source, ids, context) -> None: ...
    def log_model(self, module, adapter, config, step=0) -> None: ...
    def close(self, status="FINISHED") -> None: ...


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dataclass as flat `a.b.c` params, the names MLflow's compare view shows."""
    if not is_dataclass(obj):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for f in fields(obj):
        out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
    return out


def start(cfg: TrackingConfig, experiment: str, run_name: str, config: Any,
          tags: dict[str, str], run_id: str | None = None, pending: Path | None = None,
          description: str = "", unread: tuple[str, ...] = ()) -> Tracker:
    """The MLflow run (a new one, or `run_id` continued), or a NullTracker when tracking is off.
    Its params are `run_params` of the flattened config (`tags["entry"]` says which apply;
    `unread`: prefixes of the settings the task's domain never reads).

    A tracking server that cannot be reached at launch is a TrackingError naming the URI."""
    if not cfg.enabled:
        return NullTracker()
    quick_http_failures()
    check_reachable(cfg.uri)
    params = run_params(flatten(config), tags.get("entry", ""), PROJECT_ROOT, cache_dir(), unread)
    return MlflowTracker.open(cfg, experiment, run_name, params, tags, run_id, pending,
                              description)


def quick_http_failures() -> None:
    """MLflow's HTTP client retries a dead server for minutes by default (7 retries, backoff
    factor 2); the tracker keeps what it cannot send instead, so fail fast. Users' own
    MLFLOW_HTTP_REQUEST_* settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def sync(folder: Path) -> int:
    """Send the tracking records a run folder kept while its MLflow server was away; the
    number sent. Raises TrackingError when the server is still away."""
    record = json.loads((folder / "run.json").read_text())
    uri, run_id = record["config"]["tracking.uri"], record.get("mlflow_run_id")
    pending = folder / PENDING
    if not pending.exists():
        return 0
    if not run_id:
        raise TrackingError(f"{folder}: its MLflow run was never created (the server was away "
                            "at launch); nothing to send the records to")
    quick_http_failures()
    check_reachable(uri)
    tracker = MlflowTracker(uri, run_id, pending)
    n = len(tracker._queue)
    if not tracker.flush():
        raise TrackingError(f"MLflow at {uri} refused the records ({n} kept in {pending}); "
                            "see the warning above")
    pending.unlink(missing_ok=True)
    return n
