"""The cheap reward: its log-probabilities against a by-hand forward pass, screening, the
honesty check, and the loop run on the proxy alone or screened by it."""

from __future__ import annotations

import json

import pytest
import torch

from loop.core import rounds
from loop.core.config import ConfigError
from loop.core.ledger import read_jsonl
from loop.tasks.squad import proxy
from loop.tasks.squad.data import Passage, Question
from tests.conftest import compose_run
from tests.loop.test_rounds import tiny_run

PASSAGE = Passage("p/0", "Paris", "Paris is the capital of France.",
                  [Question("What is the capital of France?", "Paris"),
                   Question("Which country is Paris in?", "France")])


def test_the_proxy_reads_the_self_edit_before_each_question(tiny_llama):
    """Each value is the mean log-probability of the gold tokens after the self-edit and the
    closed-book prompt, recomputed here with a plain forward pass and log_softmax."""
    from student.model import load_student
    from student.prompts import answer_prompt
    from tests.student.test_models import tiny_student

    cfg = tiny_student(tiny_llama)
    model, tok = load_student(cfg)
    edit = "1. Paris is in France.\n2. It is the capital."
    rows = proxy.context_rows(model, tok, PASSAGE, edit, cfg)
    for row, q in zip(rows, PASSAGE.questions, strict=True):
        prompt = tok(f"{edit}\n\n{answer_prompt('Paris', q.question)}")["input_ids"]
        gold = tok(q.answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + gold])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        by_hand = sum(logp[len(prompt) - 1 + t, g].item() for t, g in enumerate(gold)) / len(gold)
        assert row["context_logprob"] == pytest.approx(by_hand, abs=1e-4)


def test_screening_keeps_each_contexts_best_by_the_proxy():
    contexts = [Passage("a", "", "", []), Passage("b", "", "", [])]
    proxies = {("a", 0): 0.1, ("a", 1): 0.5, ("a", 2): 0.5, ("b", 0): -1.0, ("b", 1): -2.0,
               ("b", 2): 0.0}
    assert proxy.screened(proxies, contexts, 3, 1) == {("a", 1), ("b", 2)}  # ties: lower index
    assert proxy.screened(proxies, contexts, 3, 2) == {("a", 1), ("a", 2), ("b", 0), ("b", 2)}
    assert proxy.agreement([1.0, 2.0], [2.0, 1.0]) == {"spearman": None, "pearson": None}
    assert proxy.agreement([1.0, 2.0, 3.0], [1.0, 5.0, 6.0])["spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize(("overrides", "message"), [
    (["reward.metric=context_logprob", "reward.baseline=passage"], "absorbs nothing"),
    (["reward.metric=context_logprob", "reward.inner_seeds=2"], "absorbs nothing"),
    (["reward.screen=6", "loop.k=5"], "must be at most loop.k"),
    (["reward.screen=1", "reward.metric=context_logprob"], "must be at most loop.k, with"),
    (["reward.screen=0"], "reward.screen must be at least 1"),
    (["task=arc", "reward.screen=1", "reward.metric=success", "reward.baseline=none"],
     "SQuAD's"),
])
def test_proxy_settings_that_cannot_work_fail_at_launch(overrides, message):
    with pytest.raises(ConfigError, match=message):
        rounds.validate(compose_run(*overrides))


@pytest.mark.slow
def test_a_round_screened_by_the_proxy_absorbs_only_the_best(tiny_llama, tiny_qwen2, tmp_path):
    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                   "reward.screen=2")
    out = tmp_path / "run"
    results = rounds.run(run, out)
    proxies = {(r["context"], r["sample"]): r["reward"]
               for r in read_jsonl(out / "round_0" / "proxy.jsonl")}
    assert len(proxies) == 2 * 3  # every self-edit read in context
    ledger = read_jsonl(out / "ledger.jsonl")
    absorbed = {(e["context"], e["sample"]) for e in ledger}
    assert len(ledger) == len(absorbed) == 2 * 2  # 2 of 3 per context
    for c in {c for c, _ in proxies}:
        mine = sorted((v, -i) for (cc, i), v in proxies.items() if cc == c)
        assert {(c, -i) for _, i in mine[-2:]} == {k for k in absorbed if k[0] == c}
    table = json.loads((out / "round_0" / "self_edit_table.json").read_text())
    assert [x["reward"] is None for x in table].count(True) == 2  # screened out: not absorbed
    assert all(x["kept"] is False for x in table if x["reward"] is None)
    m = results["rounds"][0]["metrics"]
    assert m["proxy/spearman"] == m["proxy/spearman"]  # 4 self-edits with both rewards: a number
    assert results["final_adapter"] == "round_0/teacher_adapter"


@pytest.mark.slow
def test_a_round_on_the_proxy_alone_absorbs_nothing(tiny_llama, tiny_qwen2, tmp_path):
    from loop.core.reward import context_score

    run = tiny_run(tiny_llama, tiny_qwen2, tmp_path, "tracking.enabled=false", "loop.rounds=1",
                   "reward.metric=context_logprob")
    out = tmp_path / "run"
    results = rounds.run(run, out)
    ledger = read_jsonl(out / "ledger.jsonl")
    assert len(ledger) == 2 * 3 and all(e["train_loss"] == [] for e in ledger)  # no training
    bases = {b["context"]: b["scores"] for b in read_jsonl(out / "baseline.jsonl")}
    for e in ledger:  # against the frozen student's closed-book log-prob, by hand
        assert e["baseline"] == pytest.approx(context_score(bases[e["context"]], "answer_logprob"))
        assert e["reward"] == pytest.approx(e["score"] - e["baseline"])
    assert not (out / "round_0" / "proxy.jsonl").exists()  # the reward is the proxy itself
    assert results["final_adapter"] == "round_0/teacher_adapter"
