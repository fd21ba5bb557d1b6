"""The teacher's M-step (teacher/train.py): the ways it can run train the same adapter.

On a CPU the M-step applies the LM head only where the loss reads it and passes one pair at a
time, accumulating gradients over the batch; TRL's own way (its fused head over every
position, the batch padded into one pass) is what GPUs use. Both must take the same optimiser
steps on the same token-mean loss: a micro-batch normalised by its own tokens instead of the
whole batch's would weight short self-edits up and move the adapter.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import compose_run

# completions of very different lengths: a per-micro-batch mean would weight them differently
PAIRS = [("Passage: The Loire is the longest river in France.", "The Loire is long."),
         ("Passage: Lyon lies where the Rhone meets the Saone.",
          "Lyon lies at the meeting of two rivers, the Rhone and the Saone, in the east of France, "
          "and it is the country's third city."),
         ("Passage: Paris is the capital.", "Paris."),
         ("Passage: Marseille is a port on the Mediterranean.",
          "Marseille is a port city; ships leave it for Corsica and for North Africa every day."),
         ("Passage: Lille is in the north.", "Lille is northern."),
         ("Passage: Nice has a carnival.", "Nice holds a carnival every February, on the sea front.")]
# 6 pairs at batch 4: a full step and a short one (2 pairs) per epoch


def distance(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over every tensor of two adapters."""
    diff = sum(float((a[k] - b[k]).norm()) ** 2 for k in b) ** 0.5
    return diff / sum(float(v.norm()) ** 2 for v in b.values()) ** 0.5


def train(tmp_path, model, tok, run, name, **how):
    from teacher.train import train_adapter

    out = tmp_path / name
    stats = train_adapter(model, tok, PAIRS, run.teacher, out, seed=0, **how)
    return stats, load_file(out / "adapter_model.safetensors")


@pytest.mark.slow
def test_the_cpu_m_step_trains_the_adapter_trl_trains(tiny_qwen2, tmp_path, monkeypatch):
    from teacher import train as train_module
    from teacher.model import load_teacher

    calls = []
    completion_loss = train_module.completion_loss
    monkeypatch.setattr(train_module, "completion_loss",
                        lambda *a, **k: calls.append(1) or completion_loss(*a, **k))
    run = compose_run(f"teacher.path={tiny_qwen2}", "teacher.train.batch_size=4",
                      "teacher.train.epochs=3", "teacher.train.lr=0.01")
    model, tok = load_teacher(run.teacher)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trl, trl_weights = train(tmp_path, model, tok, run, "trl", head="fused", micro_batch=4)
    assert not calls  # TRL's own head
    # name: (how, forward passes per epoch: the 4 + 2 pairs of its two steps in micro-batches)
    for name, (how, passes) in {"padded": (dict(head="completion", micro_batch=4), 1 + 1),
                                "one pair per pass": (dict(head="completion", micro_batch=1),
                                                      4 + 2),
                                "two pairs per pass": (dict(head="completion", micro_batch=2),
                                                       2 + 1),
                                "default": ({}, 4 + 2)}.items():
        calls.clear()
        stats, weights = train(tmp_path, model, tok, run, name.replace(" ", "_"), **how)
        assert len(calls) == 3 * passes, name  # every pass through the completion head
        assert stats.steps == trl.steps == 6, name  # a full step and a short one per epoch
        assert stats.losses == pytest.approx(trl.losses, rel=1e-4), name
        # Adam turns a last-bit gradient difference into up to lr per element on the first
        # step, so the adapters are compared as a whole (measured: 7e-5 apart; a micro-batch
        # mean over its own tokens put them 0.2 apart)
        assert distance(weights, trl_weights) < 1e-3, name
    assert trl.losses[-1] < trl.losses[0]  # it learns
    assert any(v.abs().max() > 0 for k, v in trl_weights.items() if "lora_B" in k)
    for key, value in model.state_dict().items():  # the base is left as it was, bit for bit
        assert torch.equal(value, base[key]), key


def test_a_micro_batch_that_does_not_divide_the_batch_is_refused(tiny_qwen2, tmp_path):
    from teacher.model import load_teacher
    from teacher.train import train_adapter

    run = compose_run(f"teacher.path={tiny_qwen2}", "teacher.train.batch_size=4")
    model, tok = load_teacher(run.teacher)
    modules = [name for name, _ in model.named_modules()]
    with pytest.raises(ValueError, match="micro_batch=3 must divide the 4 pairs"):
        train_adapter(model, tok, PAIRS, run.teacher, tmp_path / "a", seed=0, micro_batch=3)
    with pytest.raises(ValueError, match="head='fast'"):
        train_adapter(model, tok, PAIRS, run.teacher, tmp_path / "a", seed=0, head="fast")
    assert [name for name, _ in model.named_modules()] == modules  # refused before any LoRA
