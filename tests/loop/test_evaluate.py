"""`loop.evaluate` end to end: tiny student in-process, the bundled student through the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from loop.core.config import PROJECT_ROOT, ConfigError
from loop.core.domain import select
from loop.evaluate import evaluate
from loop.tasks.squad.data import load_squad
from loop.tasks.squad.metrics import passage_means
from tests.conftest import compose_run

PASSAGES = [
    {"title": "Crimean War", "context": "King Otto of Greece saw an opportunity to expand north.",
     "questions": [{"question": "Who saw an opportunity?", "answer": "King Otto"},
                   {"question": "Which direction?", "answer": "north"}]},
    {"title": "Paris", "context": "Paris is the capital of France.",
     "questions": [{"question": "What is the capital of France?", "answer": "Paris"}]},
]


THREE = [*PASSAGES, {"title": "Seine", "context": "The Seine flows through Paris.",
                     "questions": [{"question": "Which river?", "answer": "the Seine"}]}]
QUESTIONS = {f"mini/{i}": p["questions"] for i, p in enumerate(THREE)}


def read_lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_passages(tmp_path):
    data = tmp_path / "mini.json"
    data.write_text(json.dumps(THREE))
    return data


def test_passage_means_in_percent_except_logprob():
    scores = [{"exact_match": 1.0, "f1": 0.5, "contains": 1.0, "logprob": -2.0},
              {"exact_match": 0.0, "f1": 0.0, "contains": 1.0, "logprob": -4.0}]
    assert passage_means(scores) == {"exact_match": 50.0, "f1": 25.0, "contains": 100.0,
                                     "logprob": -3.0}


def test_proxy_correlation_by_hand():
    from loop.tasks.squad.rows import proxy_correlations

    def row(lp, f1):
        return {"logprob": lp, "f1": f1, "contains": 0.0}

    per = {"base": [row(-3, 10), row(-3, 10), row(-3, 10)],
           "passage": [row(-2, 12), row(-1, 14), row(0, 15)]}  # gains: lp 1,2,3; f1 2,4,5
    r = proxy_correlations(per)["passage"]
    assert r["f1"] == pytest.approx(3 / (28 / 3) ** 0.5)
    assert r["contains"] is None  # no change in containment: no correlation to speak of


def test_select_is_a_seeded_subset_in_file_order():
    data = load_squad(PROJECT_ROOT / "data/squad/eval200.json")
    a = select(data, 10, seed=0)
    assert [p.id for p in a] == [p.id for p in select(data, 10, seed=0)]
    assert [p.id for p in a] != [p.id for p in select(data, 10, seed=1)]
    assert sorted(int(p.id.split("/")[1]) for p in a) == [int(p.id.split("/")[1]) for p in a]
    assert select(data, 500, seed=0) == data


def test_evaluate_scores_every_condition_and_records_everything(tiny_llama, tmp_path):
    import mlflow

    data = tmp_path / "mini.json"
    data.write_text(json.dumps(PASSAGES))
    db = tmp_path / "mlflow.db"
    run = compose_run(f"student.path={tiny_llama}", "student.name=tiny", f"task.data={data}",
                      "task.split=all",
                      f"tracking.uri=sqlite:///{db}", f"tracking.artifacts={tmp_path / 'art'}",
                      "student.train.epochs=2", "student.eval.max_new_tokens=4",
                      "evaluate.resamples=200")
    out = tmp_path / "run"
    results = evaluate(run, out)
    assert results["contexts"] == ["mini/0", "mini/1"] and results["n_questions"] == 3
    assert set(results["summary"]) == {"base", "passage"}
    assert "vs_base" in results["summary"]["passage"]["f1"]
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    # the passages' adapters are absorbed in one batch, before the base rows
    assert [(x["context"], x["condition"]) for x in lines] == [
        ("mini/0", "passage"), ("mini/1", "passage"), ("mini/0", "base"), ("mini/1", "base")]
    assert len((out / "baseline.jsonl").read_text().splitlines()) == 2
    passage_q = lines[0]["questions"][0]
    assert passage_q["train_loss_last"] < passage_q["train_loss_first"]

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    [logged] = mlflow.search_runs(experiment_names=["squad"], output_format="list")
    assert logged.data.params["student.name"] == "tiny"
    assert logged.data.params["student.lora.r"] == "32"
    assert logged.data.metrics["passage/f1"] == pytest.approx(
        results["summary"]["passage"]["f1"]["estimate"]["mean"])
    assert logged.info.status == "FINISHED"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(logged.info.run_id)}
    assert {"results.json", "results.png", "results_table.json"} <= artifacts


def test_unknown_condition_is_a_clear_error(tmp_path):
    run = compose_run("evaluate.conditions=[base,pasage]", "tracking.enabled=false")
    with pytest.raises(ConfigError, match=r"unknown evaluate.conditions \['pasage'\]"):
        evaluate(run, tmp_path)


@pytest.mark.slow
def test_cli_prints_the_table_on_the_bundled_student(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "loop.evaluate", "task.n_contexts=2", "evaluate.resamples=200",
         "evaluate.judge=smollm135m",
         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"tracking.artifacts={tmp_path}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split()[0] for line in out.stdout.splitlines() if line.startswith(("base", "passage"))]
    assert rows == ["base", "passage", "passage"]  # the means, then the paired differences
    assert "judge %" in out.stdout and "judge errors" in out.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["contexts"]) == 2


def test_judge_errors_are_counted_apart_never_as_wrong(tiny_llama, monkeypatch):
    from loop.core.judge import add_verdicts
    from student import evaluate as student_evaluate
    from student.model import load_student
    from tests.student.test_models import tiny_student

    model, tok = load_student(tiny_student(tiny_llama))
    scores = [{"question": "Capital of France?", "gold": "Paris", "prediction": "Paris",
               "exact_match": 1.0, "f1": 1.0, "contains": 1.0, "logprob": -1.0}] * 3
    asked, judge = [], student_evaluate.judge
    monkeypatch.setattr(student_evaluate, "judge",
                        lambda m, t, items, **kw: asked.extend(items) or judge(m, t, items, **kw))
    judged = add_verdicts(scores, (model, tok, False), "France")
    # the judge reads the question as the student was asked it (the reference's Topic line)
    assert asked[0] == ("Topic: France\nCapital of France?", "Paris", "Paris")
    assert all(isinstance(s["judge_reply"], str) for s in judged)
    # a random tiny model answers gibberish: every verdict is an error, none is "wrong"
    assert [s["judge"] for s in judged] == [None] * 3
    means = passage_means(judged)
    assert means["judge"] is None and means["judge_errors"] == 3


def test_judge_preset_must_exist():
    from loop.core.judge import load_judge

    with pytest.raises(ConfigError, match=r"evaluate.judge=gpt4 is not a model preset"):
        load_judge("gpt4")


def test_help_and_data_errors_at_launch(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "loop.evaluate", *args], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=120)

    out = cli("--help")
    assert out.returncode == 0 and "== python -m loop.evaluate ==" in out.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('[{"title": "T", "context": "C"}]')
    out = cli(f"task.data={bad}", "tracking.enabled=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert f"error: {bad}: passage 0: 'questions' must be a non-empty list" in out.stderr
    assert "Traceback" not in out.stderr


def test_teacher_conditions_pair_trained_and_untrained_teacher(tiny_llama, tiny_qwen2, tmp_path):
    """`teacher` (with an adapter) and `teacher_base` draw with the same seeds; the adapter is
    the only difference, and every condition is paired with every earlier one."""
    from pathlib import Path

    from loop.core.adapters import resolve_adapter
    from teacher.model import load_teacher
    from teacher.train import train_adapter

    run = compose_run(f"student.path={tiny_llama}", f"teacher.path={tiny_qwen2}",
                      f"task.data={write_passages(tmp_path)}", "task.split=all", "tracking.enabled=false",
                      "student.train.epochs=2", "student.eval.max_new_tokens=4",
                      "teacher.sampling.max_new_tokens=12", "evaluate.samples=2",
                      "evaluate.resamples=200", "teacher.train.lr=0.05", "teacher.train.epochs=3",
                      "evaluate.conditions=[base,teacher_base,teacher]")
    model, tok = load_teacher(run.teacher)
    adapter = tmp_path / "adapter"
    train_adapter(model, tok, [("Passage: x", "Paris Paris Paris")] * 4, run.teacher, adapter, seed=0)
    assert resolve_adapter(str(adapter), run) == adapter
    other = dataclasses.replace(run, teacher=dataclasses.replace(run.teacher, path=tiny_llama))
    with pytest.raises(ConfigError, match=r"trained on another base model .*model_type qwen2 "
                                          r"there, llama here"):
        resolve_adapter(str(adapter), other)
    with pytest.raises(ConfigError, match="neither an adapter folder"):
        resolve_adapter(str(tmp_path), run)
    with pytest.raises(ConfigError, match="not a run id"):
        resolve_adapter("0123abcd", dataclasses.replace(
            run, tracking=dataclasses.replace(run.tracking, uri=f"sqlite:///{tmp_path}/m.db")))

    out = tmp_path / "run"
    results = evaluate(dataclasses.replace(
        run, teacher=dataclasses.replace(run.teacher, adapter=str(adapter))), out)
    edits = [json.loads(x) for x in (out / "self_edits.jsonl").read_text().splitlines()]
    assert len(edits) == 2 * 3 * 2  # conditions x passages x samples
    by = {(e["condition"], e["context"], e["sample"]): e for e in edits}
    for (cond, ctx, i), e in by.items():
        if cond == "teacher":
            assert e["seed"] == by[("teacher_base", ctx, i)]["seed"]
    assert [e["text"] for e in edits if e["condition"] == "teacher"] != [
        e["text"] for e in edits if e["condition"] == "teacher_base"]  # the adapter changed them
    summary = results["summary"]
    assert {"vs_base", "vs_teacher_base"} <= set(summary["teacher"]["logprob"])
    assert set(results["proxy_correlation"]) == {"teacher_base", "teacher"}
    # the in-context proxy against the absorbed log-prob gain, over the 3 x 2 self-edits each
    agreement = results["proxy_agreement"]
    assert set(agreement) == {"teacher_base", "teacher"}
    assert all(a["n"] == 6 and -1 <= a["spearman"] <= 1 for a in agreement.values())
    assert len(read_lines(out / "proxy.jsonl")) == 2 * 6
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    teacher_rows = [x for x in lines if x["condition"] == "teacher"]
    assert all(len(x["questions"]) == 2 * len(QUESTIONS[x["context"]]) for x in teacher_rows)
    assert Path(out / "results.json").exists()

    # the adapter gone (another machine, a later session): a folder whose `teacher` row is
    # sampled still resumes, reading its self-edits back; a new folder fails at launch
    trained = dataclasses.replace(run, teacher=dataclasses.replace(run.teacher, adapter=str(adapter)))
    adapter.rename(tmp_path / "moved")
    again = evaluate(dataclasses.replace(trained, resume=str(out)), out)
    assert again["summary"] == summary
    assert (out / "self_edits.jsonl").read_text().count("\n") == len(edits)
    elsewhere = dataclasses.replace(trained, tracking=dataclasses.replace(
        trained.tracking, uri=f"sqlite:///{tmp_path}/m.db"))
    with pytest.raises(ConfigError, match="teacher.adapter=.*no such folder"):
        evaluate(elsewhere, tmp_path / "fresh")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cpt_absorbs_every_passage_in_one_training_run(tiny_llama, tmp_path, method):
    run = compose_run("task=squad_cpt", f"student.path={tiny_llama}", "student.name=tiny",
                      f"task.data={write_passages(tmp_path)}", "task.split=all", "tracking.enabled=false",
                      "student.train.epochs=2", "student.eval.max_new_tokens=4",
                      "evaluate.resamples=200", f"student.train.method={method}")
    out = tmp_path / "run"
    results = evaluate(run, out)
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    passage = [q for x in lines if x["condition"] == "passage" for q in x["questions"]]
    assert {q["sequences"] for q in passage} == {len(THREE)}  # one run on all three passages
    assert len({(q["seed"], q["train_loss_first"], q["train_loss_last"]) for q in passage}) == 1
    assert set(results["summary"]) == {"base", "passage"}
    with pytest.raises(ConfigError, match="setting of loop.evaluate"):
        from loop.core.rounds import validate

        validate(run)


@pytest.mark.parametrize("mode", ["grow", "merge"])
def test_forgetting_scores_every_earlier_passage_after_each_edit(tiny_llama, tmp_path, mode):
    from student.model import load_student

    run = compose_run(f"student.path={tiny_llama}", "student.name=tiny",
                      f"task.data={write_passages(tmp_path)}", "task.split=all", "tracking.enabled=false",
                      "task.absorb=sequential", f"evaluate.forgetting={mode}",
                      "student.train.epochs=3", "student.eval.max_new_tokens=4",
                      "evaluate.resamples=200", "student.train.lr=0.01")
    model, _ = load_student(run.student)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from loop.tasks.squad.data import load_squad
    from loop.tasks.squad.rows import score_sequential

    passages = load_squad(run.task.data)
    last, matrix = score_sequential("passage", passages, model, _, run, None)
    assert [len(row) for row in matrix] == [1, 2, 3]  # after edit j: passages 0..j
    assert matrix[0][0]["logprob"] != matrix[2][0]["logprob"]  # later edits moved passage 0
    assert set(last) == {p.id for p in passages}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored

    out = tmp_path / "run"
    results = evaluate(run, out)
    assert results["forgetting"]["mode"] == mode
    assert len(results["forgetting"]["matrix"]["passage"]) == 3
    assert (out / "forgetting.png").stat().st_size > 0


def test_resume_reads_back_what_was_recorded_and_computes_the_rest(tiny_llama, tiny_qwen2,
                                                                    tmp_path, batches):
    """A killed evaluation (scores and self-edits cut mid-batch, a torn last line, no results)
    resumes to the same results, bit for bit, computing only what was lost in the batches the
    uninterrupted run formed; a different config is refused."""
    run = compose_run(f"student.path={tiny_llama}", f"teacher.path={tiny_qwen2}",
                      f"task.data={write_passages(tmp_path)}", "task.split=all", "tracking.enabled=false",
                      "student.train.epochs=2", "student.eval.max_new_tokens=4",
                      "teacher.sampling.max_new_tokens=8", "teacher.sampling.batch_size=2",
                      "evaluate.resamples=200", "evaluate.conditions=[base,passage,teacher_base]")
    out = tmp_path / "run"
    first = evaluate(run, out)
    formed = {kind: list(seen) for kind, seen in batches.items()}
    assert [len(b) for b in formed["sample"]] == [2, 1]  # teacher.sampling.batch_size=2
    scores = (out / "scores.jsonl").read_text().splitlines(keepends=True)
    edits = (out / "self_edits.jsonl").read_text().splitlines(keepends=True)
    assert len(scores) == 9 and len(edits) == 3
    kept = "".join(scores[:4])
    (out / "scores.jsonl").write_text(kept + scores[4][:20])  # killed while writing line 5
    (out / "self_edits.jsonl").write_text(edits[0])
    (out / "results.json").unlink()

    with pytest.raises(ConfigError, match="already holds a run; continue it with resume="):
        evaluate(run, out)
    with pytest.raises(ConfigError, match=r"another config \(student.train.epochs: 2 -> 3\)"):
        evaluate(dataclasses.replace(run, resume=str(out), student=dataclasses.replace(
            run.student, train=dataclasses.replace(run.student.train, epochs=3))), out)

    for seen in batches.values():
        seen.clear()
    again = evaluate(dataclasses.replace(run, resume=str(out)), tmp_path / "ignored")
    # the self-edits of passages 1 and 2 were drawn in two batches, one recorded in part (and
    # so drawn whole again); teacher_base's three passages were scored in one such batch
    assert batches["sample"] == formed["sample"]
    assert batches["absorb"] == [formed["absorb"][1]]  # passage, teacher_base: the second
    assert again["summary"] == first["summary"]
    rows = (out / "scores.jsonl").read_text()
    assert rows.startswith(kept)  # what was recorded is untouched
    keys = [(x["context"], x["condition"]) for x in map(json.loads, rows.splitlines())]
    assert sorted(keys) == sorted({*keys}) and len(keys) == 9  # each exactly once
    assert (out / "self_edits.jsonl").read_text() == "".join(edits)  # redrawn identically
    assert not (tmp_path / "ignored").exists()


@pytest.mark.parametrize("overrides", [["student.train.passage_steps=own"],
                                       ["student.train.batch_size=1"]])
def test_passage_matched_trains_the_passage_as_long_as_the_self_edits(tiny_llama, tiny_qwen2,
                                                                      tmp_path, overrides):
    """`passage_matched`: the passage row's text and seed, trained for the mean steps of the
    self-edit row on that passage (by hand from the recorded self-edits: `own` adds one
    full-batch step per epoch to the passage's; batch 1 one step per unit), so its first
    step's loss is the passage row's and its steps are recorded."""
    from student.data import self_edit_units

    run = compose_run(f"student.path={tiny_llama}", f"teacher.path={tiny_qwen2}",
                      f"task.data={write_passages(tmp_path)}", "task.split=all",
                      "tracking.enabled=false", "student.train.epochs=2",
                      "student.eval.max_new_tokens=4", "teacher.sampling.max_new_tokens=12",
                      "evaluate.samples=2", "evaluate.resamples=200",
                      "evaluate.conditions=[passage,passage_matched,teacher_base]", *overrides)
    out = tmp_path / "run"
    results = evaluate(run, out)
    assert {"vs_passage"} <= set(results["summary"]["passage_matched"]["f1"])
    edits = {}
    for e in read_lines(out / "self_edits.jsonl"):
        edits.setdefault(e["context"], []).append(e["text"])
    rows = {(x["context"], x["condition"]): x["questions"]
            for x in read_lines(out / "scores.jsonl")}
    for ctx, texts in edits.items():
        units = [len(self_edit_units(t)) for t in texts]
        if overrides[0].endswith("own"):
            steps = [2 * (2 if n else 1) for n in units]
        else:
            steps = [2 * (n + 1) for n in units]
        matched = rows[(ctx, "passage_matched")]
        assert {q["steps"] for q in matched} == {max(1, round(sum(steps) / len(steps)))}
        assert matched[0]["seed"] == rows[(ctx, "passage")][0]["seed"]
        assert matched[0]["train_loss_first"] == pytest.approx(
            rows[(ctx, "passage")][0]["train_loss_first"], abs=1e-6)
    with pytest.raises(ConfigError, match="passage_matched trains the passage"):
        evaluate(dataclasses.replace(run, evaluate=dataclasses.replace(
            run.evaluate, conditions=["passage", "passage_matched"])), tmp_path / "other")


def test_absorb_seed_redraws_the_adapters_and_nothing_else():
    """evaluate.absorb_seed: 0 keeps every recorded seed (folders resume and pair as before);
    another value gives the adapters other seeds, for the same self-edits (--noise)."""
    from loop.core.seeds import derive_seed
    from loop.tasks.squad.rows import absorb_seed

    run = compose_run("tracking.enabled=false")
    assert absorb_seed(run, "teacher", "p/0", 1) == derive_seed(run.seed, "absorb", "teacher",
                                                                "p/0", 1)
    other = dataclasses.replace(run, evaluate=dataclasses.replace(run.evaluate, absorb_seed=1))
    assert absorb_seed(other, "teacher", "p/0", 1) != absorb_seed(run, "teacher", "p/0", 1)
    assert absorb_seed(other, "passage", "p/0") != absorb_seed(run, "passage", "p/0")
