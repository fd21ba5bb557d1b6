"""`python -m loop.bench --arc`: ARC's test-time training with the student's weights in float32
(the CPU default, `student.dtype=auto`) against bfloat16 (`student.dtype=bfloat16`), side by
side on the same tasks, self-edit and seeds; the `loop.bench` docstring says what it prints."""

from __future__ import annotations

import dataclasses
import statistics

from loop.core.config import ConfigError
from loop.core.measure import Phases, compose, matmul_peak

DTYPES = ("float32", "bfloat16")


def linear_params(model) -> int:
    """The weights every token goes through: the Linear layers, the LM head included."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def unit(model, tokenizer, task, text: str, run, seed: int) -> dict:
    """One self-edit absorbed and the test input answered as the loop does it
    (`absorb_and_solve_many`: the stacked adapters of `student.batched`), its phases timed, and
    the tokens its training passes over."""
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
    self-edit (`student.arc.oracle`) with the student loaded in each dtype, interleaved over the
    repeats (rotating which dtype goes first)."""
    import torch

    from loop import tasks as domains
    from loop.core.cli import check_models
    from loop.core.domain import select
    from loop.core.seeds import derive_seed
    from loop.tasks.arc.rows import oracle_text
    from student.model import load_student

    run = compose(["experiment=arc1d_cpu", "task.split=dev", *overrides])
    if run.task.format != "arc":
        raise ConfigError(f"--arc benches ARC's test-time training; task={run.task.name} is not "
                          "an ARC task")
    check_models(run, ("student",))
    chosen = select(domains.domain(run.task).load(run.task), args.k, run.seed)
    text = oracle_text(run)
    seeds = {t.id: derive_seed(run.seed, "bench", t.id) for t in chosen}
    models = {d: load_student(dataclasses.replace(run.student, dtype=d)) for d in DTYPES}
    device = next(models["float32"][0].parameters()).device.type
    peak = {d: matmul_peak(getattr(torch, d), device) for d in DTYPES}
    flops_per_token = 4 * linear_params(models["float32"][0])  # forward 2N, input gradients 2N
    print(f"student {run.student.name} on {device} ({torch.get_num_threads()} threads), "
          f"{len(chosen)} tasks of {run.task.name} ({', '.join(t.id for t in chosen)}), "
          f"the oracle's self-edit {text}; matmul peak "
          + ", ".join(f"{d} {peak[d]:.0f} GFLOP/s" for d in DTYPES))
    runs: dict[str, list[list[dict]]] = {d: [] for d in DTYPES}
    for rep in range(args.repeats):
        order = DTYPES[rep % 2:] + DTYPES[:rep % 2]
        for d in order:
            model, tokenizer = models[d]
            runs[d].append([unit(model, tokenizer, t, text, run, seeds[t.id]) for t in chosen])
            took = sum(u["train"] + u["predict"] for u in runs[d][-1])
            print(f"  repeat {rep + 1}/{args.repeats} {d}: {took:.1f} s", flush=True)

    def median(d: str, key: str) -> float:  # over repeats, of the sum over tasks
        return statistics.median(sum(u[key] for u in r) for r in runs[d])

    tokens = sum(u["tokens"] for u in runs["float32"][0])
    print(f"{'dtype':<10}{'train s':>9}{'predict s':>11}{'s per task':>12}{'train GFLOP/s':>15}"
          f"{'of peak':>9}{'solved':>8}{'final loss':>12}")
    fraction = {}
    for d in DTYPES:
        train, predict = median(d, "train"), median(d, "predict")
        rate = flops_per_token * tokens / train / 1e9
        fraction[d] = rate / peak[d]
        last = statistics.mean(u["losses"][-1] for u in runs[d][0])
        print(f"{d:<10}{train:>9.2f}{predict:>11.2f}{(train + predict) / len(chosen):>12.2f}"
              f"{rate:>15.1f}{fraction[d]:>9.3f}{sum(u['success'] for u in runs[d][0]):>8}"
              f"{last:>12.4f}")
    for d in DTYPES:
        if fraction[d] >= 1:  # a CPU without native bf16 matmuls (docs/batched.md)
            print(f"{d}: training ran faster than the {d} matmul peak measured here "
                  f"({peak[d]:.1f} GFLOP/s): this CPU has no fast {d} kernel for a plain matmul, "
                  "so that peak is no ceiling and its fraction is not a fraction of the hardware")
    same = sum(a["attempts"] == b["attempts"]
               for a, b in zip(runs["float32"][0], runs["bfloat16"][0], strict=True))
    gap = max(abs(a["losses"][-1] - b["losses"][-1])
              for a, b in zip(runs["float32"][0], runs["bfloat16"][0], strict=True))
    print(f"the same attempts in both dtypes: {same} of {len(chosen)} tasks; largest final-loss "
          f"difference {gap:.4f} (train GFLOP/s: {flops_per_token / 1e6:.0f} MFLOP per trained "
          "token through the Linear layers, forward and input gradients; attention not counted)")
    total = {d: median(d, "train") + median(d, "predict") for d in DTYPES}
    print(f"arc_bf16_speedup={total['float32'] / total['bfloat16']:.2f} "
          f"train_speedup={median('float32', 'train') / median('bfloat16', 'train'):.2f} "
          f"predict_speedup={median('float32', 'predict') / median('bfloat16', 'predict'):.2f} "
          f"float32_s={total['float32']:.2f} bfloat16_s={total['bfloat16']:.2f} "
          f"peak_fraction_float32={fraction['float32']:.3f} "
          f"peak_fraction_bfloat16={fraction['bfloat16']:.3f}")
