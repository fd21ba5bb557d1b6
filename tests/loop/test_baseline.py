"""The baseline is computed once per context and read back from the run folder."""

from __future__ import annotations

from loop.core.baseline import BaselineCache


def test_computed_once_then_read_back(tmp_path):
    calls = []

    def compute(ctx):
        def f():
            calls.append(ctx)
            return [{"f1": len(calls)}]
        return f

    path = tmp_path / "baseline.jsonl"
    cache = BaselineCache(path, "smollm135m")
    assert cache.get("a", compute("a")) == [{"f1": 1}]
    assert cache.get("a", compute("a")) == [{"f1": 1}]
    assert cache.get("b", compute("b")) == [{"f1": 2}]
    assert calls == ["a", "b"]
    resumed = BaselineCache(path, "smollm135m")  # a new process on the same run folder
    assert resumed.get("a", compute("a")) == [{"f1": 1}] and calls == ["a", "b"]
    other = BaselineCache(path, "qwen0.5b")  # another student's baseline is not this one
    assert other.get("a", compute("a")) == [{"f1": 3}] and calls == ["a", "b", "a"]


def test_a_matched_passage_baseline_trains_the_passage_as_long_as_a_self_edit(tiny_llama,
                                                                              tmp_path):
    """reward.baseline=passage_matched with student.train.passage_steps=own and 2 epochs: the
    passage alone trained 4 steps (2 of its own, 2 for a self-edit's batch), with the passage
    baseline's seed, cached under its own key; by hand, and unlike the 2-step passage."""
    import dataclasses
    import json

    from loop.core.ledger import read_jsonl
    from loop.core.seeds import derive_seed
    from loop.tasks.squad.absorb import absorb_and_score, baseline_scores, passage_texts
    from loop.tasks.squad.data import load_squad
    from student.model import load_student
    from tests.conftest import compose_run

    data = tmp_path / "mini.json"
    data.write_text(json.dumps([{"title": "Paris", "context": "Paris is the capital of France.",
                                 "questions": [{"question": "Capital of France?",
                                                "answer": "Paris"}]}]))
    run = compose_run(f"student.path={tiny_llama}", f"task.data={data}", "task.split=all",
                      "tracking.enabled=false", "reward.baseline=passage_matched",
                      "student.train.passage_steps=own", "student.train.epochs=2")
    model, tok = load_student(run.student)
    [passage] = load_squad(str(data))
    cache = BaselineCache(tmp_path / "baseline.jsonl", run.student.name)
    [matched] = baseline_scores(model, tok, passage, run, cache, None)
    assert [r["context"] for r in read_jsonl(tmp_path / "baseline.jsonl")] == [
        f"passage:{passage.id}:steps4"]
    seed = derive_seed(run.seed, "baseline", "passage", passage.id)

    def trained(epochs):
        longer = dataclasses.replace(run, student=dataclasses.replace(
            run.student, train=dataclasses.replace(run.student.train, epochs=epochs)))
        return absorb_and_score(model, tok, passage, passage_texts(passage, run), longer, seed,
                                None, generate=False)[0]

    assert [q["logprob"] for q in matched] == [q["logprob"] for q in trained(4)]
    assert [q["logprob"] for q in matched] != [q["logprob"] for q in trained(2)]
