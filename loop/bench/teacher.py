"""The teacher's benches: `python -m loop.bench --sampling` (merged against unmerged adapters)
and `--mstep` (TRL's M-step against the CPU one); the `loop.bench` docstring says what each
measures."""

from __future__ import annotations

import dataclasses
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

from loop.bench.inner import load_sample
from loop.core.measure import compose, matmul_peak


def bench_sampling(args, overrides: list[str]) -> None:
    """The teacher writing k self-edits (the first k passages of task.data, one seed each, in
    teacher.sampling.batch_size calls) three ways, interleaved over the repeats: the base alone
    (the floor per decode step: an adapter merged into the weights costs what the base costs,
    plus the merge), base + an adapter merged into the weights for the call, base + the adapter
    through PEFT's layers."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from loop.core.cli import check_models
    from loop.core.seeds import derive_seed
    from loop.tasks import squad
    from loop.tasks.squad.data import load_squad
    from teacher.generate import TransformersGenerator
    from teacher.model import load_teacher

    run = compose(overrides)
    check_models(run, ("teacher",))
    passages = load_squad(run.task.data)[: args.k]
    prompts = [squad.prompt(run, p) for p in passages]
    seeds = [derive_seed(run.seed, "bench", p.id) for p in passages]
    model, tokenizer = load_teacher(run.teacher)
    lora = run.teacher.train.lora
    print(f"teacher {run.teacher.name} ({next(model.parameters()).dtype}, "
          f"{torch.get_num_threads()} threads); {args.k} self-edits of at most "
          f"{run.teacher.sampling.max_new_tokens} tokens, {run.teacher.sampling.batch_size} per "
          "call; " + (f"the adapter {args.adapter}" if args.adapter else
                      f"an adapter of the M-step's shape (LoRA r={lora.r} on {len(lora.targets)} "
                      "projections, random A, B random x 0.01)"))
    with tempfile.TemporaryDirectory(prefix="seal-bench-") as tmp:
        if args.adapter is None:  # a small update, as a few M-step steps leave: B ~ 1e-2 A's
            torch.manual_seed(0)
            peft = get_peft_model(model, LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.targets),
                init_lora_weights=False, task_type="CAUSAL_LM"))
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.data.mul_(0.01)
            peft.save_pretrained(tmp)
            model = peft.unload()
        adapter = Path(tmp) if args.adapter is None else args.adapter
        ways = {"base alone": None, "adapter merged": True, "adapter unmerged": False}
        times: dict[str, list[float]] = {w: [] for w in ways}
        texts, steps = {}, {}
        for rep in range(args.repeats):
            order = list(ways)[rep % 3:] + list(ways)[:rep % 3]
            for way in order:
                settings = dataclasses.replace(run.teacher.sampling, merged=bool(ways[way]))
                gen = TransformersGenerator(model, tokenizer, instruct=run.teacher.instruct,
                                            settings=settings)
                gen.use_adapter(None if ways[way] is None else adapter)
                t0 = time.perf_counter()
                texts[way] = [s.text for s in gen.sample(prompts, seeds)]
                times[way].append(time.perf_counter() - t0)
                # decode steps: a call runs until its longest sample ends (re-tokenized: ≈)
                size = max(1, run.teacher.sampling.batch_size)
                lengths = [len(tokenizer(t)["input_ids"]) for t in texts[way]]
                steps[way] = sum(max(lengths[i : i + size]) for i in range(0, len(lengths), size))
                gen.use_adapter(None)
                print(f"  repeat {rep + 1}/{args.repeats} {way}: {times[way][-1]:.1f} s", flush=True)
    med = {w: statistics.median(t) for w, t in times.items()}
    # an adapter changes what is written, so how long: compare seconds per decode step
    per_step = {w: med[w] / max(1, steps[w]) for w in ways}
    print(f"{'way':<18}{'median s':>10}{'self-edits/min':>16}{'decode steps':>14}"
          f"{'s per step':>12}{'of the base speed per step':>28}")
    for way in ways:
        print(f"{way:<18}{med[way]:>10.1f}{60 * args.k / med[way]:>16.2f}{steps[way]:>14}"
              f"{per_step[way]:>12.3f}{per_step['base alone'] / per_step[way]:>28.2f}")
    same = sum(a == b for a, b in zip(texts["adapter merged"], texts["adapter unmerged"],
                                      strict=True))
    print(f"self-edits identical merged and unmerged: {same} of {args.k} (sampling at "
          f"temperature {run.teacher.sampling.temperature}: a last-bit difference in a logit "
          "can move a draw, and the rest of the text follows it)")
    print(f"sampling_speedup={med['adapter unmerged'] / med['adapter merged']:.2f} "
          f"step_speedup={per_step['adapter unmerged'] / per_step['adapter merged']:.2f} "
          f"merged_per_min={60 * args.k / med['adapter merged']:.2f} "
          f"unmerged_per_min={60 * args.k / med['adapter unmerged']:.2f} "
          f"base_per_min={60 * args.k / med['base alone']:.2f}")


# name: (head, pairs per forward pass (None: the whole batch), label); on a GPU the default is
# TRL's way, on a CPU the last
MSTEP_PATHS = {"trl": ("fused", None, "TRL's (fused head, padded batch)"),
               "padded": ("completion", None, "completion head, padded batch"),
               "default": ("completion", 1, "CPU default (completion head, 1 pair)")}


def bench_mstep(args, overrides: list[str]) -> None:
    """The M-step on one round's kept pairs, the three ways of MSTEP_PATHS, interleaved."""
    import tempfile

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from loop.core.cli import check_models
    from loop.tasks import squad
    from teacher.model import load_teacher
    from teacher.train import train_adapter

    run = compose(overrides)
    check_models(run, ("teacher",))
    n = run.loop.contexts_per_round
    items = load_sample(args.sample, run, n, "loop.contexts_per_round=")
    pairs = [(squad.prompt(run, p), text) for p, text in items]
    model, tokenizer = load_teacher(run.teacher)
    device = next(model.parameters()).device.type
    dtype = next(model.parameters()).dtype
    train = run.teacher.train
    steps = train.epochs * -(-n // train.batch_size)
    print(f"teacher {run.teacher.name} ({dtype}, {device}, {torch.get_num_threads()} threads); "
          f"{n} kept pairs (the recorded self-edits, loop.contexts_per_round), {train.epochs} "
          f"epochs at batch {train.batch_size}: {steps} optimiser steps; LoRA r={train.lora.r} on "
          f"{len(train.lora.targets)} projections")
    peak = matmul_peak(dtype, device)
    print(f"matmul peak ({dtype}, 1024^3, median of 20): {peak:.1f} GFLOP/s")

    def fit(path: str, count: bool = False):
        head, micro, _ = MSTEP_PATHS[path]
        counter = FlopCounterMode(display=False) if count else nullcontext()
        with tempfile.TemporaryDirectory(prefix="seal-bench-") as tmp, counter:
            t0 = time.perf_counter()
            stats = train_adapter(model, tokenizer, pairs, run.teacher, Path(tmp) / "adapter",
                                  seed=run.seed, head=head,
                                  micro_batch=micro or run.teacher.train.batch_size)
            seconds = time.perf_counter() - t0
        return seconds, stats, counter.get_total_flops() if count else 0

    times: dict[str, list[float]] = {p: [] for p in MSTEP_PATHS}
    losses = {}
    for rep in range(args.repeats):
        order = list(MSTEP_PATHS)[rep % 3:] + list(MSTEP_PATHS)[:rep % 3]
        for path in order:
            seconds, stats, _ = fit(path)
            times[path].append(seconds)
            losses[path] = stats.losses
            print(f"  repeat {rep + 1}/{args.repeats} {MSTEP_PATHS[path][2]}: {seconds:.1f} s",
                  flush=True)
    flops = fit("default", count=True)[2]
    med = {p: statistics.median(t) for p, t in times.items()}
    print(f"useful work: {flops / 1e12:.2f} TFLOP in the linear layers (counted on the CPU "
          "default: no padding, no head on prompt tokens; attention is not counted); each time "
          "includes the trainer's set-up and saving the adapter")
    print(f"{'path':<38}{'median s':>9}{'s/step':>8}{'GFLOP/s':>9}{'frac':>6}  losses")
    for p, (_, _, name) in MSTEP_PATHS.items():
        rate = flops / med[p] / 1e9
        print(f"{name:<38}{med[p]:>9.1f}{med[p] / steps:>8.1f}{rate:>9.1f}{rate / peak:>6.2f}  "
              + " ".join(f"{x:.4f}" for x in losses[p]))
    diff = max(abs(a - b) for p in MSTEP_PATHS
               for a, b in zip(losses["trl"], losses[p], strict=True))
    print(f"largest loss difference between the paths: {diff:.1e} (float order)")
    print(f"mstep_speedup={med['trl'] / med['default']:.2f} step_s={med['default'] / steps:.1f} "
          f"peak_fraction={flops / med['default'] / 1e9 / peak:.2f}")
