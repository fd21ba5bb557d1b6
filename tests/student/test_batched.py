"""Many adapters at once: each equals the same adapter trained alone, the base never changes,
the adapters' scores equal one-at-a-time scores, and each saves as a standard PEFT adapter."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from student import batched as many
from student.absorb import fresh_adapter, plan, train
from student.evaluate import score_questions, score_questions_many
from student.model import load_student
from tests.student.test_absorb import TEXTS, cfg_for, snapshot

# Different data, learning rates, schedules and step counts per adapter.
JOBS = [  # (texts, seed, lr, epochs)
    (TEXTS, 0, 1e-3, 3),
    (TEXTS[:1] + ["Crimean War\nA short line."], 1, 3e-3, 2),
    (["Photosynthesis\nPlants turn light, water and carbon dioxide into sugar.", TEXTS[2]],
     2, 5e-4, 4),
]
QA = [("Who saw an opportunity to expand?", "King Otto of Greece"),
      ("What did the British and French blockade?", "Piraeus"),
      ("Did Greece declare war?", "no")]
# float32 on CPU; the batched path sums in another order (bmm vs PEFT's two Linear layers,
# padded rows): after a few Adam steps the adapters agree to ~1e-6, far below one step's size
# (lr 1e-3). Adam normalises each gradient element, so an element whose gradient is ~0 moves
# by up to ±lr on float noise alone: on an Intel Xeon one A element of the third adapter
# differed by 1.8e-4 (lr 5e-4), on an AMD EPYC none by more than 2.4e-6. So: almost every
# element within ATOL, and none further than the adapter's summed learning rates.
ATOL = 2e-5
NOISY_SHARE = 0.01


def job_cfg(path, lr, epochs, schedule="linear"):
    return cfg_for(path, lr=lr, epochs=epochs, schedule=schedule)


def alone(model, tok, texts, cfg, seed) -> tuple[dict, list[float]]:
    """The reference: one PEFT adapter, torch AdamW (student.absorb.train)."""
    with fresh_adapter(model, cfg.lora, seed) as adapted:
        result = train(adapted, tok, texts, cfg, seed)
        weights = {n.replace(".default", ""): p.detach().clone()
                   for n, p in adapted.named_parameters() if "lora_" in n}
    return weights, result.losses


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_each_adapter_of_a_batch_equals_the_adapter_trained_alone(arch, request):
    path = request.getfixturevalue(arch)
    cfgs = [job_cfg(path, lr, ep) for _, _, lr, ep in JOBS]
    model, tok = load_student(cfgs[0])
    before = snapshot(model)
    jobs = []
    for (texts, seed, _, _), cfg in zip(JOBS, cfgs, strict=True):
        p = plan(model, tok, texts, cfg, seed, packing=True)
        jobs.append(many.Job(seed, p.steps, p.lrs))
    assert len({len(j.steps) for j in jobs}) == 3  # adapters finish at different steps
    norms = []  # each adapter's gradient norm at its first step, before clipping
    clip = many.StackedAdamW.clip

    def spy(self, idx, max_norm):
        if not norms:
            norms.extend(torch.stack([p.grad[idx].flatten(1).norm(dim=1) for p in self.params],
                                     dim=1).norm(dim=1).tolist())
        return clip(self, idx, max_norm)

    many.StackedAdamW.clip = spy
    try:
        with many.Adapters(model, cfgs[0].lora, [s for _, s, _, _ in JOBS]) as adapters:
            many.train(model, adapters, jobs, tok.pad_token_id,
                       max_grad_norm=cfgs[0].train.max_grad_norm)
            batched = [adapters.state_dict(i) for i in range(len(JOBS))]
    finally:
        many.StackedAdamW.clip = clip
    # clipping at SEAL's norm 1.0 took effect: the first steps' gradients are larger
    assert cfgs[0].train.max_grad_norm == 1.0
    assert min(norms) > 1.0, norms
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base is bit-identical
    assert not any(p.requires_grad for p in model.parameters())
    for i, ((texts, seed, _, _), cfg) in enumerate(zip(JOBS, cfgs, strict=True)):
        weights, losses = alone(model, tok, texts, cfg, seed)
        assert len(jobs[i].losses) == len(losses)
        assert jobs[i].losses == pytest.approx(losses, abs=1e-5)
        assert batched[i].keys() == weights.keys()
        moved = 0
        for name, w in weights.items():
            diff = (batched[i][name] - w).abs()
            assert diff.max() <= sum(jobs[i].lrs), (i, name)  # no more than Adam's steps
            assert (diff > ATOL).float().mean() <= NOISY_SHARE, (i, name)
            moved += int("lora_B" in name and torch.count_nonzero(w) > 0)
        assert moved > 0  # the comparison is of trained adapters, not of zeros


def test_finished_adapters_stop_changing(tiny_llama):
    cfg = job_cfg(tiny_llama, 1e-3, 1)
    model, tok = load_student(cfg)
    short = plan(model, tok, TEXTS, cfg, 0, packing=True)
    long = plan(model, tok, TEXTS, dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, epochs=4)), 1, packing=True)
    jobs = [many.Job(0, short.steps, short.lrs), many.Job(1, long.steps, long.lrs)]
    seen = []
    with many.Adapters(model, cfg.lora, [0, 1]) as adapters:
        def after_step(s):
            seen.append([adapters.state_dict(i) for i in range(2)])
        many.train(model, adapters, jobs, tok.pad_token_id, progress=after_step)
    n = len(short.steps)
    assert len(seen) == len(long.steps) > n
    for s in range(n, len(seen)):  # adapter 0 is done: frozen; adapter 1 still moves
        assert all(torch.equal(seen[s][0][k], seen[n - 1][0][k]) for k in seen[n - 1][0])
        assert any(not torch.equal(seen[s][1][k], seen[s - 1][1][k]) for k in seen[s][1])


@pytest.mark.parametrize("generate", [False, True])
def test_batched_scores_equal_one_adapter_at_a_time(tiny_llama, generate):
    cfg = job_cfg(tiny_llama, 3e-3, 3)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_new_tokens=8,
                                                            batch_size=5))
    model, tok = load_student(cfg)
    items = [("Crimean War", QA), ("Crimean War", QA[:1]), ("Photosynthesis", QA[1:])]
    seeds = [3, 4, 5]
    jobs = [many.Job(s, *(lambda p: (p.steps, p.lrs))(plan(model, tok, TEXTS, cfg, s,
                                                           packing=True)))
            for s in seeds]
    with many.Adapters(model, cfg.lora, seeds) as adapters:
        many.train(model, adapters, jobs, tok.pad_token_id)
        # batch_size 5: at most one or two adapters' questions per call; then all in one call
        got = score_questions_many(model, tok, adapters, items, cfg, generate=generate)
        wide = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=64))
        got_wide = score_questions_many(model, tok, adapters, items, wide, generate=generate)
        states = [adapters.state_dict(i) for i in range(3)]
    for i, (title, qa) in enumerate(items):
        with fresh_adapter(model, cfg.lora, seeds[i]) as adapted:
            adapted.load_state_dict({k.replace("lora_A.", "lora_A.default.")
                                     .replace("lora_B.", "lora_B.default."): v
                                     for k, v in states[i].items()}, strict=False)
            want = score_questions(adapted, tok, title, qa, cfg, generate=generate)
        for result in (got[i], got_wide[i]):
            assert len(result) == len(want)
            for g, w in zip(result, want, strict=True):
                assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
                assert g.prediction == w.prediction


def test_saved_adapter_loads_in_peft_with_the_same_outputs(tiny_qwen2, tmp_path):
    from peft import PeftModel

    cfg = job_cfg(tiny_qwen2, 3e-3, 3)
    model, tok = load_student(cfg)
    p = plan(model, tok, TEXTS, cfg, 7, packing=True)
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with many.Adapters(model, cfg.lora, [7]) as adapters:
        many.train(model, adapters, [many.Job(7, p.steps, p.lrs)], tok.pad_token_id)
        adapters.save(0, tmp_path / "adapter")
        adapters.route([0])
        with torch.inference_mode():
            ours = model(input_ids=ids).logits
    with torch.inference_mode():
        base = model(input_ids=ids).logits
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not list((tmp_path / "adapter").glob("*.tmp"))
    loaded = PeftModel.from_pretrained(model, tmp_path / "adapter")
    with torch.inference_mode():
        theirs = loaded(input_ids=ids).logits
    loaded.unload()
    assert not torch.allclose(ours, base, atol=1e-4)  # the adapter changes the outputs
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_targets_that_match_nothing_are_a_clear_error(tiny_llama):
    cfg = job_cfg(tiny_llama, 1e-3, 1)
    model, _ = load_student(cfg)
    lora = dataclasses.replace(cfg.lora, targets=["no_such_proj"])
    with pytest.raises(ValueError, match="no_such_proj"), many.Adapters(model, lora, [0]):
        pass


@pytest.mark.parametrize("metric, default", [("answer_logprob", "false"), ("f1", "alone")])
def test_bench_compares_the_paths_and_ends_with_the_contract_line(tiny_llama, capsys, metric,
                                                                  default):
    """On a CPU the default path is one at a time when answers are only scored, and adapters
    trained alone but answered together when answers are generated: a third path then."""
    import re

    from loop.bench import main

    main(["--k", "3", "--repeats", "2", f"student.path={tiny_llama}", "student.name=tiny",
          "student.train.epochs=2", f"reward.metric={metric}", "student.eval.max_new_tokens=4"])
    lines = capsys.readouterr().out.strip().splitlines()
    default = "true" if torch.cuda.is_available() else default  # auto is true on a GPU
    paths = ["one at a time", "batched"] + (["default (auto)"] if default == "alone" else [])
    for path in ("one at a time", "batched", "default (auto)"):
        assert sum(f"{path}:" in x and "repeat" in x for x in lines) == 2 * (path in paths)
    for path in paths:
        row = next(x for x in lines if x.startswith(path) and "repeat" not in x
                   and "/" not in x)
        seconds, _, train, train_frac, answer, answer_frac, _ = map(float, row.split()[-7:])
        assert 0 < train + answer <= seconds + 0.2  # parts of the path's time (medians, rounded)
        assert train_frac > 0 and answer_frac >= 0  # timed fractions: their form, not size
    diff = next(x for x in lines if x.startswith("largest per-question"))
    assert float(diff.split()[-1]) < 1e-4  # the paths score the same
    proxy = next(x for x in lines if x.startswith("the in-context proxy"))
    assert float(re.search(r"absorbing costs ([\d.]+)x", proxy).group(1)) > 0  # a timed ratio
    last = re.fullmatch(rf"speedup=([\d.]+) default={default} default_per_min=([\d.]+) "
                        r"batched_per_min=([\d.]+) sequential_per_min=([\d.]+)"
                        r" peak_fraction=([\d.]+)", lines[-1])
    assert last, lines[-1]
    speedup, default_rate, batched, sequential, _ = map(float, last.groups())
    assert default_rate > 0 and batched > 0 and sequential > 0
    assert speedup == pytest.approx(default_rate / sequential, rel=0.02)
    if default == "false":
        assert speedup == 1.0


@pytest.mark.parametrize("mode, pass_tokens", [("true", 0), ("true", 40), ("auto", 0)])
def test_the_loop_scores_the_same_with_either_path(tiny_llama, mode, pass_tokens):
    """What the inner loop records: absorb_and_score_many, batched or not, gives the same
    scores; passes of a few rows (gradients accumulated) give the same as one pass; auto on a
    CPU (adapters trained alone with PEFT, answered together) trains exactly as one at a time."""
    from loop.tasks.squad.absorb import absorb_and_score_many, train_together
    from loop.tasks.squad.data import Passage, Question
    from tests.conftest import compose_run

    run = compose_run(f"student.path={tiny_llama}", "student.name=tiny", "student.train.epochs=3",
                      "student.eval.max_new_tokens=6", f"student.train.pass_tokens={pass_tokens}",
                      f"student.train.batched={mode}")
    model, tok = load_student(run.student)
    passages = [Passage(f"p{i}", "Crimean War", " ".join(TEXTS[: i + 1]),
                        [Question(q, a) for q, a in QA[: 3 - i]]) for i in range(3)]
    jobs = [(p, TEXTS[: 3 - i], 10 + i) for i, p in enumerate(passages)]
    jobs.append((passages[0], [], 13))  # nothing to absorb: the base is scored
    sequential = dataclasses.replace(run, student=dataclasses.replace(
        run.student, train=dataclasses.replace(run.student.train, batched=False)))
    got = absorb_and_score_many(model, tok, jobs, run, None, generate=True)
    want = absorb_and_score_many(model, tok, jobs, sequential, None, generate=True)
    assert train_together(run, model.device) == (mode == "true" or model.device.type == "cuda")
    for (gs, gl), (ws, wl) in zip(got, want, strict=True):
        assert gl == pytest.approx(wl, abs=1e-5)
        if mode == "auto" and model.device.type == "cpu":  # the same PEFT training, step for step
            assert gl == wl
        assert [s["prediction"] for s in gs] == [s["prediction"] for s in ws]
        assert [s["logprob"] for s in gs] == pytest.approx([s["logprob"] for s in ws], abs=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["student.train.no_such_key=1"], "no_such_key"),
    (["--sample", "{bad}"], "is not a self-edit sample"),
    (["--k", "9"], "holds 8 self-edits; --k 9"),
    (["--mstep", "loop.contexts_per_round=9"], "loop.contexts_per_round=9 needs as many"),
    (["--mstep", "--sampling"], "benches: give one"),
    (["--arc", "--sampling"], "benches: give one"),
    (["--arc", "task=squad"], "task=squad is not an ARC task"),
])
def test_bench_input_errors_are_one_message_and_exit_2(argv, message, tmp_path, capsys):
    from loop.bench import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"self_edits": 3}')
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{bad}", str(bad)) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("batched", ["true", "false", "auto"])
def test_degenerate_self_edits_are_scored_not_a_crash(tiny_llama, batched):
    """Teacher output is data: an empty self-edit, one token repeated past the student's
    context, blank lines and chat-template markup are each absorbed (what fits) and scored."""
    import math

    from loop.tasks.squad.absorb import absorb_and_score_many
    from loop.tasks.squad.data import Passage, Question
    from student.data import training_texts
    from tests.conftest import compose_run

    run = compose_run(f"student.path={tiny_llama}", "student.name=tiny", "student.train.epochs=2",
                      "student.eval.max_new_tokens=4", f"student.train.batched={batched}",
                      "student.data.max_length=64")
    model, tok = load_student(run.student)
    passage = Passage("p", "Crimean War", TEXTS[0], [Question(q, a) for q, a in QA[:2]])
    edits = ["", "the " * 5000, "\n\n\n   \n", "<|im_start|>system\n<|im_end|>" * 20, "{}" * 300]
    jobs = [(passage, training_texts(e, passage.title, passage.context, run.student.data), i)
            for i, e in enumerate(edits)]
    results = absorb_and_score_many(model, tok, jobs, run, None, generate=True)
    assert len(results) == len(edits)
    for scores, losses in results:
        assert len(scores) == 2 and all(math.isfinite(s["logprob"]) for s in scores)
        assert all(math.isfinite(x) for x in losses)


def test_each_adapter_is_clipped_as_torch_clips_it_alone():
    """StackedAdamW.clip on three stacked adapters equals `clip_grad_norm_` on each one's own
    tensors (norms 0.5, 3 and 12 by construction: one left alone, two scaled to 1)."""
    torch.manual_seed(0)
    shapes = [(3, 4, 5), (3, 6)]
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    for i, target in enumerate([0.5, 3.0, 12.0]):
        norm = torch.stack([g[i].norm() for g in grads]).norm()
        for g in grads:
            g[i] *= target / norm
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    many.StackedAdamW(params).clip(torch.tensor([0, 1, 2]), 1.0)
    for i in range(3):
        alone = [torch.zeros(s[1:], requires_grad=True) for s in shapes]
        for a, g in zip(alone, grads, strict=True):
            a.grad = g[i].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for a, p in zip(alone, params, strict=True):
            assert torch.allclose(p.grad[i], a.grad, atol=1e-7)
    assert torch.stack([p.grad[0].norm() for p in params]).norm() == pytest.approx(0.5)
    assert torch.stack([p.grad[2].norm() for p in params]).norm() == pytest.approx(1.0)


@pytest.mark.parametrize("setting, device, together", [
    ("auto", "cpu", False), ("auto", "cuda:0", True), ("true", "cpu", True), (True, "cpu", True),
])
def test_auto_trains_adapters_together_on_a_gpu_only(setting, device, together):
    from loop.core.checks import batched
    from loop.tasks.squad.absorb import train_together
    from tests.conftest import compose_run

    run = compose_run()
    run = dataclasses.replace(run, student=dataclasses.replace(
        run.student, train=dataclasses.replace(run.student.train, batched=setting)))
    assert batched(run)  # answered together either way
    assert train_together(run, device) == together


def test_a_batch_answers_with_the_adapters_it_is_given(tiny_llama):
    """Adapters trained alone (train_alone, PEFT) go into a batch's slots, weights unchanged."""
    cfg = job_cfg(tiny_llama, 1e-3, 2)
    model, tok = load_student(cfg)
    from student.absorb import train_alone

    weights, result = train_alone(model, tok, TEXTS, cfg, 5)
    fresh = {name: (a, torch.zeros_like(b)) for name, (a, b) in weights.items()}
    with many.Adapters(model, cfg.lora, [7, 5], [fresh, weights]) as adapters:
        got = adapters.state_dict(1)
        first = adapters.state_dict(0)
    assert all(not v.any() for k, v in first.items() if "lora_B" in k)
    for name, (a, b) in weights.items():
        assert torch.equal(got[f"base_model.model.{name}.lora_A.weight"], a)
        assert torch.equal(got[f"base_model.model.{name}.lora_B.weight"], b)
    assert any(b.abs().sum() > 0 for _, b in weights.values())  # B trained away from zero


@pytest.mark.parametrize("given, spelled", [("false", "false"), ("True", "true"), ("auto", "auto")])
def test_batched_has_one_spelling_in_the_run_config(given, spelled):
    """A boolean on the command line reads "True" in a string setting: run.json and MLflow
    record one spelling each."""
    from tests.conftest import compose_run

    assert compose_run(f"student.train.batched={given}").student.train.batched == spelled


def test_bench_times_merged_sampling_against_peft_layers(tiny_qwen2, capsys):
    import re

    from loop.bench import main

    main(["--sampling", "--k", "2", "--repeats", "2", f"teacher.path={tiny_qwen2}",
          "teacher.name=tiny", "teacher.sampling.max_new_tokens=6", "teacher.train.lora.r=4",
          "teacher.train.lora.alpha=8"])
    lines = capsys.readouterr().out.strip().splitlines()
    for way in ("base alone", "adapter merged", "adapter unmerged"):
        assert sum(f"{way}:" in x and "repeat" in x for x in lines) == 2
        assert next(x for x in lines if x.startswith(way) and "repeat" not in x)
    last = re.fullmatch(r"sampling_speedup=([\d.]+) step_speedup=([\d.]+) merged_per_min="
                        r"([\d.]+) unmerged_per_min=([\d.]+) base_per_min=([\d.]+)", lines[-1])
    assert last, lines[-1]
    speedup, _, merged, unmerged, _ = map(float, last.groups())
    assert speedup == pytest.approx(merged / unmerged, rel=0.02)


@pytest.mark.slow
def test_bench_times_the_m_step_against_trls_way(tiny_qwen2, capsys):
    """`--mstep`: TRL's fused head on padded batches, the completion head on the same batches,
    and the default (completion head, one pair per pass), the same losses, the contract line."""
    import re

    from loop.bench import main
    from loop.bench.teacher import MSTEP_PATHS

    main(["--mstep", "--repeats", "2", f"teacher.path={tiny_qwen2}", "teacher.name=tiny",
          "loop.contexts_per_round=4", "teacher.train.batch_size=2", "teacher.train.epochs=1",
          "teacher.train.lora.r=4", "teacher.train.lora.alpha=8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "2 optimiser steps" in lines[0]
    rows = {}
    for _, _, name in MSTEP_PATHS.values():
        assert sum(f"{name}:" in x and "repeat" in x for x in lines) == 2
        row = next(x for x in lines if x.startswith(name) and "repeat" not in x)
        rows[name] = [float(v) for v in row[len(name):].split()]
    losses = [values[-2:] for values in rows.values()]  # each path's two step losses
    assert all(x == pytest.approx(losses[0], rel=1e-3) for x in losses)
    last = re.fullmatch(r"mstep_speedup=([\d.]+) step_s=([\d.]+) peak_fraction=([\d.]+)",
                        lines[-1])
    assert last, lines[-1]
    # the table's seconds are printed to 0.1 s, and a tiny model's M-step takes about a second:
    # the ratios are checked to what that rounding allows
    trl, default = (rows[MSTEP_PATHS[p][2]][0] for p in ("trl", "default"))
    assert float(last.group(1)) == pytest.approx(trl / default,
                                                 abs=0.05 * (trl + default) / default**2 + 0.01)
    assert float(last.group(2)) == pytest.approx(default / 2, abs=0.05 + 0.05)
