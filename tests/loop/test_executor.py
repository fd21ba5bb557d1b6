"""The Ray executor for real: a local Ray, actors that each load the student, workers that die
mid-batch (SIGKILL through loop.core.faults), and a ledger equal to the local executor's."""

from __future__ import annotations

import dataclasses

import pytest

from loop.core import rounds
from loop.core.config import ConfigError
from loop.core.ledger import read_jsonl
from tests.conftest import compose_run


def tiny(tiny_llama, tiny_qwen2, tmp_path, *overrides):
    return compose_run("experiment=smoke", f"teacher.path={tiny_qwen2}", f"student.path={tiny_llama}",
                       "loop.k=3", "loop.contexts_per_round=2", "student.train.max_adapters=2",
                       "tracking.enabled=false", *overrides)


def test_backend_settings_fail_at_launch():
    with pytest.raises(ConfigError, match="unknown teacher.backend 'vlm'"):
        rounds.validate(compose_run("teacher.backend=vlm"))
    with pytest.raises(ConfigError, match="needs student.train.batched=true or auto"):
        rounds.validate(compose_run("student.eval_backend=vllm", "student.train.batched=false"))


def test_executor_settings_fail_at_launch():
    with pytest.raises(ConfigError, match="unknown executor 'slurm'"):
        rounds.validate(compose_run("executor.name=slurm"))
    with pytest.raises(ConfigError, match="executor.num_workers must be at least 1"):
        rounds.validate(compose_run("executor=ray", "executor.num_workers=0"))


@pytest.mark.slow
def test_ray_workers_that_die_mid_batch_lose_and_duplicate_nothing(tiny_llama, tiny_qwen2,
                                                                   tmp_path, monkeypatch):
    """Every Ray worker SIGKILLs itself when it starts its third batch (SEAL_FAULT=worker:3,
    inherited by the local Ray's workers): each such batch goes back to the queue and runs on
    a fresh worker. The ledger then holds every evaluation exactly once, with the rewards the
    local executor records (to float tolerance: Ray's workers run torch on 1 thread). The
    executor is how, not what: the run then resumes on the local executor."""
    local = rounds.run(tiny(tiny_llama, tiny_qwen2, tmp_path), tmp_path / "local")
    assert local["executor"] == {"name": "local", "retried_batches": 0}

    monkeypatch.setenv("SEAL_FAULT", "worker:3")
    run = tiny(tiny_llama, tiny_qwen2, tmp_path, "executor=ray", "executor.num_workers=2")
    results = rounds.run(run, tmp_path / "ray")
    assert results["executor"]["name"] == "ray" and results["executor"]["retried_batches"] >= 1

    want = {(e["round"], e["context"], e["sample"], e["inner"]): e
            for e in read_jsonl(tmp_path / "local" / "ledger.jsonl")}
    got = read_jsonl(tmp_path / "ray" / "ledger.jsonl")
    keys = [(e["round"], e["context"], e["sample"], e["inner"]) for e in got]
    assert len(keys) == len(set(keys)) == len(want) == 2 * 2 * 3  # none lost, none twice
    for key, e in zip(keys, got, strict=True):
        assert e["seed"] == want[key]["seed"] and e["self_edit_hash"] == want[key]["self_edit_hash"]
        assert e["reward"] == pytest.approx(want[key]["reward"], abs=1e-4)
    for a, b in zip(results["rounds"], local["rounds"], strict=True):
        assert a["rewards"] == pytest.approx(b["rewards"], abs=1e-4)

    monkeypatch.delenv("SEAL_FAULT")
    (tmp_path / "ray" / "round_1" / "summary.json").unlink()
    again = rounds.run(dataclasses.replace(
        run, resume=str(tmp_path / "ray"),
        executor=dataclasses.replace(run.executor, name="local")), tmp_path / "ignored")
    assert again["rounds"] == results["rounds"][:1] + again["rounds"][1:]
    assert again["rounds"][1]["rewards"] == results["rounds"][1]["rewards"]
    assert again["executor"]["name"] == "local"
