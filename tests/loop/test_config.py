"""Hydra composition: every pairing, the hub ids, typos rejected at launch, lazy imports."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from typing import ClassVar

import pytest
from omegaconf import OmegaConf

from loop.core import assets
from loop.core.checks import Rule, check_settings, rule, schema_rules
from loop.core.config import CONF_DIR, PROJECT_ROOT, ConfigError
from student.config import StudentConfig
from teacher.config import TeacherConfig
from tests.conftest import PRESETS, compose_run

HUB_IDS = {
    "qwen7b": "Qwen/Qwen2.5-7B",
    "qwen7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "qwen3b": "Qwen/Qwen2.5-3B",
    "llama1b": "meta-llama/Llama-3.2-1B-Instruct",
    "qwen0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "qwen1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "smollm135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loop.run", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_catalog_is_complete():
    assert sorted(HUB_IDS) == PRESETS
    for role in ("teacher", "student"):
        assert sorted(p.stem for p in (CONF_DIR / role).glob("*.yaml")) == PRESETS


@pytest.mark.parametrize(("teacher", "student"), list(itertools.product(PRESETS, repeat=2)))
def test_every_pairing_composes_to_typed_config(teacher, student):
    run = compose_run(f"teacher={teacher}", f"student={student}")
    assert isinstance(run.teacher, TeacherConfig) and isinstance(run.student, StudentConfig)
    assert (run.teacher.name, run.student.name) == (teacher, student)
    assert (run.teacher.hub_id, run.student.hub_id) == (HUB_IDS[teacher], HUB_IDS[student])


def test_default_pairing_is_the_bundled_cpu_pair():
    run = compose_run()
    assert (run.teacher.name, run.student.name) == ("qwen0.5b", "smollm135m")
    assert run.teacher.path == str(assets.bundled_model_dir("qwen0.5b"))
    assert run.student.path == str(assets.bundled_model_dir("smollm135m"))
    assert not run.teacher.trust_remote_code and not run.student.trust_remote_code


def test_bundled_paths_follow_the_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    assert compose_run().student.path == str(tmp_path / "models" / "smollm135m")


def test_path_override_points_a_preset_at_a_local_checkpoint():
    run = compose_run("teacher=llama1b", "teacher.path=/ckpt/llama-ft", "student.path=null")
    assert run.teacher.path == "/ckpt/llama-ft" and run.teacher.hub_id == HUB_IDS["llama1b"]
    assert run.student.path is None  # the bundled student loaded from the hub instead


def test_wrong_type_is_rejected():
    with pytest.raises(Exception, match="seed"):
        compose_run("seed=abc")


def test_appended_unknown_key_is_rejected_not_ignored():
    with pytest.raises(ConfigError, match=r"unknown key teacher\.pth"):
        compose_run("+teacher.pth=/x")


def test_cfg_job_prints_hub_ids_and_swaps_roles():
    out = cli("teacher=qwen7b", "student=llama1b", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.teacher.hub_id == "Qwen/Qwen2.5-7B"
    assert cfg.student.hub_id == "meta-llama/Llama-3.2-1B-Instruct"
    swapped = OmegaConf.create(cli("teacher=llama1b", "student=qwen7b", "--cfg", "job").stdout)
    assert (swapped.teacher.hub_id, swapped.student.hub_id) == (cfg.student.hub_id, cfg.teacher.hub_id)


@pytest.mark.parametrize(("args", "message"), [
    (["teacher=qwen7bb"], "Could not find 'teacher/qwen7bb'"),
    (["student=lama1b", "--cfg", "job"], "Could not find 'student/lama1b'"),
    (["teacher.pth=/x", "--cfg", "job"], "Key 'pth' not in 'TeacherConfig'"),
    (["seeed=1", "--cfg", "job"], "Key 'seeed' not in 'RunConfig'"),
    (["experiment=paper_sqaud", "--cfg", "job"], "Could not find 'experiment/paper_sqaud'"),
])
def test_typos_fail_at_launch_with_hydras_message(args, message):
    out = cli(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_help_lists_presets_and_imports_nothing_heavy():
    out = cli("--help")
    assert out.returncode == 0
    assert "teacher: llama1b, qwen0.5b, qwen1.5b, qwen3b, qwen7b, qwen7b-instruct, smollm135m" in out.stdout
    probe = ("import sys, loop.run; "
             "print([m for m in ('torch', 'transformers', 'peft', 'trl', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_roles_stay_overridable(experiment):
    run = compose_run(f"experiment={experiment}", "teacher=llama1b", "student=smollm135m")
    assert (run.teacher.name, run.student.name) == ("llama1b", "smollm135m")  # command line wins


def test_paper_squad_has_the_papers_settings():
    run = compose_run("experiment=paper_squad")
    assert (run.teacher.name, run.student.name) == ("qwen7b", "qwen7b")
    assert (run.loop.rounds, run.loop.contexts_per_round, run.loop.k) == (2, 50, 5)
    assert (run.reward.inner_seeds, run.reward.filter, run.reward.metric) == (3, "best_of_k", "judge")
    assert run.reward.judge == "qwen7b-instruct"  # an instruct judge for a yes/no prompt
    t = run.teacher.train
    assert (t.lora.r, t.lora.alpha, t.lr, t.epochs, t.batch_size) == (64, 128, 3e-4, 2, 10)
    s = run.student
    assert (s.lora.r, s.lora.alpha, s.train.lr, s.train.epochs, s.train.batch_size) == (
        32, 64, 1e-3, 10, 1)
    assert (run.teacher.sampling.temperature, run.teacher.sampling.top_p) == (1.0, 0.95)


def test_paper_arc_has_the_papers_settings():
    run = compose_run("experiment=paper_arc")
    assert (run.teacher.name, run.student.name, run.task.name) == ("llama1b", "llama1b", "arc")
    assert (run.loop.rounds, run.loop.contexts_per_round, run.loop.k) == (1, 12, 15)
    assert run.task.ids is None and run.evaluate.samples == 5
    assert (run.reward.metric, run.reward.baseline, run.reward.filter) == ("success", "none",
                                                                          "threshold")
    a = run.student.arc
    assert (a.lora.r, a.lora.alpha, a.batch_size, a.max_tasks, a.max_steps, a.leave_out) == (
        128, 16, 2, 250, 375, [1, 2])
    assert sorted(a.lora.targets) == ["down_proj", "gate_proj", "q_proj", "up_proj", "v_proj"]
    t = run.teacher.train
    assert (t.lora.r, t.lr, t.epochs, t.batch_size) == (16, 5e-5, 8, 5)
    assert run.teacher.sampling.temperature == 0.8


@pytest.mark.parametrize("task", ["arc", "arc1d"])
def test_an_arc_task_trains_the_teacher_with_the_references_arc_m_step(task):
    """ARC's M-step is the reference's BC step, whatever the models; SQuAD keeps its own."""
    t = compose_run(f"task={task}").teacher.train
    assert (t.lora.r, t.lora.alpha, t.lr, t.epochs, t.batch_size) == (16, 16, 5e-5, 8, 5)
    assert t.lora.targets == ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    squad = compose_run().teacher.train
    assert (squad.lora.r, squad.lora.alpha, squad.lr, squad.epochs) == (64, 128, 3e-4, 2)


def test_arc1d_cpu_keeps_the_m_step_it_was_measured_with():
    run = compose_run("experiment=arc1d_cpu")
    t = run.teacher.train
    assert (run.task.name, run.loop.rounds, run.loop.contexts_per_round, run.loop.k) == (
        "arc1d", 4, 8, 4)
    assert (t.lora.r, t.lora.alpha, t.lr, t.epochs, t.batch_size) == (64, 128, 3e-4, 2, 4)
    assert (run.student.arc.oracle.families, run.student.arc.oracle.lr) == (["basic"], 1e-3)


def test_evaluate_reads_the_tasks_held_out_set():
    from hydra import compose, initialize_config_dir

    from loop.core.config import to_run_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        squad = to_run_config(compose("evaluate"))
        arc = to_run_config(compose("evaluate", overrides=["task=arc"]))
        mine = to_run_config(compose("evaluate", overrides=["task=arc", "task.ids=[66e6c45b]"]))
    from loop.tasks import domain

    assert squad.task.data.endswith("eval200.json") and len(domain(squad.task).load(squad.task, True)) == 200
    assert arc.task.data.endswith("evaluation_challenges_filtered_1B_eval_set.json")
    assert [t.id for t in domain(arc.task).load(arc.task, held_out=True)] == [
        "66e6c45b", "59341089", "68b67ca3", "b1fc8b8e"]
    assert arc.evaluate.conditions == ["base", "teacher_base", "oracle"]
    assert [t.id for t in domain(mine.task).load(mine.task, held_out=True)] == ["66e6c45b"]  # it wins


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [[], ["task=arc"], ["task=squad_cpt"],
                                       *[[f"experiment={e}"] for e in EXPERIMENTS]])
def test_every_shipped_config_passes_the_launch_checks(overrides):
    check_settings(compose_run(*overrides))


def test_every_numeric_setting_has_a_rule_beside_it():
    """A numeric setting added to a schema without a launch check fails here: each config
    class says what its own numeric fields accept (its ACCEPTS), not a table elsewhere."""
    from dataclasses import fields, is_dataclass

    from loop.core.config import RunConfig

    def missing(node, prefix=""):
        accepts = getattr(type(node), "ACCEPTS", {})
        for f in fields(node):
            value = getattr(node, f.name)
            if is_dataclass(value):
                yield from missing(value, f"{prefix}{f.name}.")
            elif (f.type in ("int", "float", "int | None", "float | None") and f.name != "seed"
                  and f.name not in accepts):
                yield f"{type(node).__name__}.{f.name} ({prefix}{f.name})"

    assert list(missing(compose_run())) == []
    keys = {r.key for r, _ in schema_rules(compose_run())}
    assert {"student.lora.r", "student.arc.lora.r", "teacher.train.lora.r", "executor.name",
            "reward.filter", "student.arc.views"} <= keys  # one class's rules, wherever it sits
    assert isinstance(RunConfig().seed, int)  # any integer seeds a run (derived seeds mask it)


@pytest.mark.parametrize(("spec", "good", "bad", "words"), [
    (">= 1", [1, 2.5], [0, True, float("nan"), float("inf"), None, "1"], "at least 1"),
    ("> 0", [1e-9, 3], [0, -1, False], "above 0"),
    ("in (0, 1]", [1, 0.5], [0, 1.01], "in (0, 1]"),
    ("in [0, 1)", [0, 0.99], [1, -0.1], "in [0, 1)"),
    ("null or >= 1", [None, 1], [0], "at least 1, or null"),
    ("finite", [-3, 0.0], [float("nan"), "x"], "a finite number"),
])
def test_a_rule_text_accepts_what_it_says(spec, good, bad, words):
    accepts, said = rule(spec)
    assert said == words
    assert all(accepts(v) for v in good)
    assert not any(accepts(v) for v in bad)


def test_a_rule_that_cannot_be_read_or_names_no_field_is_refused():
    with pytest.raises(ValueError, match="unreadable rule"):
        rule("at least one")
    with pytest.raises(ValueError, match="needs its words"):
        Rule("x.y", lambda v: True)

    @dataclasses.dataclass
    class Misspelt:
        rate: float = 1.0
        ACCEPTS: ClassVar[dict] = {"rates": "> 0"}

    with pytest.raises(ValueError, match="Misspelt.ACCEPTS names no field 'rates'"):
        list(schema_rules(Misspelt()))


def test_a_choice_rule_names_the_setting_as_the_user_wrote_it():
    with pytest.raises(ConfigError, match="unknown executor 'slurm'; choose local or ray"):
        Rule("executor.name", {"one of": ("local", "ray"), "name": "executor"}).check("slurm")
    Rule("student.dtype", (("auto", "float32"), "auto or float32")).check("auto")
    with pytest.raises(ConfigError, match="student.dtype must be auto or float32, got 'fp32'"):
        Rule("student.dtype", (("auto", "float32"), "auto or float32")).check("fp32")


@pytest.mark.parametrize(("override", "message"), [
    ("teacher.sampling.temperature=-1", "teacher.sampling.temperature must be a finite number, "
                                        r"at least 0 \(0: greedy\), got -1.0"),
    ("teacher.sampling.top_p=1.5", r"teacher.sampling.top_p must be in \(0, 1\], got 1.5"),
    ("teacher.sampling.max_new_tokens=0", "teacher.sampling.max_new_tokens must be at least 1, got 0"),
    ("teacher.sampling.prompt=implication", "teacher.sampling.prompt must be one of"),
    ("student.lora.r=0", "student.lora.r must be at least 1, got 0"),
    ("student.lora.dropout=1", r"student.lora.dropout must be a probability in \[0, 1\)"),
    ("student.lora.targets=[]", "student.lora.targets must be a non-empty list"),
    ("student.train.lr=nan", "student.train.lr must be a finite number above 0, got nan"),
    ("student.train.batched=maybe", "student.train.batched must be auto, true or false, got .maybe."),
    ("student.train.lr=inf", "student.train.lr must be a finite number above 0, got inf"),
    ("student.train.pass_tokens=0", "student.train.pass_tokens must be at least 1, or null"),
    ("student.dtype=fp32", "student.dtype must be auto or float32"),
    ("student.arc.lr_range=[1e-2,1e-6]", "student.arc.lr_range must be two learning rates"),
    ("student.arc.views=[identity,rot45]", r"student.arc.views must be a non-empty list of views "
                                           r"among \['identity', 'transpose'"),
    ("student.arc.view_orders=-1", "student.arc.view_orders must be at least 0, got -1"),
    ("teacher.train.lora.alpha=0", "teacher.train.lora.alpha must be above 0"),
    ("loop.contexts_per_round=0", "loop.contexts_per_round must be at least 1"),
    ("task.n_contexts=0", "task.n_contexts must be at least 1, or null"),
    ("reward.fraction=0", r"reward.fraction must be a share of the round's self-edits, in \(0, 1\]"),
    ("evaluate.resamples=0", "evaluate.resamples must be at least 1"),
    ("evaluate.external.timeout=0", "evaluate.external.timeout must be seconds, above 0"),
    ("serve.port=70000", r"serve.port must be a TCP port in \[0, 65535\]"),
    ("executor.cpus_per_worker=0", "executor.cpus_per_worker must be above 0"),
    ("tracking.uri=file:///tmp/x/mlruns", "is a file store, which MLflow 3 refuses unless "
                                          "MLFLOW_ALLOW_FILE_STORE=true"),
    ("tracking.uri=/tmp/x/mlruns", "is a file store"),
    ("reward.judge=gpt4", r"reward.judge=gpt4 is not a model preset; choose from \['llama1b'"),
    ("tracking.uri=sqlite:////no/such/folder/mlflow.db", "the folder /no/such/folder does not exist"),
])
def test_a_bad_value_names_the_setting_the_value_and_what_is_accepted(override, message, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match=message):
        check_settings(compose_run(override))


def test_a_file_store_passes_where_mlflow_allows_it(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_settings(compose_run("tracking.uri=file:///tmp/x/mlruns"))
    check_settings(compose_run("tracking=none", "tracking.uri=file:///tmp/x/mlruns"))


@pytest.mark.parametrize("module", ["loop.run", "loop.evaluate"])
@pytest.mark.parametrize("override", ["teacher.sampling.temperature=-1", "student.lora.r=0",
                                      "teacher.sampling.max_new_tokens=0",
                                      "tracking.uri=file:///tmp/x/mlruns"])
def test_bad_settings_stop_at_launch_with_one_line_and_leave_no_folder(module, override, tmp_path):
    """The issue's table, tried as a user would: exit 2, one line, no traceback, no run folder
    (Hydra makes one before the job starts; a launch that stops removes it), no model loaded."""
    out = subprocess.run([sys.executable, "-m", module, "experiment=smoke", override,
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_FILE_STORE"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: {override.split('=')[0]}") and out.stderr.count("\n") == 1
    assert "Loading weights" not in out.stderr + out.stdout
    assert not (tmp_path / "run").exists()


def test_a_stopped_launch_keeps_a_folder_that_holds_anything_else(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    out = subprocess.run([sys.executable, "-m", "loop.run", "experiment=smoke",
                          f"resume={folder}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "no run.json there" in out.stderr
    assert (folder / "notes.txt").read_text() == "keep me"
