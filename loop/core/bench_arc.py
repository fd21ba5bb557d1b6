"""`python -m loop.bench --arc`: ARC's test-time training three ways, side by side on the same
tasks, self-edit and seeds: the student's weights in float32 (the CPU default,
`student.dtype=auto`), in bfloat16 (`student.dtype=bfloat16`; LoRA's weights and matmuls stay
float32), and in bfloat16 under bfloat16 autocast (`student.arc.autocast=true`: the LoRA's
matmuls in bf16 too); the `loop.bench` docstring says what it prints."""

from __future__ import annotations

import dataclasses
import statistics

from loop.core.bench_inner import Phases, compose, matmul_peak
from loop.core.config import ConfigError

# way -> (the student's dtype, student.arc.autocast)
WAYS = {"float32": ("float32", False), "bfloat16": ("bfloat16", False),
        "autocast": ("bfloat16", True)}


def linear_params(model) -> int:
    """The weights every token goes through: the Linear layers, the LM head included."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def unit(model, tokenizer, task, text: str, run, seed: int) -> dict:
    """One self-edit absorbed and the test input answered as the loop does it
    (`absorb_and_solve_many`: the stacked adapters), its phases timed, and the tokens its
    training passes over."""
    from loop.tasks.arc.solve import pairs
    from student.arc.ttt import absorb_and_solve_many, prepare

    settings, instruct = run.student.arc, run.student.instruct
    demos, tests = pairs(task.train), pairs(task.test)
    failed, config, rows = prepare(tokenizer, demos, text, settings, instruct, seed)
    if failed is not None:
        raise ConfigError(f"{task.id}: the oracle's self-edit cannot be trained here "
                          f"({failed.failure})")
    phases = Phases()
    [result] = absorb_and_solve_many(model, tokenizer, demos, tests, [text], settings, instruct,
                                     [seed], max_adapters=1,
                                     pass_tokens=run.student.train.pass_tokens, phase=phases)
    return {"train": phases.seconds["train"], "predict": phases.seconds["answer"],
            "losses": result.losses, "success": result.success, "attempts": result.attempts,
            "tokens": config.epochs * sum(len(i) for i, _ in rows)}


def bench_arc(args, overrides: list[str]) -> None:
    """`--k` tasks of the ARC task's dev split (a seeded choice), each absorbing the oracle's
    self-edit (`student.arc.oracle`) each way (`WAYS`), interleaved over the repeats (rotating
    which way goes first)."""
    import torch

    from loop import tasks as domains
    from loop.core.cli import check_models
    from loop.core.seeds import derive_seed
    from loop.tasks.arc.rows import oracle_text
    from loop.tasks.base import select
    from student.model import load_student

    run = compose(["experiment=arc1d_cpu", "task.split=dev", *overrides])
    if run.task.format != "arc":
        raise ConfigError(f"--arc benches ARC's test-time training; task={run.task.name} is not "
                          "an ARC task")
    check_models(run, ("student",))
    chosen = select(domains.domain(run.task).load(run.task), args.k, run.seed)
    text = oracle_text(run)
    seeds = {t.id: derive_seed(run.seed, "bench", t.id) for t in chosen}
    models = {d: load_student(dataclasses.replace(run.student, dtype=d))
              for d in {d for d, _ in WAYS.values()}}
    device = next(models["float32"][0].parameters()).device.type
    peak = {d: matmul_peak(getattr(torch, d), device) for d in models}
    flops_per_token = 4 * linear_params(models["float32"][0])  # forward 2N, input gradients 2N
    print(f"student {run.student.name} on {device} ({torch.get_num_threads()} threads), "
          f"{len(chosen)} tasks of {run.task.name} ({', '.join(t.id for t in chosen)}), "
          f"the oracle's self-edit {text}; matmul peak "
          + ", ".join(f"{d} {peak[d]:.0f} GFLOP/s" for d in sorted(models, reverse=True)))
    names = list(WAYS)
    runs: dict[str, list[list[dict]]] = {w: [] for w in names}
    for rep in range(args.repeats):
        for w in names[rep % len(names):] + names[:rep % len(names)]:
            dtype, autocast = WAYS[w]
            model, tokenizer = models[dtype]
            way = dataclasses.replace(run, student=dataclasses.replace(
                run.student, arc=dataclasses.replace(run.student.arc, autocast=autocast)))
            runs[w].append([unit(model, tokenizer, t, text, way, seeds[t.id]) for t in chosen])
            took = sum(u["train"] + u["predict"] for u in runs[w][-1])
            print(f"  repeat {rep + 1}/{args.repeats} {w}: {took:.1f} s", flush=True)

    def median(w: str, key: str) -> float:  # over repeats, of the sum over tasks
        return statistics.median(sum(u[key] for u in r) for r in runs[w])

    tokens = sum(u["tokens"] for u in runs["float32"][0])
    print(f"{'way':<10}{'train s':>9}{'predict s':>11}{'s per task':>12}{'train GFLOP/s':>15}"
          f"{'of peak':>9}{'solved':>8}{'final loss':>12}")
    fraction = {}
    for w in names:
        train, predict = median(w, "train"), median(w, "predict")
        rate = flops_per_token * tokens / train / 1e9
        fraction[w] = rate / peak[WAYS[w][0]]
        last = statistics.mean(u["losses"][-1] for u in runs[w][0])
        print(f"{w:<10}{train:>9.2f}{predict:>11.2f}{(train + predict) / len(chosen):>12.2f}"
              f"{rate:>15.1f}{fraction[w]:>9.3f}{sum(u['success'] for u in runs[w][0]):>8}"
              f"{last:>12.4f}")
    for w in names[1:]:
        pairs = list(zip(runs["float32"][0], runs[w][0], strict=True))
        same = sum(a["attempts"] == b["attempts"] for a, b in pairs)
        gap = max(abs(a["losses"][-1] - b["losses"][-1]) for a, b in pairs)
        print(f"{w} against float32: the same attempts in {same} of {len(chosen)} tasks; "
              f"largest final-loss difference {gap:.4f}")
    print(f"(train GFLOP/s: {flops_per_token / 1e6:.0f} MFLOP per trained token through the "
          "Linear layers, forward and input gradients; attention and LoRA not counted; of peak: "
          "against the matmul peak of the base's dtype)")
    total = {w: median(w, "train") + median(w, "predict") for w in names}

    def ratio(w: str, key: str | None = None) -> float:
        return (total["float32"] / total[w] if key is None
                else median("float32", key) / median(w, key))

    print(f"arc_bf16_speedup={ratio('bfloat16'):.2f} train_speedup={ratio('bfloat16', 'train'):.2f} "
          f"predict_speedup={ratio('bfloat16', 'predict'):.2f} "
          f"arc_autocast_speedup={ratio('autocast'):.2f} "
          f"autocast_train_speedup={ratio('autocast', 'train'):.2f} "
          f"float32_s={total['float32']:.2f} bfloat16_s={total['bfloat16']:.2f} "
          f"autocast_s={total['autocast']:.2f} "
          f"peak_fraction_float32={fraction['float32']:.3f} "
          f"peak_fraction_bfloat16={fraction['bfloat16']:.3f} "
          f"peak_fraction_autocast={fraction['autocast']:.3f}")
