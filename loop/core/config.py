"""The typed run config: what `conf/` composes into, and the only place schemas meet Hydra.

`loop` registers the schemas (the role packages only define their dataclasses), so a misspelt
key or a wrong type is rejected by Hydra at launch. Below `loop.run`, code sees only these
dataclasses, never a DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from loop.core import assets
from loop.core.errors import CONF_DIR, PROJECT_ROOT, ConfigError  # noqa: F401 (their home for users)
from loop.core.executor import ExecutorConfig
from loop.core.reward import RewardConfig
from loop.core.tracking import TrackingConfig
from student.config import BATCHED, StudentConfig
from teacher.config import EndpointConfig, TeacherConfig


@dataclass
class TaskConfig:
    name: str = MISSING  # the task's name; also the MLflow experiment's name
    format: str = "squad"  # squad (passages and questions) or arc (few-shot grid tasks)
    data: str = MISSING  # a JSON file in the shared format; relative paths are from the cwd
    n_contexts: int | None = None  # a seeded subset of this many contexts (None: all of them)
    # loop.evaluate: `single`, one fresh student per passage (the paper's main setting);
    # `together`, all passages (and their self-edits) absorbed in one training run, then every
    # question asked (the paper's continued-pretraining setting, task=squad_cpt)
    absorb: str = "single"
    # arc: the solutions file; None: the challenges file's name with "challenges" -> "solutions"
    solutions: str | None = None
    ids: list[str] | None = None  # only these contexts (ARC task ids; SQuAD "<file>/<index>")
    # what loop.evaluate reads by default (the held-out set): its data file and ids
    eval_data: str | None = None
    eval_ids: list[str] | None = None
    # a development part of task.data, the same for every run and seed: `train` leaves its
    # `dev_size` passages out (what the loop trains the teacher on), `dev` keeps only them
    # (where every choice is made, so the evaluation set is touched once), `all` keeps all
    split: str = "all"
    dev_size: int = 50

    ACCEPTS: ClassVar[dict] = {
        "n_contexts": ("null or >= 1", "at least 1, or null for every context"),
        "absorb": {"one of": ("single", "together", "sequential")},
        "split": (("all", "train", "dev"), "all, train (without the dev passages) or dev"),
        "dev_size": ">= 1",
    }


@dataclass
class EvaluateConfig:
    """`python -m loop.evaluate` (kept here: loop.evaluate imports this module)."""

    conditions: list[str] = field(default_factory=lambda: ["base", "passage"])  # table rows
    samples: int = 1  # self-edits per passage for the teacher conditions (scores are averaged)
    # true: sample the self-edit conditions' self-edits into the run folder, then stop; score
    # them later with resume=<that folder>, on any machine (teacher.adapter's folder need not
    # exist there)
    sample_only: bool = False
    # task.absorb=sequential: `grow` one adapter through all edits, or `merge` each edit's
    # adapter into the weights before the next (the paper's forgetting experiment)
    forgetting: str = "grow"
    resamples: int = 10_000  # bootstrap resamples for the 95% intervals
    # the adapters' seeds (SQuAD): 0 as always; another value absorbs the same self-edits (and
    # the passage) with other seeds, to measure a reward's noise (`loop.compare --noise`)
    absorb_seed: int = 0
    judge: str | None = None  # a model preset (conf/model/) that also grades, SEAL's yes/no prompt
    # the `external` row: self-edits from an OpenAI-compatible endpoint (a hosted model, vLLM)
    external: EndpointConfig = field(default_factory=EndpointConfig)

    ACCEPTS: ClassVar[dict] = {
        "samples": ">= 1",
        "forgetting": {"one of": ("grow", "merge")},
        "resamples": ">= 1",
        "absorb_seed": (">= 0", "at least 0 (0: the adapters' usual seeds)"),
    }


@dataclass
class ServeConfig:
    """`python -m loop.serve`: the teacher as an OpenAI-compatible endpoint."""

    host: str = "127.0.0.1"  # 0.0.0.0 serves other machines too
    port: int = 8000  # 0: any free port (printed)
    name: str | None = None  # the model name clients ask for; unset: the teacher preset's name
    max_tokens: int = 2048  # the most tokens one completion may ask for
    max_request_bytes: int = 1_000_000
    key_env: str | None = None  # a variable whose value clients must send as a bearer key

    ACCEPTS: ClassVar[dict] = {
        "port": ("in [0, 65535]", "a TCP port in [0, 65535] (0: any free port)"),
        "max_tokens": ">= 1",
        "max_request_bytes": ">= 1",
    }


@dataclass
class LoopConfig:
    """The outer loop (loop.core.rounds): rounds of sample -> absorb and score -> filter -> train."""

    rounds: int = 2
    contexts_per_round: int = 50  # drawn from task.data, disjoint across rounds while it lasts
    k: int = 5  # self-edits sampled per context

    ACCEPTS: ClassVar[dict] = {"rounds": ">= 1", "contexts_per_round": ">= 1", "k": ">= 1"}


@dataclass
class PlanConfig:
    """`python -m loop.plan` and the launch check (loop.core.memory)."""

    # the GPU memory to plan for (80GiB, 141GiB); unset: the GPU's own, and no check without one
    gpu_memory: str | None = None
    # the GPUs to plan for (a local Ray on one GPU puts its workers beside the loop); unset: this
    # machine's count (1 without a GPU)
    gpus: int | None = None
    # false: start even where the plan does not fit (it errs high: activations are estimated at
    # the settings' upper bounds)
    check: bool = True

    ACCEPTS: ClassVar[dict] = {"gpus": ("null or >= 1", "null or a positive integer")}


@dataclass
class RunConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where inner loops run
    plan: PlanConfig = field(default_factory=PlanConfig)  # memory planned before models load
    seed: int = 0  # the root of every derived seed
    resume: str | None = None  # a run folder to continue (same config); finished work is kept


def register() -> None:
    """Register the schema and the resolvers the YAML files use; idempotent."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    # ${bundled_model:smollm135m} -> the prepared safetensors folder in the cache (loop.core.assets)
    OmegaConf.register_new_resolver(
        "bundled_model", lambda name: str(assets.bundled_model_dir(name)), replace=True)
    # ${project_root:} -> the repository folder, for the data files shipped with the project
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    # hydra.run.dir: a resumed run writes into the folder it continues
    OmegaConf.register_new_resolver("run_dir", lambda resume, fresh: resume or fresh, replace=True)
    # hydra.output_subdir: a resume keeps the first invocation's .hydra record
    OmegaConf.register_new_resolver(
        "hydra_subdir", lambda resume, now: ".hydra" if not resume else f".hydra/resume_{now}",
        replace=True)


def to_run_config(cfg) -> RunConfig:
    """DictConfig -> RunConfig, resolving interpolations; the DictConfig stops here."""
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, RunConfig), type(run)
    _reject_extra_keys(run, "")
    train = run.student.train  # a boolean given for batched reads "True": one spelling each
    if str(train.batched).lower() in BATCHED:
        train.batched = str(train.batched).lower()
    return run


def _reject_extra_keys(node, prefix: str) -> None:
    """`+teacher.pth=x` (Hydra's own advice for an unknown key) would be silently ignored."""
    known = {f.name for f in fields(node)}
    extra = sorted(set(vars(node)) - known)
    if extra:
        raise ConfigError(f"unknown key {prefix}{extra[0]} (known keys at this level: "
                          f"{', '.join(sorted(known))})")
    for name in known:
        value = getattr(node, name)
        if is_dataclass(value):
            _reject_extra_keys(value, f"{prefix}{name}.")
