"""`python -m loop.plan` and the launch check: the memory plan of a composed run, before any
model loads; a run that cannot fit is refused with one line naming the settings to change."""

from __future__ import annotations

import re

import pytest

from loop.core import memory
from loop.core.config import ConfigError
from tests.conftest import compose_run

COMMANDS = {"bundled pairing": [], "users' command": ["teacher=qwen7b", "student=llama1b"],
            "paper_squad": ["experiment=paper_squad"], "paper_arc": ["experiment=paper_arc"]}


@pytest.mark.parametrize("name", COMMANDS)
def test_the_plan_prints_a_row_per_resident_thing_and_the_presets_fit_80_gib(name, capsys):
    from loop.plan import main

    assert main([*COMMANDS[name], "plan.gpu_memory=80GiB"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^  (.+?)\s+([\d.]+) GiB", out, re.M)
    named = [what for what, _ in rows]
    for part in ("teacher weights", "student weights", "M-step: teacher LoRA",
                 "M-step: activations", "inner loop: activations", "inner loop: log-softmax",
                 "teacher sampling: KV cache", "CUDA context"):
        assert any(w.startswith(part) for w in named), (part, named)
    # the peak is what stays resident plus the largest of the phases, which follow each other
    *parts, (last, peak) = [(what, float(gib)) for what, gib in rows]
    phases = {p: sum(g for w, g in parts if w.startswith(p + ":")) for p in memory.PHASES}
    resident = sum(g for w, g in parts if not any(w.startswith(p + ":") for p in phases))
    largest = max(phases, key=phases.get)
    assert last.startswith("peak: resident ") and last.endswith(f" + the {largest}")
    assert float(last.split()[2]) == pytest.approx(resident, abs=0.05 * len(parts))
    assert peak == pytest.approx(resident + phases[largest], abs=0.05 * len(parts))
    assert "of 80 GiB: fits" in out
    if name == "paper_squad":
        assert any(w.startswith("judge weights (qwen7b-instruct)") for w in named)


def test_weights_and_lora_sizes_are_counted_from_the_architectures():
    """Qwen2.5-7B has 7.62B parameters (its model card: 7.61B); a LoRA of rank r on every
    projection holds r x (in + out) per projection and layer, counted by hand here."""
    run = compose_run("teacher=qwen7b", "student=llama1b")
    qwen = memory.architecture(run.teacher)
    assert 7.60e9 < qwen.params < 7.63e9
    h, i, kv = 3584, 18944, 512
    per_layer = (h + h) + (h + kv) + (h + kv) + (h + h) + (h + i) + (h + i) + (i + h)
    assert qwen.lora_params(64, run.teacher.train.lora.targets) == 28 * 64 * per_layer
    assert qwen.kv_bytes_per_token(2) == 2 * 28 * kv * 2  # keys and values, every layer, bf16
    llama = memory.architecture(run.student)
    assert 1.23e9 < llama.params < 1.24e9  # Llama-3.2-1B: 1.24B, tied embeddings


def test_a_run_that_cannot_fit_is_refused_at_launch_with_one_line():
    from loop.core.rounds import validate

    with pytest.raises(ConfigError) as e:
        validate(compose_run("teacher=qwen7b", "student=llama1b", "plan.gpu_memory=24GiB"))
    line = str(e.value)
    assert "\n" not in line and "over its 24 GiB" in line
    assert "student.train.pass_tokens" in line  # the largest row's setting comes first
    assert "plan.check=false" in line  # and the way past an estimate that errs high
    validate(compose_run("teacher=qwen7b", "student=llama1b", "plan.gpu_memory=80GiB"))
    validate(compose_run("teacher=qwen7b", "student=llama1b", "plan.gpu_memory=24GiB",
                         "plan.check=false"))


def test_a_vllm_engine_too_small_for_its_weights_and_one_sequence_is_refused():
    from loop.core.rounds import validate

    with pytest.raises(ConfigError, match=r"raise teacher.vllm_memory") as e:
        validate(compose_run("teacher=qwen7b", "student=llama1b", "teacher.backend=vllm",
                             "teacher.vllm_memory=0.1", "plan.gpu_memory=80GiB"))
    assert "max_model_len=1152" in str(e.value)  # a 1,024-token prompt + 128 new tokens


def test_max_model_len_is_what_the_task_sends():
    from loop.tasks.squad import PASSAGE_TOKENS

    run = compose_run("teacher.sampling.max_new_tokens=300", "student.eval.max_new_tokens=20")
    assert memory.max_model_len(run, "teacher") == PASSAGE_TOKENS + 300
    assert memory.max_model_len(run, "student") == PASSAGE_TOKENS + 20
    arc = compose_run("task=arc")
    assert memory.max_model_len(arc, "student") == arc.student.arc.max_tokens


@pytest.mark.parametrize("text, gib", [("80GiB", 80), ("80 GB", 80), ("141", 141),
                                       ("81920MiB", 80)])
def test_sizes_parse(text, gib):
    assert memory.parse_size(text) == gib * 2**30


def test_a_bad_size_is_a_config_error():
    with pytest.raises(ConfigError, match="plan.gpu_memory must be a size"):
        memory.parse_size("lots")


@pytest.mark.parametrize("setting, workers, gpus, want", [
    (None, 2, 0, 0.0), (None, 2, 2, 1.0), (None, 2, 8, 1.0), (None, 3, 1, 0.3333),
    (None, 3, 2, 0.5),  # not 0.6667: two of those do not fit one GPU, the third would wait
    (0.0, 2, 8, 0.0), (0.5, 2, 1, 0.5)])
def test_ray_workers_see_a_gpu_by_default(setting, workers, gpus, want):
    """executor.gpus_per_worker unset (auto): a whole GPU each where there is one per worker,
    an equal share otherwise; never 0 on a GPU cluster (the student would load on the CPU)."""
    from loop.core.executor import ExecutorConfig, worker_gpus

    cfg = ExecutorConfig(name="ray", num_workers=workers, gpus_per_worker=setting)
    assert worker_gpus(cfg, gpus) == want


@pytest.mark.slow
def test_loop_run_refuses_before_looking_for_the_models_and_leaves_no_folder(tmp_path):
    """The users' command with a planted 24 GiB GPU: one line, exit 2, before the hub presets
    are looked for (none is cached here) and without a run folder."""
    import os
    import subprocess
    import sys

    from loop.core.config import PROJECT_ROOT

    out = subprocess.run(
        [sys.executable, "-m", "loop.run", "teacher=qwen7b", "student=llama1b", "tracking=none",
         "plan.gpu_memory=24GiB", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "over its 24 GiB" in errors[0], out.stderr[-2000:]
    assert "Hugging Face cache" not in out.stderr  # refused before the models were looked for
    assert not (tmp_path / "run").exists()


def test_a_local_ray_on_one_gpu_puts_its_workers_beside_the_loop():
    """executor=ray without a cluster on a one-GPU machine: the workers' students (now on the
    GPU by default) share GPU 0 with the loop's models, so their rows add up there."""
    run = compose_run("teacher=qwen7b", "student=llama1b", "executor=ray", "plan.gpus=1")
    devices, _ = memory.plan(run, 80 * 2**30)
    assert [d for d, _ in devices] == ["GPU 0 (the driver and 2 local Ray workers)"]
    alone, _ = memory.plan(compose_run("teacher=qwen7b", "student=llama1b"), 80 * 2**30)
    apart, _ = memory.plan(compose_run("teacher=qwen7b", "student=llama1b", "executor=ray",
                                       "plan.gpus=4"), 80 * 2**30)
    assert len(apart) == 2  # the driver's GPU and each worker's
    together = memory.total(devices[0][1])[0]
    inner = memory.total(alone[0][1])[0] - memory.total(alone[0][1])[1]
    assert together > memory.total(alone[0][1])[0] + inner * 0.99  # two workers' inner loops
    on_cpu, _ = memory.plan(compose_run("teacher=qwen7b", "student=llama1b", "executor=ray",
                                        "executor.gpus_per_worker=0"), 80 * 2**30)
    assert not any(r.phase == "inner loop" for r in on_cpu[0][1])  # the workers are on CPUs


def test_a_micro_batch_that_does_not_divide_a_process_share_is_refused_at_launch():
    from loop.core.rounds import validate

    with pytest.raises(ConfigError, match="micro_batch=2 must divide the 5 pairs"):
        validate(compose_run("teacher.train.batch_size=10", "teacher.train.processes=2",
                             "teacher.train.micro_batch=2"))
    validate(compose_run("experiment=paper_squad", "teacher.train.processes=2"))


def test_a_model_the_plan_cannot_read_is_planned_by_loop_plan_never_refused_at_launch(caplog):
    """No config.json here and no hub (HF_HUB_OFFLINE in the tests): `loop.plan` says so; a
    run starts unchecked, with a warning, as it did before there was a plan."""
    from loop.core.rounds import validate

    run = compose_run("student=llama1b", "student.hub_id=nobody/nothing", "plan.gpu_memory=80GiB")
    with pytest.raises(memory.Unplannable, match="no architecture config for llama1b"):
        memory.plan(run, 80 * 2**30)
    validate(run)
    assert "memory plan skipped" in caplog.text
