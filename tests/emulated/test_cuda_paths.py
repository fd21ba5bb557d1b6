"""The GPU code paths run on a CPU machine with CUDA emulated (tests/emulated/cuda.py: the
`meta` device stands for CUDA, a CPU tensor meeting it raises as on CUDA) and in bfloat16, as
the GPU presets run: the student's batched and one-at-a-time training, scoring and answering,
the teacher's sampling and M-step loss, ARC's test-time training, adapters on and off.

Values are not checked here (a meta tensor has none); the CPU tests check them in float32. What
is checked is that each path runs to its end on the device with nothing left on the CPU, in the
GPU's dtype, taking the branches a GPU takes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from student import batched as many
from student.model import load_student
from tests.conftest import compose_run
from tests.emulated.cuda import DEVICE, DeviceMismatch, EmulatedCuda, generator
from tests.student.test_batched import QA, TEXTS

# a saved adapter loaded onto the meta model copies nothing (placement is what is checked here)
pytestmark = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")


@pytest.fixture
def emulated(monkeypatch):
    """CUDA emulated: random generators built for the device are the emulator's stand-ins."""
    real = torch.Generator

    def make(device="cpu"):
        return generator(device) if torch.device(device).type == DEVICE.type else real(device)

    monkeypatch.setattr(torch, "Generator", make)
    mode = EmulatedCuda()
    with mode:
        yield mode


def on_device(run_student, path: str):
    """The student of `path` as load_student puts it on the (emulated) GPU: bf16 by `auto`."""
    cfg = dataclasses.replace(run_student, path=path, name="tiny")
    model, tok = load_student(cfg, device=DEVICE.type)
    assert next(model.parameters()).dtype == torch.bfloat16  # dtype=auto off the CPU
    return model, tok


def test_the_emulator_raises_where_cuda_raises_and_passes_what_cuda_accepts():
    x = torch.ones(4, 3, device=DEVICE)
    with EmulatedCuda():
        with pytest.raises(DeviceMismatch):
            x + torch.ones(4, 3)  # a CPU tensor beside a device one
        with pytest.raises(DeviceMismatch):  # CPU token ids into a device embedding
            torch.nn.functional.embedding(torch.tensor([0, 1]), x)
        with pytest.raises(DeviceMismatch):  # a CPU generator drawing on the device
            torch.multinomial(x[0], 1, generator=torch.Generator())
        x * torch.tensor(2.0)  # a 0-dim CPU scalar: CUDA accepts it
        x[torch.tensor([0, 2])]  # CPU indices: CUDA moves them itself
        assert x.sum().item() == 0 and x.tolist() == [[0.0] * 3] * 4  # reads give zeros
        assert bool((x > 1).any())  # and truth values are True (a generate loop ends)
        torch.multinomial(x[0], 1, generator=generator(DEVICE))


@pytest.mark.parametrize("subset", [False, True], ids=["all adapters", "a subset"])
@pytest.mark.parametrize("clip", [None, 1.0], ids=["unclipped", "clipped"])
def test_the_stacked_optimiser_steps_on_the_device(subset, clip):
    """It failed before this tier: step counts and bias corrections on the CPU divided CUDA
    parameters ("found at least two devices, cuda:0 and cpu")."""
    p = torch.zeros(4, 8, 16, device=DEVICE, dtype=torch.float32, requires_grad=True)
    p.grad = torch.ones_like(p)
    adapters = [1, 3] if subset else [0, 1, 2, 3]
    with EmulatedCuda():
        opt = many.StackedAdamW([p])
        opt.step(adapters, [1e-3] * len(adapters), clip)
        opt.step(adapters, [1e-3] * len(adapters), clip)
    assert opt.t.device == DEVICE and opt.m[0].device == DEVICE


@pytest.mark.parametrize("batched, generate", [("true", True), ("true", False),
                                               ("false", True), ("auto", False)])
def test_the_inner_loop_trains_scores_and_answers_on_the_device(tiny_llama, emulated, batched,
                                                                generate):
    """absorb_and_score_many on the GPU's branches: batched=auto trains together (as on any
    GPU), one pass per step (pass_tokens unset), adapters of different lengths leaving the
    batch (a subset steps), gradients clipped at SEAL's 1.0; or one at a time with PEFT."""
    from loop.tasks.squad.absorb import absorb_and_score_many, train_together
    from loop.tasks.squad.data import Passage, Question

    run = compose_run(f"student.path={tiny_llama}", "student.name=tiny", "student.train.epochs=2",
                      "student.eval.max_new_tokens=3", f"student.train.batched={batched}")
    model, tok = on_device(run.student, tiny_llama)
    assert train_together(run, model.device) == (batched != "false")
    assert many.pass_tokens(run.student.train.pass_tokens, model.device) == 0
    assert run.student.train.max_grad_norm == 1.0
    passages = [Passage(f"p{i}", "Crimean War", " ".join(TEXTS[: i + 1]),
                        [Question(q, a) for q, a in QA[: 3 - i]]) for i in range(3)]
    jobs = [(p, TEXTS[: 3 - i], 10 + i) for i, p in enumerate(passages)]
    out = absorb_and_score_many(model, tok, jobs, run, None, generate=generate)
    assert [len(scores) for scores, _ in out] == [3, 2, 1]
    assert "aten.mm" in emulated.ops or "aten.bmm" in emulated.ops  # it ran on the device
    assert all(p.device == DEVICE for p in model.parameters())


def test_arc_test_time_training_trains_and_answers_on_the_device(tiny_llama, emulated):
    """ARC always trains batched: several self-edits of one task in shared passes, on the
    GPU's branch (one pass per step), then answered and scored per test input."""
    from student.arc.selfedit import TTTConfig, to_json
    from student.arc.ttt import absorb_and_solve_many
    from student.config import ArcSettings
    from tests.loop.test_arc import DEMOS

    run = compose_run(f"student.path={tiny_llama}", "student.name=tiny", "task=arc")
    model, tok = on_device(run.student, tiny_llama)
    settings = ArcSettings(leave_out=[1], batch_size=2, warmup_steps=1, max_steps=48)
    tests = [([[4, 0]], [[0, 4]])]
    edits = [to_json(TTTConfig(("basic",), "output", 5e-3, 2)),
             to_json(TTTConfig(("basic", "size"), "all", 1e-3, 1))]
    out = absorb_and_solve_many(model, tok, DEMOS, tests, edits, settings, True, [0, 1],
                                max_adapters=2)
    assert [a.steps > 0 for a in out] == [True, True]


def saved_adapter(path: str, folder, r: int = 4):
    """A teacher LoRA saved as PEFT saves it (CPU weights), as a finished round leaves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path)
    get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                                    task_type="CAUSAL_LM")).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("adapter", [False, True], ids=["base", "with a round's adapter"])
def test_the_teacher_samples_on_the_device_with_its_own_generators(tiny_qwen2, tmp_path,
                                                                   adapter, emulated):
    """The sampling step at the GPU's dtype: temperature, top-p, one seeded generator per row
    on the model's device (a CPU generator there fails on CUDA), the round's adapter loaded
    onto the device model and unloaded after (bf16: sampled through PEFT's layers, unmerged)."""
    from teacher.config import SamplingSettings
    from teacher.generate import TransformersGenerator
    from teacher.model import load_teacher

    run = compose_run(f"teacher.path={tiny_qwen2}", "teacher.name=tiny")
    model, tok = load_teacher(run.teacher, device=DEVICE.type)
    assert next(model.parameters()).dtype == torch.bfloat16
    gen = TransformersGenerator(model, tok, instruct=True, settings=SamplingSettings(
        temperature=0.7, top_p=0.9, max_new_tokens=4, batch_size=2))
    if adapter:
        gen.use_adapter(saved_adapter(tiny_qwen2, tmp_path / "adapter"))
    prompts = [f"Write the implications of: {t}" for t in TEXTS[:2]]
    samples = gen.sample(prompts, [3, 4])
    assert len(samples) == 2 and "aten.multinomial" in emulated.ops
    gen.use_adapter(None)
    assert gen.model is gen.base and not any("lora_" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_m_step_loss_runs_forward_and_backward_on_the_device(tiny_qwen2, checkpointing,
                                                                 emulated):
    """Our completion head (the loss on the self-edit's positions only) on a LoRA-wrapped bf16
    teacher, with activation checkpointing as the GPU default turns it on."""
    from peft import LoraConfig, get_peft_model

    from teacher.model import load_teacher
    from teacher.train import checkpointing as resolve
    from teacher.train import completion_loss

    assert resolve("auto", gpu=True) and not resolve("auto", gpu=False)
    run = compose_run(f"teacher.path={tiny_qwen2}", "teacher.name=tiny")
    model, _ = load_teacher(run.teacher, device=DEVICE.type)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    if checkpointing:
        peft_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    ids = torch.randint(0, 100, (2, 12))
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt is not scored
    inputs = {"input_ids": ids.to(DEVICE), "attention_mask": torch.ones_like(ids).to(DEVICE),
              "labels": labels.to(DEVICE)}
    loss, stats = completion_loss(peft_model, inputs)
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.device == DEVICE for g in grads)
    assert loss.dtype == torch.float32  # the log-softmax in float32 over bf16 logits
