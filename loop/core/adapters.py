"""`teacher.adapter`: a trained teacher adapter found from a folder, a `loop.run` folder or an
MLflow run, and checked against the teacher it is loaded onto."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path

from loop.core.config import ConfigError, RunConfig


def resolve_adapter(spec: str, run: RunConfig) -> Path:
    """teacher.adapter -> an adapter folder: given directly, a loop.run folder's final adapter,
    or an MLflow run id whose artifacts hold one (downloaded); checked against the teacher."""
    path = find_adapter(spec, run)
    check_adapter_base(path, spec, run)
    return path


def check_adapter_base(path: Path, spec: str, run: RunConfig) -> None:
    """An adapter trained on another base model than the teacher's is refused: its recorded
    base (adapter_config.json) is compared with the teacher by architecture, vocabulary and
    size when that base can be read, and its LoRA shapes with the teacher's dimensions always."""
    from safetensors import safe_open
    from transformers import AutoConfig

    t = run.teacher
    source = t.path or t.hub_id
    kwargs = dict(revision=t.revision, trust_remote_code=t.trust_remote_code)
    mine = AutoConfig.from_pretrained(source, **kwargs)
    recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    why = None
    if recorded and recorded != source:
        try:
            theirs = AutoConfig.from_pretrained(recorded, trust_remote_code=t.trust_remote_code)
        except Exception:  # moved or not downloaded here: the shapes below still tell
            theirs = None
        if theirs is not None:
            for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
                if getattr(theirs, key, None) != getattr(mine, key, None):
                    why = f"{key} {getattr(theirs, key, None)} there, {getattr(mine, key, None)} here"
                    break
    weights = path / "adapter_model.safetensors"
    if why is None and weights.exists():
        heads = getattr(mine, "num_attention_heads", 1)
        head_dim = getattr(mine, "head_dim", None) or mine.hidden_size // heads
        dims = {mine.hidden_size, getattr(mine, "intermediate_size", None), heads * head_dim,
                getattr(mine, "num_key_value_heads", heads) * head_dim}
        with safe_open(str(weights), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                shape = f.get_slice(key).get_shape()
                layer = re.search(r"layers\.(\d+)\.", key)
                if layer and int(layer.group(1)) >= mine.num_hidden_layers:
                    why = f"{key} is beyond the teacher's {mine.num_hidden_layers} layers"
                elif ("lora_A" in key and shape[1] not in dims) or (
                        "lora_B" in key and shape[0] not in dims):
                    why = f"{key} has shape {list(shape)}"
                if why:
                    break
    if why:
        raise ConfigError(f"teacher.adapter={spec} was trained on another base model "
                          f"({recorded or 'unrecorded'}) than teacher={t.name} ({source}): {why}. "
                          "Choose the teacher preset the adapter was trained for, or an adapter "
                          "trained for this teacher")


def find_adapter(spec: str, run: RunConfig) -> Path:
    if spec.startswith(("runs:/", "models:/")):  # a logged teacher model (Domain.teacher_model)
        try:
            return download_adapter(spec, run.tracking.uri)
        except Exception as e:  # MLflow raises its own exception types per store
            raise ConfigError(f"teacher.adapter={spec}: not a teacher model in "
                              f"{run.tracking.uri} ({type(e).__name__}: {e})") from None
    path = Path(spec)
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "results.json").is_file():
        final = json.loads((path / "results.json").read_text()).get("final_adapter")
        if not final:
            raise ConfigError(f"teacher.adapter={spec}: that run trained no teacher adapter")
        return path / final
    if path.exists():
        raise ConfigError(f"teacher.adapter={spec}: neither an adapter folder (adapter_config.json) "
                          "nor a finished loop.run folder (results.json)")
    import mlflow

    mlflow.set_tracking_uri(run.tracking.uri)
    client = mlflow.MlflowClient()
    try:
        client.get_run(spec)
    except Exception as e:  # MLflow raises its own exception types per store
        raise ConfigError(f"teacher.adapter={spec}: no such folder, and not a run id in "
                          f"{run.tracking.uri} ({type(e).__name__})") from None
    results = json.loads(Path(client.download_artifacts(spec, "results.json")).read_text())
    if not results.get("final_adapter"):
        raise ConfigError(f"teacher.adapter={spec}: that run trained no teacher adapter")
    return Path(client.download_artifacts(spec, results["final_adapter"]))


@functools.cache
def download_adapter(uri: str, tracking_uri: str) -> Path:
    """`runs:/<run id>/teacher` or `models:/<model id>` -> the adapter folder, downloaded once
    per process (loop.evaluate checks the adapter at launch, then loads it)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # runs:/ finds a run's logged models through it
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    found = sorted(local.rglob("adapter_config.json"))
    if not found:
        raise FileNotFoundError(f"{uri} holds no PEFT adapter (adapter_config.json)")
    return found[0].parent


def model_config(teacher) -> dict:
    """What a logged teacher model's `load_context` needs to rebuild the teacher (a
    TeacherConfig's identity and its sampling settings), as JSON."""
    keys = ("name", "hub_id", "path", "revision", "instruct", "dtype", "trust_remote_code")
    return {**{k: getattr(teacher, k) for k in keys},
            "sampling": dataclasses.asdict(teacher.sampling)}
