"""What a run's MLflow record holds besides its metrics: the params worth comparing, the commit,
the address of its page, its datasets, and the note of a new experiment."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any


def run_params(flat: dict[str, Any], entry: str, project_root: Path, cache: Path,
               unread: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings worth comparing in MLflow: those that apply to this run, without values
    that only say which machine it ran on (`run.json` keeps every setting as it was).

    Dropped: unset values; `resume`, `tracking.*` and `serve.*`; the settings the task's domain
    never reads (`unread`, `loop.core.domain.unread_settings`: `student.arc.*` for SQuAD); vLLM
    settings of a role on transformers; Ray settings of the local executor; `evaluate.*` for
    `loop.run`, and `loop.*`, `reward.*` and `teacher.train.*` for `loop.evaluate`, which trains
    no teacher (but a vLLM teacher's engine reads `teacher.train.lora.r`); `evaluate.external.*`
    without the `external` row; a bundled model's cache folder.
    Data files inside the project are given relative to it."""
    drop = ["resume", "tracking.", "serve.", *unread]
    if flat.get("teacher.backend") != "vllm":
        drop.append("teacher.vllm_")
    if flat.get("student.eval_backend") != "vllm":
        drop.append("student.vllm_")
    if flat.get("executor.name") != "ray":
        drop += ["executor.address", "executor.num_workers", "executor.cpus_per_worker",
                 "executor.gpus_per_worker", "executor.max_retries"]
    if entry == "loop.run":
        drop.append("evaluate.")
    elif entry == "loop.evaluate":
        drop += ["loop.", "reward."]
        if flat.get("teacher.backend") != "vllm":  # its engine's max LoRA rank is the adapter's
            drop.append("teacher.train.")
        else:
            drop += [k for k in flat if k.startswith("teacher.train.") and k != "teacher.train.lora.r"]
        if "external" not in (flat.get("evaluate.conditions") or ()):
            drop.append("evaluate.external.")
        if flat.get("task.absorb") != "sequential":
            drop.append("evaluate.forgetting")
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or any(key == d or (d.endswith((".", "_")) and key.startswith(d))
                                for d in drop):
            continue
        if key.endswith(".path") or key in ("task.data", "task.eval_data", "task.solutions"):
            where = Path(str(value)).expanduser()
            if where.is_absolute() and where.resolve().is_relative_to(cache.resolve()):
                continue  # a bundled model: its name and hub id say which
            if where.is_absolute() and where.resolve().is_relative_to(project_root.resolve()):
                value = where.resolve().relative_to(project_root.resolve()).as_posix()
        out[key] = value
    return out


def git_commit(full: bool = False) -> str:
    proc = subprocess.run(["git", "rev-parse", *([] if full else ["--short"]), "HEAD"],
                          capture_output=True, text=True, cwd=Path(__file__).parent)
    return proc.stdout.strip() or "unknown"


EXPERIMENT_KIND = "mlflow.experimentKind"  # read by MLflow builds that ask which kind it is


EXPERIMENT_NOTE = (
    "SEAL teacher-student runs on `{task}`: `python -m loop.run` trains a teacher whose "
    "self-edits a student absorbs through LoRA; `python -m loop.evaluate` scores conditions "
    "(base, passage, teacher_base, teacher, ...) on held-out contexts. Each run's description "
    "gives its command and pairing.")


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in the model-training view (MLflow 3 opens GenAI's
    Traces view otherwise). For a local store, the address `mlflow ui` serves by default."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def dataset_input(name: str, source: str, ids: list[str], context: str):
    """An MLflow DatasetInput: one row per context id, the source file, and a digest of the
    ids and the file's name; `context` is MLflow's training/evaluation tag."""
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    digest = hashlib.sha256("\n".join([Path(source).name, *ids]).encode()).hexdigest()[:8]
    data = from_pandas(pd.DataFrame({"id": ids}), source=LocalArtifactDatasetSource(source),
                       name=name, digest=digest)
    return DatasetInput(data._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
