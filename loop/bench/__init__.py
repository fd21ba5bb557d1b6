"""`python -m loop.bench`: the inner loop's paths side by side on the same self-edits.

    python -m loop.bench                      # CPU defaults: smollm135m student, k=8 (make bench)
    python -m loop.bench --k 4 --repeats 3 student=llama1b     # any student preset or override
    python -m loop.bench --sampling           # the teacher's sampling: adapter merged or not
    python -m loop.bench --mstep              # the teacher's M-step: TRL's head or ours
    python -m loop.bench --arc                # ARC's test-time training: float32 or bfloat16

Each bench runs two or three ways of doing the same work on the same inputs, interleaved so
that machine drift cancels, and prints per way the seconds, the achieved FLOP/s as a fraction
of this machine's matmul peak, peak memory and how far the ways' results differ. Its last line
is the contract (`speedup=... default=...`, `sampling_speedup=...`, `mstep_speedup=...`,
`arc_bf16_speedup=...`): what each measures and what it has shown is in docs/batched.md. The
self-edits are a fixed sample in the repository (data/bench/self_edits.json, written by the
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

