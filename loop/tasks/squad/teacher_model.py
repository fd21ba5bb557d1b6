"""The trained teacher as an MLflow model: its LoRA adapter on its base, as a pyfunc that writes
self-edits.

`loop.run` logs the final adapter of a SQuAD run under the name `teacher` (`Squad.teacher_model`
names this module; core calls its `log`), so that

    writer = mlflow.pyfunc.load_model("runs:/<run id>/teacher")   # or models:/m-...
    writer.predict([{"title": "...", "context": "..."}], params={"seed": 0})  # -> self-edits

works as MLflow users load models, and `loop.evaluate teacher.adapter=runs:/<run id>/teacher`
reads the adapter from MLflow. The base is loaded from the folder it was trained from when that
exists on the loading machine, else from its hub id and revision (`artifacts/config.json`); the
adapter travels with the model (under `artifacts/`). Loading runs `loop/teacher_model_code.py`,
which imports this project (`loop.teacher_model`): load it where `seal-ts` is installed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc

from loop.core.seeds import derive_seed
from loop.tasks.squad.prompts import self_edit_prompt
from teacher.config import SamplingSettings, TeacherConfig
from teacher.generate import TransformersGenerator
from teacher.model import load_teacher

NAME = "teacher"  # the logged model's name: runs:/<run id>/teacher
REQUIREMENTS = ["torch", "transformers", "peft"]  # given, so MLflow does not load it to guess
# what MLflow runs to rebuild it: it imports `loop.teacher_model`, the name every logged teacher uses
CODE = Path(__file__).parents[2] / "teacher_model_code.py"


class SelfEditWriter(mlflow.pyfunc.PythonModel):
    """predict: rows with `context` (and `title`) -> one self-edit each, sampled with the
    teacher's recorded settings (`params`: `seed`, and any of `prompt`, `temperature`,
    `top_p`, `max_new_tokens`)."""

    # the logged signature validates inputs and params; no type-hint validation (and no
    # MLflow warning asking for hints) on top of it
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        cfg = json.loads(Path(context.artifacts["config"]).read_text())
        sampling = SamplingSettings(**cfg.pop("sampling"))
        if cfg["path"] and not Path(cfg["path"]).is_dir():
            cfg["path"] = None  # trained on another machine: the hub id and revision say which
        teacher = TeacherConfig(**cfg, sampling=sampling)
        model, tokenizer = load_teacher(teacher)
        self.generator = TransformersGenerator(model, tokenizer, instruct=teacher.instruct,
                                               settings=sampling)
        self.generator.use_adapter(Path(context.artifacts["adapter"]))

    def predict(self, context, model_input, params=None) -> list[str]:
        rows = (model_input.to_dict("records") if hasattr(model_input, "to_dict")
                else list(model_input))
        rows = [{**row, "title": row.get("title") if isinstance(row.get("title"), str) else ""}
                for row in rows]  # absent, None or pandas' NaN: no title
        params = dict(params or {})
        seed = int(params.pop("seed", 0))
        settings = dataclasses.replace(self.generator.settings, **{
            k: v for k, v in params.items() if v is not None})
        prompts = [self_edit_prompt(settings.prompt, row.get("title", ""), row["context"])
                   for row in rows]
        seeds = [derive_seed(seed, "mlflow-predict", i) for i in range(len(rows))]
        saved, self.generator.settings = self.generator.settings, settings
        try:
            return [s.text for s in self.generator.sample(prompts, seeds)]
        finally:
            self.generator.settings = saved


def signature(sampling: dict):
    """Rows of `title` (optional) and `context` in, one self-edit per row out; the sampling
    settings as params, their defaults the teacher's recorded ones (MLflow passes only the
    params a signature declares)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "title", required=False), ColSpec("string", "context")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([
            ParamSpec("seed", "long", 0), ParamSpec("prompt", "string", sampling["prompt"]),
            ParamSpec("temperature", "double", float(sampling["temperature"])),
            ParamSpec("top_p", "double", float(sampling["top_p"])),
            ParamSpec("max_new_tokens", "long", int(sampling["max_new_tokens"]))]))


def log(client, tracking_uri: str, run_id: str, adapter: str, config: dict,
        step: int = 0) -> str:
    """The adapter folder as the run's logged model `teacher`, with the run's metrics of `step`;
    its models:/ URI. Once: a complete one logged before (a resumed or synced run) is kept.
    The teacher's settings travel as an artifact (`config.json`), not as `model_config`, which
    MLflow would also log as the run's params."""
    import mlflow
    from mlflow.models import Model

    run = client.get_run(run_id)
    for output in (run.outputs.model_outputs if run.outputs else []):
        model = client.get_logged_model(output.model_id)
        if model.name == NAME and str(model.status).endswith("READY"):
            return f"models:/{output.model_id}"
    mlflow.set_tracking_uri(tracking_uri)  # Model.log reads the global URI
    experiment_id = run.info.experiment_id
    logged = client.create_logged_model(experiment_id, name=NAME, source_run_id=run_id,
                                        tags={"teacher": config["name"],
                                              "base": config["hub_id"]})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        settings = Path(tmp) / "config.json"
        settings.write_text(json.dumps(config, indent=1))
        # MLflow asks for an input example: running one would load the teacher while logging
        warnings.simplefilter("ignore", UserWarning)
        Model.log(artifact_path=None, name=NAME, flavor=mlflow.pyfunc, run_id=run_id,
                  model_id=logged.model_id, step=step, python_model=str(CODE),
                  artifacts={"adapter": adapter, "config": str(settings)},
                  signature=signature(config["sampling"]), pip_requirements=REQUIREMENTS)
    return f"models:/{logged.model_id}"
