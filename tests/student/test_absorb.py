"""Absorbing: the adapter learns, the base never changes, seeds decide everything."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from student.absorb import fresh_adapter, train
from student.config import LoraSettings, StudentConfig, TrainSettings
from student.data import collate, encode
from student.model import load_student
from tests.conftest import compose_run
from tests.student.test_models import tiny_student

TEXTS = ["Crimean War\nKing Otto of Greece saw an opportunity to expand.",
         "Crimean War\nGreece did not declare war on the Ottoman Empire.",
         "Crimean War\nFrom 1854 to 1857 the British and French blockaded Piraeus."]


def cfg_for(path: str, **train) -> StudentConfig:
    cfg = tiny_student(path)
    return dataclasses.replace(cfg, lora=LoraSettings(r=8, alpha=16),
                               train=TrainSettings(**{"lr": 1e-3, "epochs": 3, "batch_size": 2,
                                                      **train}))


def mean_loss(model, tokenizer, texts: list[str], max_length: int) -> float:
    """Token-weighted cross-entropy of `texts` under `model` (no gradients)."""
    enc = encode(tokenizer, texts, max_length)
    inputs = collate(enc.input_ids, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(**{k: v.to(device) for k, v in inputs.items()}).loss.item()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_base_is_bit_identical_after_absorb_and_discard_cycles(tiny_qwen2):
    cfg = cfg_for(tiny_qwen2)
    model, tok = load_student(cfg)
    before = snapshot(model)
    modules_before = [type(m) for m in model.modules()]
    for seed in range(3):
        with fresh_adapter(model, cfg.lora, seed) as adapted:
            train(adapted, tok, TEXTS, cfg, seed)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in model.modules()] == modules_before  # no LoRA layer left behind
    assert not any(p.requires_grad for p in model.parameters())


def test_each_step_s_gradient_is_clipped_to_max_grad_norm(tiny_llama):
    """Clipped to a norm far below the gradient's, Adam's update is ruled by its eps and the
    adapter barely moves; unclipped (null) it moves the usual lr per step."""
    moved = {}
    for norm in (None, 1e-12):
        cfg = cfg_for(tiny_llama, epochs=2, max_grad_norm=norm)
        model, tok = load_student(cfg)
        with fresh_adapter(model, cfg.lora, seed=0) as adapted:
            train(adapted, tok, TEXTS, cfg, seed=0)
            moved[norm] = max(p.abs().max().item() for n, p in adapted.named_parameters()
                              if "lora_B" in n)
    assert moved[1e-12] < 0.05 * moved[None]
    assert cfg_for(tiny_llama).train.max_grad_norm == 1.0  # SEAL's Trainer clips at 1.0


def test_the_adapter_learns_the_texts(tiny_llama):
    cfg = cfg_for(tiny_llama, epochs=10)
    model, tok = load_student(cfg)
    with fresh_adapter(model, cfg.lora, seed=0) as adapted:
        lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
        assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # B starts at zero
        loss_before = mean_loss(adapted, tok, TEXTS, 256)
        result = train(adapted, tok, TEXTS, cfg, seed=0)
        loss_after = mean_loss(adapted, tok, TEXTS, 256)
        assert all(torch.count_nonzero(p) > 0 for p in lora_b)  # every adapted module changed
    assert len(result.losses) == 10 * 2  # 3 sequences in batches of 2: 2 steps per epoch
    assert loss_after < loss_before - 1.0
    assert result.losses[-1] < result.losses[0]
    assert mean_loss(model, tok, TEXTS, 256) == pytest.approx(loss_before, abs=1e-5)  # base again


def test_absorbing_is_seeded(tiny_llama):
    cfg = cfg_for(tiny_llama)
    model, tok = load_student(cfg)

    def losses(seed):
        with fresh_adapter(model, cfg.lora, seed) as adapted:
            return train(adapted, tok, TEXTS, cfg, seed).losses

    assert losses(1) == losses(1)
    assert losses(1) != losses(2)


@pytest.mark.slow
def test_the_bundled_student_absorbs_a_passage():
    from loop.core.config import PROJECT_ROOT
    from loop.tasks.squad.data import load_squad
    from student.data import training_texts

    run = compose_run("student=smollm135m")
    passage = load_squad(PROJECT_ROOT / "data/squad/eval200.json")[0]
    texts = training_texts("", passage.title, passage.context, run.student.data)
    model, tok = load_student(run.student)
    before = snapshot(model)
    loss_base = mean_loss(model, tok, texts, run.student.data.max_length)
    with fresh_adapter(model, run.student.lora, seed=0) as adapted:
        result = train(adapted, tok, texts, run.student, seed=0)
        loss_adapted = mean_loss(adapted, tok, texts, run.student.data.max_length)
    assert loss_adapted < 0.5 * loss_base  # the passage is now much less surprising
    assert len(result.losses) == run.student.train.epochs
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_training_never_exceeds_the_models_context(tiny_llama, caplog):
    cfg = cfg_for(tiny_llama, epochs=1)
    model, tok = load_student(cfg)
    model.config.max_position_embeddings = 8  # a model with a tiny context
    with fresh_adapter(model, cfg.lora, seed=0) as adapted:
        result = train(adapted, tok, TEXTS, cfg, seed=0)
    assert result.truncated == 3 and result.tokens == 3 * 8
    assert "exceed max_length=8 tokens" in caplog.text


def test_full_finetuning_learns_and_puts_the_base_back(tiny_llama):
    from student.absorb import absorbing

    cfg = cfg_for(tiny_llama, epochs=5, method="full", lr=1e-3)
    model, tok = load_student(cfg)
    before = snapshot(model)
    with absorbing(model, cfg, seed=0) as adapted:
        loss_before = mean_loss(adapted, tok, TEXTS, 256)
        train(adapted, tok, TEXTS, cfg, seed=0)
        assert mean_loss(adapted, tok, TEXTS, 256) < loss_before
        assert not torch.equal(adapted.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with pytest.raises(ValueError, match="unknown student.train.method 'qlora'"):
        absorbing(model, dataclasses.replace(cfg, train=TrainSettings(method="qlora")), 0)


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_passage_steps_own_keeps_the_passages_steps_and_adds_the_self_edits(tiny_llama,
                                                                           batch_size):
    """student.train.passage_steps=own: the passage (the last text) trains alone in the first
    step of every epoch, exactly the steps the passage alone gets, and the self-edit's units
    train in steps added after it; `shared` (SEAL's rule) mixes it into their batches, so with
    full-batch steps it is one sequence of four in every step."""
    from student.absorb import plan, step_count

    passage = "Crimean War\nThe war was fought from 1853 to 1856 by Russia and an alliance."
    texts = [*TEXTS, passage]
    model, tok = load_student(cfg_for(tiny_llama))
    ids = tok(passage)["input_ids"] + [tok.eos_token_id]
    for mode in ("shared", "own"):
        cfg = cfg_for(tiny_llama, batch_size=batch_size, passage_steps=mode)
        p = plan(model, tok, texts, cfg, seed=3)
        assert len(p.steps) == len(p.lrs) == step_count(len(texts), cfg)
        alone = plan(model, tok, [passage], cfg, seed=3)  # the `passage` row: unchanged
        assert len(alone.steps) == cfg.train.epochs
        assert all(s["input_ids"][0].tolist() == ids for s in alone.steps)
        passage_only = [s for s in p.steps if s["input_ids"][0].tolist() == ids]
        if mode == "own":
            per_epoch = 1 + -(-3 // batch_size)
            assert len(p.steps) == cfg.train.epochs * per_epoch
            assert [i for i, s in enumerate(p.steps) if s["input_ids"][0].tolist() == ids] == [
                e * per_epoch for e in range(cfg.train.epochs)]
        elif batch_size == 64:  # one step per epoch, the passage one sequence of four in it
            assert len(p.steps) == cfg.train.epochs and not passage_only
    with pytest.raises(ValueError, match="passage_steps"):
        plan(model, tok, texts, cfg_for(tiny_llama, passage_steps="mixed"), seed=0)
