"""Fault injection: a real `python -m loop.run` killed with SIGKILL at every phase, resumed
after each kill, ends exactly where an uninterrupted run with the same seeds ends.

One run is killed seven times in a row (`SEAL_FAULT`, loop.core.faults): while sampling, in the inner
loop, mid M-step, with the teacher adapter staged but not renamed, before a tracking call, with
a round summary written to its temporary name, and while sampling round 1. After each kill
nothing half-written is in place; after the last resume the ledger holds every evaluation
exactly once and every figure, self-edit and adapter weight equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loop.core.config import PROJECT_ROOT
from loop.core.ledger import read_jsonl

# (fault, what the folder holds after it): each resume goes one phase further
CHAIN = [
    ("sample:2", "round 0: 4 of 6 self-edits recorded"),
    ("inner:2", "round 0: 4 of 6 evaluations in the ledger"),
    ("train:1", "round 0: the M-step killed after its first optimiser step"),
    ("save:1", "round 0: the adapter staged as teacher_adapter.tmp, not renamed"),
    ("tracking:1", "round 0: killed before its first MLflow call"),
    ("json:2", "round 0: summary.json written to summary.json.tmp, not renamed"),
    ("sample:1", "round 1: 2 of 6 self-edits recorded"),
]


def loop_run(tiny_llama, tiny_qwen2, tmp_path, out, *extra: str, fault: str | None = None):
    args = ["experiment=smoke", f"teacher.path={tiny_qwen2}", f"student.path={tiny_llama}",
            "loop.k=3", "loop.contexts_per_round=2", "teacher.sampling.batch_size=2",
            # batches of 2 adapters trained together, as on a GPU (auto on a CPU trains alone)
            "student.train.max_adapters=2", "student.train.batched=true",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifacts={tmp_path}/mlartifacts"]
    env = {k: v for k, v in os.environ.items() if k != "SEAL_FAULT"}
    if fault:
        env["SEAL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "loop.run", *args, *extra], cwd=PROJECT_ROOT,
                          env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)


def nothing_half_written(out) -> None:
    """What a resume reads back is whole: JSON files parse, adapters are complete, the ledger
    has each evaluation at most once."""
    for path in out.rglob("*.json"):
        json.loads(path.read_text())
    for adapter in out.glob("round_*/teacher_adapter"):
        assert {"adapter_model.safetensors", "adapter_config.json", "train_losses.json"} <= {
            p.name for p in adapter.iterdir()}
    keys = [(e["round"], e["context"], e["sample"], e["inner"])
            for e in read_jsonl(out / "ledger.jsonl")]
    assert len(keys) == len(set(keys))


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.slow
def test_killed_at_every_phase_then_resumed_equals_an_uninterrupted_run(tiny_llama, tiny_qwen2,
                                                                         tmp_path):
    import mlflow
    import torch
    from safetensors.torch import load_file

    ref = tmp_path / "uninterrupted"
    done = loop_run(tiny_llama, tiny_qwen2, tmp_path, ref, f"hydra.run.dir={ref}")
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    for n, (fault, state) in enumerate(CHAIN):
        where = f"hydra.run.dir={out}" if n == 0 else f"resume={out}"
        killed = loop_run(tiny_llama, tiny_qwen2, tmp_path, out, where, fault=fault)
        assert killed.returncode == -9, f"{fault} ({state}) was not reached:\n{killed.stderr[-3000:]}"
        assert not (out / "results.json").exists()
        nothing_half_written(out)
        if fault == "sample:2":
            assert len(read_jsonl(out / "round_0" / "self_edits.jsonl")) == 4
        if fault == "inner:2":
            assert len(read_jsonl(out / "ledger.jsonl")) == 4
        if fault in ("train:1", "save:1"):
            assert not (out / "round_0" / "teacher_adapter").exists()
        if fault == "save:1":
            assert (out / "round_0" / "teacher_adapter.tmp" / "adapter_model.safetensors").exists()
        if fault == "json:2":
            assert (out / "round_0" / "summary.json.tmp").exists()
            assert not (out / "round_0" / "summary.json").exists()
        if fault == "sample:1":
            assert (out / "round_0" / "summary.json").exists()
            assert len(read_jsonl(out / "round_1" / "self_edits.jsonl")) == 2
    final = loop_run(tiny_llama, tiny_qwen2, tmp_path, out, f"resume={out}")
    assert final.returncode == 0, final.stderr[-3000:]

    ledger, expected = read_jsonl(out / "ledger.jsonl"), read_jsonl(ref / "ledger.jsonl")
    keys = [(e["round"], e["context"], e["sample"], e["inner"]) for e in ledger]
    assert len(keys) == len(set(keys)) == 2 * 2 * 3  # every evaluation exactly once
    assert sorted(map(json.dumps, without_times(ledger))) == sorted(
        map(json.dumps, without_times(expected)))  # scores, rewards, losses, seeds: equal
    for r in (0, 1):
        assert without_times(read_jsonl(out / f"round_{r}" / "self_edits.jsonl")) == \
            without_times(read_jsonl(ref / f"round_{r}" / "self_edits.jsonl"))
        assert json.loads((out / f"round_{r}" / "self_edit_table.json").read_text()) == \
            json.loads((ref / f"round_{r}" / "self_edit_table.json").read_text())
        mine = load_file(out / f"round_{r}" / "teacher_adapter" / "adapter_model.safetensors")
        theirs = load_file(ref / f"round_{r}" / "teacher_adapter" / "adapter_model.safetensors")
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # bit-identical M-steps
    got, want = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    for a, b in zip(got["rounds"], want["rounds"], strict=True):
        assert a["rewards"] == b["rewards"]
        assert {k: v for k, v in a["metrics"].items() if not k.startswith(("time/", "throughput/"))} \
            == {k: v for k, v in b["metrics"].items() if not k.startswith(("time/", "throughput/"))}

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run_id, "reward/mean")} == {0, 1}
    assert not (out / "tracking_pending.jsonl").exists()
