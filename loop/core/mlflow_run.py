"""The MLflow run of a run folder (`MlflowTracker`): what it records (the params, the
description, datasets, system metrics, the teacher model) and how it survives a tracking server
that goes away: every record is kept in the run folder (`tracking_pending.jsonl`) until the
server takes it, and `python -m loop.tracking sync` sends what a finished run kept.
`loop.core.tracking.start` opens one.
"""

from __future__ import annotations

import importlib
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from loop.core import faults
from loop.core.ledger import read_jsonl, write_jsonl_atomic
from loop.core.mlflow_params import EXPERIMENT_KIND, EXPERIMENT_NOTE, dataset_input, git_commit, run_url

log = logging.getLogger(__name__)


@dataclass
class TrackingConfig:
    enabled: bool = True  # false: nothing is sent anywhere (the run folder still has everything)
    uri: str = "sqlite:///mlflow.db"  # a SQLite file, or http://host:port for an MLflow server
    artifacts: str = "mlartifacts"  # where a new experiment on a local store keeps its artifacts
    # MLflow's own sampler of CPU, memory, disk, network (and GPU with nvidia-ml-py) into the
    # run's `system/*` metrics, every `system_metrics_interval` seconds
    system_metrics: bool = True
    system_metrics_interval: float = 10.0

    ACCEPTS: ClassVar[dict] = {"system_metrics_interval": ("> 0", "seconds, above 0")}


class TrackingError(RuntimeError):
    """The tracking server cannot be used at launch (a user error: one message, exit 2)."""


OUTAGE = "an MLflow call failed"  # the warning's prefix, for grepping a run's log


PENDING = "tracking_pending.jsonl"  # in the run folder: records not yet sent


def in_store(client, run_id: str) -> bool:
    """Whether the store has `run_id`. Any other failure (a server gone) is raised."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


class MlflowTracker:
    """One MLflow run, driven through `MlflowClient` with an explicit run id.

    A call that fails (the server went away mid-run) does not stop the run: it is kept, in
    order, in memory and in `pending` (a JSONL file in the run folder), retried before later
    calls once `retry_s` has passed since the last failure, and at `close`. What still cannot be
    sent at the end stays in the file, and the command that sends it is printed
    (`python -m loop.tracking sync <run folder>`). A resumed run picks the file up too.
    """

    def __init__(self, uri: str, run_id: str, pending: Path | None = None,
                 retry_s: float = 30.0, url: str | None = None):
        import mlflow

        self.uri, self.run_id, self.pending, self.retry_s = uri, run_id, pending, retry_s
        self.url = url  # the run's page in the MLflow UI
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self._queue: list[dict] = read_jsonl(pending) if pending else []  # a killed run's
        self._failed_at: float | None = None
        self._monitor = None  # MLflow's system-metrics sampler, when on

    @classmethod
    def open(cls, cfg: TrackingConfig, experiment: str, run_name: str, params: dict,
             tags: dict[str, str], run_id: str | None = None,
             pending: Path | None = None, description: str = "") -> MlflowTracker:
        """A new MLflow run with its params, tags and description, or `run_id` continued (a
        resume). The run carries MLflow's standard user/source/commit tags, so the UI's
        "Created by", "Source" and "Version" columns are filled."""
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        client = mlflow.MlflowClient(tracking_uri=cfg.uri)
        if run_id and not in_store(client, run_id):
            # a run folder copied from another machine, or whose store was deleted: its records
            # are all in the folder, so a new MLflow run takes the place of the one not found
            log.warning("MLflow run %s of this run folder is not in %s: a new run takes its "
                        "place (what was logged before is in the run folder only)", run_id,
                        cfg.uri)
            run_id = None
        resumed = bool(run_id)
        if run_id:  # its params are already there
            client.update_run(run_id, status="RUNNING")
            exp_id = client.get_run(run_id).info.experiment_id
        else:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                local = not cfg.uri.startswith(("http://", "https://", "databricks"))
                location = Path(cfg.artifacts).resolve().as_uri() if local else None
                exp_id = client.create_experiment(experiment, artifact_location=location, tags={
                    EXPERIMENT_KIND: "custom_model_development",
                    MLFLOW_RUN_NOTE: EXPERIMENT_NOTE.format(task=experiment)})
            else:
                exp_id = exp.experiment_id
                if EXPERIMENT_KIND not in exp.tags:  # made before these tags, or by hand
                    client.set_experiment_tag(exp_id, EXPERIMENT_KIND, "custom_model_development")
                    if MLFLOW_RUN_NOTE not in exp.tags:
                        client.set_experiment_tag(exp_id, MLFLOW_RUN_NOTE,
                                                  EXPERIMENT_NOTE.format(task=experiment))
            commit = git_commit(full=True)
            standard = {"mlflow.source.name": tags.get("entry", run_name),
                        "mlflow.source.type": "LOCAL"}
            if commit != "unknown":
                standard["mlflow.source.git.commit"] = commit
            run_tags = resolve_tags({**tags, **standard, "git_commit": commit[:7],
                                     MLFLOW_RUN_NOTE: description})
            run_id = client.create_run(exp_id, run_name=run_name, tags=run_tags).info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                client.log_batch(run_id, params=items[i : i + 100])
        tracker = cls(cfg.uri, run_id, pending, url=run_url(cfg.uri, exp_id, run_id))
        if resumed:  # a kept `end` of the killed or failed process would end the run again
            tracker._queue = [r for r in tracker._queue if r["op"] != "end"]
        print(f"MLflow run {run_id} in experiment '{experiment}': {tracker.url}"
              + ("" if cfg.uri.startswith(("http://", "https://")) else
                 f" (start the UI first: mlflow ui --backend-store-uri {cfg.uri})"), flush=True)
        if cfg.system_metrics:
            tracker._start_system_metrics(cfg.system_metrics_interval, resumed)
        return tracker

    def _start_system_metrics(self, interval: float, resumed: bool) -> None:
        """MLflow's sampler thread; it stops for good if the server is away when it samples
        (the run's own records are kept and sent later; these samples are not)."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval,
                                                 resume_logging=resumed, tracking_uri=self.uri)
            self._monitor.start()
        except Exception as e:  # a missing psutil, a platform psutil cannot read
            log.warning("MLflow system metrics are off for this run (%s: %s)",
                        type(e).__name__, e)
            self._monitor = None

    # -- the Tracker calls: each is one record, sent now or kept ---------------------------------

    def log_metrics(self, metrics, step=None) -> None:
        self._call({"op": "metrics", "metrics": metrics, "step": step or 0,
                    "timestamp": int(time.time() * 1000)})

    def log_table(self, rows, name) -> None:
        if rows:
            self._call({"op": "table", "data": {k: [r[k] for r in rows] for k in rows[0]},
                        "name": name})

    def log_artifact(self, path) -> None:
        self._call({"op": "artifact", "path": str(Path(path).resolve())})

    def log_artifacts(self, folder, artifact_path) -> None:
        self._call({"op": "artifacts", "path": str(Path(folder).resolve()),
                    "artifact_path": artifact_path})

    def log_dataset(self, name, source, ids, context) -> None:
        """The contexts a run trained or was scored on, as an MLflow dataset input: their ids
        (one row each), the file they came from, and a digest of both."""
        self._call({"op": "dataset", "name": name, "source": str(Path(source).resolve()),
                    "ids": list(ids), "context": context})

    def log_model(self, module: str, adapter, config, step=0) -> None:
        """A teacher adapter as the run's MLflow model, logged by `module` (the domain's
        `teacher_model`: its `log` and `NAME`), with the run's metrics of `step` (the last
        round)."""
        self._call({"op": "model", "module": module, "adapter": str(Path(adapter).resolve()),
                    "config": config, "step": step})

    def close(self, status="FINISHED") -> None:
        if self._monitor is not None:  # its last samples, before the run stops being RUNNING
            try:
                self._monitor.finish()
            except Exception as e:
                log.warning("MLflow system metrics did not finish (%s: %s)", type(e).__name__, e)
            self._monitor = None
        self._call({"op": "end", "status": status}, force=True)
        if self.url and not self._queue:
            print(f"MLflow run {self.run_id}: {self.url}", flush=True)
        if self._queue:
            where = f" are kept in {self.pending}" if self.pending else " were lost"
            print(f"MLflow at {self.uri} could not be reached: {len(self._queue)} tracking "
                  f"records{where}. When it is back, send them with: python -m loop.tracking "
                  f"sync {self.pending.parent if self.pending else '<run folder>'}", flush=True)

    # -- sending and keeping ----------------------------------------------------------------

    def _send_model(self, record: dict) -> None:
        """Log the teacher model; a failure that is not the server being away (a moved adapter
        folder, an MLflow validation error) is a warning and the record is dropped, so that it
        never holds back the records behind it (the adapter stays in the run folder)."""
        try:  # the domain's module, by name (a record from before it was named: dropped)
            teacher_model = importlib.import_module(record["module"])
            uri = teacher_model.log(self.client, self.uri, self.run_id, record["adapter"],
                                    record["config"], record.get("step", 0))
        except Exception as e:
            try:
                check_reachable(self.uri)
            except TrackingError:
                raise e from None  # the server is away: kept and retried like any record
            log.warning("the teacher adapter %s could not be logged as an MLflow model (%s: %s); "
                        "it is in the run folder", record["adapter"], type(e).__name__, e)
            return
        print(f"teacher logged to MLflow as {uri} (runs:/{self.run_id}/{teacher_model.NAME})",
              flush=True)

    def _call(self, record: dict, force: bool = False) -> None:
        faults.point("tracking")
        self._queue.append(record)
        self.flush(force)

    def flush(self, force: bool = True) -> bool:
        """Send the kept records in order; True when none is left. While the server is down,
        a try is made at most every `retry_s` seconds (unless `force`)."""
        if self._failed_at is not None and not force and (
                time.monotonic() - self._failed_at < self.retry_s):
            self._keep()
            return False
        try:
            while self._queue:
                self._send(self._queue[0])
                self._queue.pop(0)
        except Exception as e:  # MLflow wraps connection errors in its own exception types
            if self._failed_at is None:
                log.warning("%s (%s at %s): the run goes on; records are kept%s",
                            OUTAGE, type(e).__name__, self.uri,
                            f" in {self.pending}" if self.pending else "")
            self._failed_at = time.monotonic()
            self._keep()
            return False
        if self._failed_at is not None:
            log.warning("MLflow at %s is back: the kept records were sent", self.uri)
        self._failed_at = None
        self._keep()
        return True

    def _keep(self) -> None:
        """The pending file mirrors the records not yet sent (gone when there are none)."""
        if self.pending is None:
            return
        if self._queue:
            write_jsonl_atomic(self.pending, self._queue)
        else:
            self.pending.unlink(missing_ok=True)

    def _send(self, record: dict) -> None:
        from mlflow.entities import Metric

        op, run_id = record["op"], self.run_id
        if op == "metrics":
            self.client.log_batch(run_id, metrics=[
                Metric(k, float(v), record["timestamp"], record["step"])
                for k, v in record["metrics"].items()])
        elif op == "table":
            self.client.log_table(run_id, data=record["data"], artifact_file=record["name"])
        elif op == "artifact":
            self.client.log_artifact(run_id, record["path"])
        elif op == "artifacts":
            self.client.log_artifacts(run_id, record["path"], record["artifact_path"])
        elif op == "dataset":
            self.client.log_inputs(run_id, datasets=[dataset_input(
                record["name"], record["source"], record["ids"], record["context"])])
        elif op == "model":
            self._send_model(record)
        elif op == "end":
            self.client.set_terminated(run_id, record["status"])
        else:
            raise ValueError(f"unknown tracking record {op!r}")


def check_reachable(uri: str) -> None:
    """An http(s) tracking URI must answer MLflow's /health before the run starts."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as r:
            r.read(100)
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy may refuse /health); MLflow's own calls tell more
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise TrackingError(
            f"the MLflow server at tracking.uri={uri} cannot be reached ({why}). Start it "
            f"(mlflow server --host 127.0.0.1 --port 5000), point tracking.uri at a running "
            f"one, or run without tracking: tracking=none (the run folder keeps every "
            f"result)") from None
