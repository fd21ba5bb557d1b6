"""Model loading through the role functions: tiny random models (fast), bundled models (slow)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from student.config import StudentConfig
from student.evaluate import answer
from student.model import load_student
from teacher.config import SamplingSettings, TeacherConfig
from teacher.generate import SeededSampler, sample
from teacher.model import load_teacher
from tests.conftest import ARCHITECTURE, compose_run


def tiny_student(path: str) -> StudentConfig:
    return StudentConfig(name="tiny", hub_id="unused/tiny", path=path, dtype="float32")


def test_student_base_is_frozen_and_teacher_is_in_eval_mode(tiny_llama):
    student, _ = load_student(tiny_student(tiny_llama))
    assert not any(p.requires_grad for p in student.parameters())
    teacher, tok = load_teacher(TeacherConfig(name="tiny", hub_id="x", path=tiny_llama))
    assert not teacher.training and tok.padding_side == "left"
    assert next(teacher.parameters()).dtype == torch.float32  # "auto" on a CPU


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("instruct", [False, True])
def test_batched_answers_equal_one_at_a_time(fixture, instruct, request):
    """Left padding must not change greedy answers: the batch is only a speed-up."""
    model, tok = load_student(tiny_student(request.getfixturevalue(fixture)))
    prompts = ["Q: Who wrote Hamlet?\nA:", "Question: Topic: Crimean War\nWhen did the war end, and "
               "which treaty ended it?\nAnswer:\n", "Hi"]
    batched = answer(model, tok, prompts, instruct=instruct, max_new_tokens=8)
    alone = [answer(model, tok, [p], instruct=instruct, max_new_tokens=8)[0] for p in prompts]
    assert batched == alone
    assert any(batched)  # the tiny model says something


SHORT = SamplingSettings(max_new_tokens=12)


def test_teacher_sampling_is_seeded_per_sample(tiny_qwen2):
    model, tok = load_teacher(TeacherConfig(name="tiny", hub_id="x", path=tiny_qwen2,
                                            dtype="float32"))
    prompts = ["Passage: a cat sat.\nImplications:\n"] * 2
    a = sample(model, tok, prompts, [1, 2], instruct=False, settings=SHORT)
    assert a == sample(model, tok, prompts, [1, 2], instruct=False, settings=SHORT)
    assert a[0] != a[1]  # two seeds, two different samples of one prompt
    assert a != sample(model, tok, prompts, [3, 4], instruct=False, settings=SHORT)


def test_a_sample_does_not_depend_on_its_batch(tiny_qwen2):
    """What a resumed run relies on: sampling only the missing prompts gives the same texts."""
    model, tok = load_teacher(TeacherConfig(name="tiny", hub_id="x", path=tiny_qwen2,
                                            dtype="float32"))
    prompts = ["Passage: a cat sat.\nImplications:\n", "Passage: the war ended in 1856 with a "
               "treaty signed in Paris.\nImplications:\n", "Hi"]
    # Each sample's draws come from its own seed, whatever else is in the batch. Padding changes
    # the matmul shapes, so logits differ in the last bits from one CPU's kernels to another's;
    # a random tiny model at temperature 1 spreads its probability over 151k tokens, where such
    # a bit can move a draw across a token boundary. At temperature 0.3 its distributions have
    # room between boundaries, and the property under test, the per-sample seed, is what decides.
    peaked = dataclasses.replace(SHORT, temperature=0.3)
    together = sample(model, tok, prompts, [7, 8, 9], instruct=True, settings=peaked)
    alone = [sample(model, tok, [p], [s], instruct=True, settings=peaked)[0]
             for p, s in zip(prompts, [7, 8, 9], strict=True)]
    assert together == alone
    assert len(set(together)) == 3 and all(s.text for s in together)


def test_sampling_with_the_adapter_merged_leaves_the_base_bit_identical(tiny_qwen2, tmp_path):
    """teacher.sampling.merged: the adapter's update is added into the base weights for the
    call only. The base comes back bit for bit, the merged model computes what base + adapter
    computes (float order aside), and greedy samples are the same texts either way."""
    from peft import LoraConfig, get_peft_model

    from teacher.generate import TransformersGenerator

    model, tok = load_teacher(TeacherConfig(name="tiny", hub_id="x", path=tiny_qwen2,
                                            dtype="float32"))
    torch.manual_seed(0)  # an adapter with a real update: B random too, not PEFT's zeros
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft = get_peft_model(model, config)
    peft.save_pretrained(str(tmp_path / "adapter"))
    model = peft.unload()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    greedy = dataclasses.replace(SHORT, temperature=0.0)
    prompts = ["Passage: a cat sat.\nImplications:\n", "Hi"]
    texts = {}
    for merged in (True, False):
        gen = TransformersGenerator(model, tok, instruct=False,
                                    settings=dataclasses.replace(greedy, merged=merged))
        gen.use_adapter(tmp_path / "adapter")
        batch = tok(prompts, return_tensors="pt", padding=True).to(model.device)
        with gen.merged() as m, torch.no_grad():
            logits = m(**batch).logits
            changed = [n for n, v in m.base_model.model.state_dict().items()
                       if ".base_layer." in n and not torch.equal(
                           v, before[n.replace(".base_layer", "")])]
            assert bool(changed) == merged  # merged: the update is in the weights
        texts[merged] = (gen.sample(prompts, [1, 2]), logits)
        gen.use_adapter(None)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert texts[True][0] == texts[False][0]
    torch.testing.assert_close(texts[True][1], texts[False][1], atol=1e-4, rtol=1e-4)
    base_logits = model(**tok(prompts, return_tensors="pt", padding=True).to(model.device)).logits
    assert not torch.allclose(base_logits, texts[False][1], atol=1e-3)  # the adapter matters


@pytest.mark.parametrize("kind", ["dora", "bfloat16"])
def test_an_adapter_that_cannot_merge_exactly_samples_through_peft(tiny_qwen2, tmp_path, kind):
    """DoRA's magnitudes are not in get_delta_weight, and a bf16 sum would round a small update
    away: those are sampled through PEFT's layers, the base untouched."""
    from peft import LoraConfig, get_peft_model

    from teacher.generate import TransformersGenerator

    model, tok = load_teacher(TeacherConfig(name="tiny", hub_id="x", path=tiny_qwen2,
                                            dtype="float32"))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                            use_dora=kind == "dora", init_lora_weights=False,
                                            task_type="CAUSAL_LM"))
    peft.save_pretrained(str(tmp_path / "adapter"))
    model = peft.unload()
    if kind == "bfloat16":
        model = model.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = TransformersGenerator(model, tok, instruct=False, settings=SHORT)
    gen.use_adapter(tmp_path / "adapter")
    assert not gen.mergeable()
    with gen.merged() as m:
        assert m is gen.model
        assert all(torch.equal(v, before[n.replace(".base_layer", "")])
                   for n, v in m.base_model.model.state_dict().items() if ".base_layer." in n)
    assert gen.sample(["Hi"], [1])[0].text is not None


def test_top_p_keeps_only_the_nucleus():
    """Hand-computed: probabilities .5/.3/.15/.05; top_p=.7 keeps the first two tokens only."""
    scores = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    drawn = {int(SeededSampler([s], 1.0, 0.7, "cpu")(None, scores).argmax()) for s in range(200)}
    assert drawn == {1, 3}
    assert {int(SeededSampler([s], 1.0, 1.0, "cpu")(None, scores).argmax())
            for s in range(200)} == {0, 1, 2, 3}


QUESTION = "What is the capital of France? Answer in one word."


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(ARCHITECTURE))
def test_bundled_models_load_in_either_role_and_know_paris(preset):
    run = compose_run(f"teacher={preset}", f"student={preset}")
    student, s_tok = load_student(run.student)
    assert type(student).__name__ == ARCHITECTURE[preset]
    assert "paris" in answer(student, s_tok, [QUESTION], instruct=True, max_new_tokens=16)[0].lower()
    del student
    teacher, t_tok = load_teacher(run.teacher)
    assert type(teacher).__name__ == ARCHITECTURE[preset]
    greedy = sample(teacher, t_tok, [QUESTION], [0], instruct=True,
                    settings=SamplingSettings(temperature=0, max_new_tokens=16))
    assert "paris" in greedy[0].text.lower()
    assert not greedy[0].cut  # the model ended its answer; at 1 token it is cut
    assert sample(teacher, t_tok, [QUESTION], [0], instruct=True,
                  settings=SamplingSettings(temperature=0, max_new_tokens=1))[0].cut


@pytest.mark.slow
def test_a_base_preset_without_chat_template_still_answers():
    run = compose_run("student=smollm135m")
    cfg = dataclasses.replace(run.student, instruct=False)
    model, tok = load_student(cfg)
    [a] = answer(model, tok, ["The capital of France is the city of"], instruct=False,
                 max_new_tokens=8)
    assert "paris" in a.lower()
