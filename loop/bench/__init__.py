"""`python -m loop.bench`: the inner loop's paths side by side on the same self-edits.

    python -m loop.bench                      # CPU defaults: smollm135m student, k=8 (make bench)
    python -m loop.bench --k 4 --repeats 3 student=llama1b     # any student preset or override

Each repeat absorbs and scores the same k self-edits (each on its passage's questions, the
inner loop's reward) on each path of `student.train.batched`: `false`, one adapter at a time
(PEFT, the reference path); `true`, all k trained and answered in shared passes
(`student/batched.py`); and the default, `auto`, which is `true` on a GPU and, on a CPU, trains
each adapter alone with PEFT and answers the k together when answers are generated (it is
`false` there when they are only scored, as with the default `reward.metric=answer_logprob`:
then it is not run apart). The paths are interleaved, rotating
which goes first, so machine drift cancels. It prints, per path (median over repeats), the
self-edits evaluated per minute, the seconds spent training and answering, each phase's
achieved GFLOP/s as a fraction of this machine's matmul peak (measured here in the student's
dtype; the phase's floating-point operations counted once by torch's FlopCounterMode on the
one-at-a-time path: the useful work, no padding), each path's peak memory, and the largest
score difference between the paths. The last line is

    speedup=<one at a time s / default s> default=<true|alone|false> default_per_min=<x>
    batched_per_min=<y> sequential_per_min=<z> peak_fraction=<default path's training phase>

It also times the in-context proxy (`reward.metric=context_logprob`, `loop.tasks.squad.proxy`) on the same
self-edits, median over repeats, and prints what absorbing costs as a multiple of it.

`python -m loop.bench --sampling` times the teacher's sampling instead (k self-edits with an
adapter of the M-step's shape merged into the weights for the call, `teacher.sampling.merged`,
against the same adapter through PEFT's layers, and the base alone as the floor), ending with

    sampling_speedup=<unmerged s / merged s> step_speedup=<the same per decode step>
    merged_per_min=<x> unmerged_per_min=<y> base_per_min=<z>

(an adapter changes what the teacher writes, so how long it writes: the table also gives
seconds per decode step, where the base alone is the floor).

`python -m loop.bench --mstep` times the teacher's M-step instead: TRL's SFT of a fresh LoRA on
one round's kept pairs (`loop.contexts_per_round` (prompt, self-edit) pairs, epochs and batch
from `teacher.train`) three ways: TRL's own (its fused LM head over every position, the batch
padded into one pass), the completion-only head on the same padded passes, and the default on a
CPU (the completion-only head, one pair per pass, gradients accumulated over the batch;
`teacher/train.py`; on a GPU the default is TRL's way). It prints seconds per optimiser step,
the useful FLOP/s of the linear layers (counted on the CPU default: no padding, no head on
prompt tokens; attention is not counted) against the matmul peak, and the paths' losses, ending
with

    mstep_speedup=<TRL's s / CPU default s> step_s=<CPU default s per step>
    peak_fraction=<CPU default>

`python -m loop.bench --arc` times ARC's test-time training instead (`experiment=arc1d_cpu` on
its dev split unless overridden; `--k` tasks, default 2, one repeat by default): the oracle's
self-edit absorbed and the test input answered as the loop does it (stacked adapters), with
the student's weights in float32 (the CPU default) and in bfloat16 (`student.dtype=bfloat16`;
LoRA's weights stay float32), interleaved. It prints seconds of training and prediction per
dtype, training's GFLOP/s (the Linear layers' forward and input gradients per trained token)
against the matmul peak measured in that dtype (on a CPU without native bf16, e.g. an AVX2-only
AMD EPYC, that peak is a slow fallback and no ceiling: a fraction of 1 or more is flagged), the
tasks solved, the final losses, how many
tasks got the same attempts in both, and

    arc_bf16_speedup=<float32 s / bfloat16 s> train_speedup=<x> predict_speedup=<y>
    float32_s=<s> bfloat16_s=<s> peak_fraction_float32=<f> peak_fraction_bfloat16=<f>

The self-edits are a fixed sample in the repository (data/bench/self_edits.json, written by the
bundled qwen0.5b teacher with `--from-teacher --save`) or, with `--from-teacher`, fresh ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)
from loop.bench.inner import SAMPLE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loop.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other arguments are config overrides, as for loop.run (student=llama1b, "
               "student.lora.r=16, ...).")
    parser.add_argument("--k", type=int, default=None,
                        help="self-edits per pass (default 8); with --arc, tasks (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats of each path, interleaved (default 3; --arc: 1)")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="recorded self-edits")
    parser.add_argument("--from-teacher", action="store_true",
                        help="sample fresh self-edits from the configured teacher instead")
    parser.add_argument("--save", action="store_true",
                        help="with --from-teacher: write them to --sample")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="with --sampling: a trained teacher adapter folder (default: one of "
                             "the M-step's shape with random A and a small random B)")
    parser.add_argument("--mstep", action="store_true",
                        help="time the teacher's M-step instead: TRL's fused head on padded "
                             "batches against the completion-only head, one pair per pass")
    parser.add_argument("--arc", action="store_true",
                        help="time ARC's test-time training instead: the student in float32 "
                             "against bfloat16, on the oracle's self-edit")
    parser.add_argument("--sampling", action="store_true",
                        help="time the teacher's sampling instead: with a trained-size adapter "
                             "merged into the weights per call (teacher.sampling.merged, the "
                             "default) against PEFT's unmerged layers, and the base alone")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option {bad[0]}")
    args.k = args.k if args.k is not None else 2 if args.arc else 8
    args.repeats = args.repeats if args.repeats is not None else 1 if args.arc else 3
    if args.k < 1 or args.repeats < 1:
        parser.error("--k and --repeats must be at least 1")
    if args.save and not args.from_teacher:
        parser.error("--save writes the self-edits --from-teacher samples; give both")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from loop.bench.arc import bench_arc
    from loop.bench.inner import bench
    from loop.bench.teacher import bench_mstep, bench_sampling
    from loop.core.cli import reported

    if args.sampling + args.mstep + args.arc > 1:
        parser.error("--sampling, --mstep and --arc are three benches: give one")
    chosen = (bench_sampling if args.sampling else bench_mstep if args.mstep
              else bench_arc if args.arc else bench)
    # a user error: a message, not a traceback (the bench composes its config itself)
    with reported(also=(HydraException, OmegaConfBaseException)):
        chosen(args, overrides)

