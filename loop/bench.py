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

It also times the in-context proxy (`reward.metric=context_logprob`, `loop.proxy`) on the same
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

The self-edits are a fixed sample in the repository (data/bench/self_edits.json, written by the
bundled qwen0.5b teacher with `--from-teacher --save`) or, with `--from-teacher`, fresh ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from loop.config import CONF_DIR, PROJECT_ROOT, ConfigError, RunConfig, register, to_run_config
from loop.reward import LOG_PROBABILITIES

SAMPLE = PROJECT_ROOT / "data" / "bench" / "self_edits.json"


def compose(overrides: list[str]) -> RunConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_run_config(hydra_compose("config", overrides=overrides))


class PeakMemory:
    """Peak resident memory of this process (CPU, sampled every 20 ms) or peak CUDA memory
    allocated, over a `with` block, in GiB."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            self.peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def matmul_peak(dtype, device: str, n: int = 1024, repeats: int = 20) -> float:
    """This machine's dense matmul throughput in GFLOP/s (median of `repeats`, n × n × n)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def load_sample(path: Path, run: RunConfig, k: int, wanted: str = "--k "):
    """k (passage, self-edit) pairs from the recorded sample, passages from its data file."""
    from loop.tasks.squad.data import load_squad

    if not path.exists():
        raise ConfigError(f"no self-edit sample at {path}: write one with "
                          "`python -m loop.bench --from-teacher --save`")
    try:
        rows = json.loads(path.read_text())
        by_id = {p.id: p for p in load_squad(str(PROJECT_ROOT / rows["data"]))}
        items = [(by_id[r["context"]], r["self_edit"]) for r in rows["self_edits"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a self-edit sample written by `python -m loop.bench "
                          f"--from-teacher --save` ({type(e).__name__}: {e})") from e
    if len(items) < k:
        raise ConfigError(f"{path} holds {len(items)} self-edits; {wanted}{k} needs as many")
    return items[:k]


def sample_from_teacher(run: RunConfig, k: int, save: Path | None):
    """k fresh self-edits from the configured teacher on the first k passages of task.data."""
    from loop.ledger import write_json_atomic
    from loop.seeds import derive_seed
    from loop.tasks import squad
    from loop.tasks.squad.data import load_squad
    from teacher.generate import TransformersGenerator
    from teacher.model import load_teacher

    passages = load_squad(run.task.data)[:k]
    model, tokenizer = load_teacher(run.teacher)
    gen = TransformersGenerator(model, tokenizer, instruct=run.teacher.instruct,
                                settings=run.teacher.sampling)
    texts = [s.text for s in gen.sample([squad.prompt(run, p) for p in passages],
                                        [derive_seed(run.seed, "bench", p.id) for p in passages])]
    del model
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        data = Path(run.task.data).resolve()
        rel = data.relative_to(PROJECT_ROOT) if data.is_relative_to(PROJECT_ROOT) else data
        write_json_atomic(save, {
            "teacher": run.teacher.name, "data": str(rel),
            "sampling": dataclasses.asdict(run.teacher.sampling),
            "self_edits": [{"context": p.id, "self_edit": t} for p, t in zip(passages, texts,
                                                                              strict=True)]})
        print(f"wrote {k} self-edits to {save}")
    return list(zip(passages, texts, strict=True))


PATHS = {"false": "one at a time", "true": "batched", "auto": "default (auto)"}


class Phases:
    """Seconds (and, with `count`, floating-point operations) per phase of the inner loop, for
    `absorb_and_score_many(..., phase=)`."""

    def __init__(self, count: bool = False):
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.count = count

    @contextmanager
    def __call__(self, name: str):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False) if self.count else nullcontext()
        t0 = time.perf_counter()
        with counter:
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        if self.count:
            self.flops[name] = self.flops.get(name, 0) + counter.get_total_flops()


def with_batched(run: RunConfig, setting: str) -> RunConfig:
    return dataclasses.replace(run, student=dataclasses.replace(
        run.student, train=dataclasses.replace(run.student.train, batched=setting)))


def run_path(model, tokenizer, jobs, run: RunConfig, setting: str, device: str, count=False):
    """(seconds, peak GiB, results, Phases) of absorbing and scoring every job on one path
    (student.train.batched=`setting`)."""
    from loop.tasks.squad.absorb import absorb_and_score_many

    generate = run.reward.metric not in LOG_PROBABILITIES
    phases = Phases(count)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        results = absorb_and_score_many(model, tokenizer, jobs, with_batched(run, setting), None,
                                        generate, phases)
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return seconds, mem.peak, results, phases


def time_proxy(model, tokenizer, items, run: RunConfig) -> float:
    """Seconds to read every (passage, self-edit) in context (loop.proxy): the cheap reward."""
    from loop.proxy import context_rows

    t0 = time.perf_counter()
    for passage, text in items:
        context_rows(model, tokenizer, passage, text, run.student)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loop.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other arguments are config overrides, as for loop.run (student=llama1b, "
               "student.lora.r=16, ...).")
    parser.add_argument("--k", type=int, default=8, help="self-edits per pass (default 8)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats of each path, interleaved (default 3)")
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
    parser.add_argument("--sampling", action="store_true",
                        help="time the teacher's sampling instead: with a trained-size adapter "
                             "merged into the weights per call (teacher.sampling.merged, the "
                             "default) against PEFT's unmerged layers, and the base alone")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option {bad[0]}")
    if args.k < 1 or args.repeats < 1:
        parser.error("--k and --repeats must be at least 1")
    if args.save and not args.from_teacher:
        parser.error("--save writes the self-edits --from-teacher samples; give both")
    from loop.cli import reported

    if args.sampling and args.mstep:
        parser.error("--sampling and --mstep are two benches: give one")
    with reported():  # a user error: a message, not a traceback
        (bench_sampling if args.sampling else bench_mstep if args.mstep else bench)(args, overrides)


def bench_sampling(args, overrides: list[str]) -> None:
    """The teacher writing k self-edits (the first k passages of task.data, one seed each, in
    teacher.sampling.batch_size calls) three ways, interleaved over the repeats: the base alone
    (the floor per decode step: an adapter merged into the weights costs what the base costs,
    plus the merge), base + an adapter merged into the weights for the call, base + the adapter
    through PEFT's layers."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from loop.cli import check_models
    from loop.seeds import derive_seed
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

    from loop.cli import check_models
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


def bench(args, overrides: list[str]) -> None:
    import torch

    from loop.checks import check_settings
    from loop.cli import check_models
    from student.data import training_texts
    from student.model import load_student

    run = compose(overrides)
    run = dataclasses.replace(run, student=dataclasses.replace(
        run.student, train=dataclasses.replace(run.student.train, max_adapters=args.k,
                                               method="lora")))
    check_settings(run)
    check_models(run, ("teacher", "student") if args.from_teacher else ("student",))
    items = (sample_from_teacher(run, args.k, args.sample if args.save else None)
             if args.from_teacher else load_sample(args.sample, run, args.k))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_student(run.student, device)
    dtype = next(model.parameters()).dtype
    jobs = [(p, training_texts(text, p.title, p.context, run.student.data), 1000 + n)
            for n, (p, text) in enumerate(items)]
    tokens = sum(len(tokenizer(t)["input_ids"]) + 1 for _, texts, _ in jobs for t in texts)
    print(f"student {run.student.name} ({dtype}, {device}, {torch.get_num_threads()} threads); "
          f"{args.k} self-edits, {tokens} training tokens each epoch in all; "
          f"{run.student.train.epochs} epochs, LoRA r={run.student.lora.r}, "
          f"reward metric {run.reward.metric}")
    peak = matmul_peak(dtype, device)
    print(f"matmul peak ({dtype}, 1024^3, median of 20): {peak:.1f} GFLOP/s")

    from loop.tasks.squad.absorb import train_together

    # what auto is here: true (a GPU), trained alone and answered together (a CPU, answers
    # generated), or one at a time (a CPU, answers only scored)
    generate = run.reward.metric not in LOG_PROBABILITIES
    auto = ("true" if train_together(with_batched(run, "auto"), device)
            else "alone" if generate else "false")
    paths = ["false", "true"] + (["auto"] if auto == "alone" else [])
    if auto != "alone":
        print(f"the default (student.train.batched=auto) is {PATHS[auto]} here")
    run_path(model, tokenizer, jobs[:1], run, "true", device)  # warm-up: first-call costs
    times: dict[str, list[float]] = {p: [] for p in paths}
    phase_times: dict[str, list[dict]] = {p: [] for p in paths}
    mems = dict.fromkeys(paths, 0.0)
    results = {}
    proxy_times = []
    for rep in range(args.repeats):
        proxy_times.append(time_proxy(model, tokenizer, items, run))
        order = paths[rep % len(paths):] + paths[:rep % len(paths)]
        for path in order:
            seconds, mem, res, phases = run_path(model, tokenizer, jobs, run, path, device)
            times[path].append(seconds)
            phase_times[path].append(phases.seconds)
            mems[path] = max(mems[path], mem)
            results[path] = res
            print(f"  repeat {rep + 1}/{args.repeats} {PATHS[path]}: {seconds:.1f} s", flush=True)
    # the paths' scores, question by question (each is deterministic given the seeds)
    diff = max(abs(a["logprob"] - b["logprob"])
               for path in paths[1:]
               for (sa, _), (sb, _) in zip(results[path], results["false"], strict=True)
               for a, b in zip(sa, sb, strict=True))
    counted = run_path(model, tokenizer, jobs, run, "false", device, count=True)[3].flops
    med = {p: statistics.median(t) for p, t in times.items()}
    phase_med = {p: {name: statistics.median(r.get(name, 0.0) for r in rows)
                     for name in ("train", "answer")} for p, rows in phase_times.items()}
    per_min = {p: 60 * args.k / med[p] for p in med}
    default = "auto" if auto == "alone" else auto
    print(f"training: {counted['train'] / 1e12:.3f} TFLOP, answering "
          f"{counted.get('answer', 0) / 1e12:.3f} TFLOP for the {args.k} self-edits (counted on "
          "the one-at-a-time path); fraction = that work per second / the matmul peak")
    print(f"{'path':<18}{'median s':>9}{'per min':>9}{'train s':>9}{'frac':>6}{'answer s':>10}"
          f"{'frac':>6}{'peak GiB':>10}")
    fraction = {}
    for p in paths:
        fraction[p] = {name: counted.get(name, 0) / max(phase_med[p][name], 1e-9) / 1e9 / peak
                       for name in ("train", "answer")}
        print(f"{PATHS[p]:<18}{med[p]:>9.1f}{per_min[p]:>9.2f}{phase_med[p]['train']:>9.1f}"
              f"{fraction[p]['train']:>6.2f}{phase_med[p]['answer']:>10.1f}"
              f"{fraction[p]['answer']:>6.2f}{mems[p]:>10.2f}")
    for p in paths[1:]:
        print(f"{PATHS[p]} / one at a time: {med['false'] / med[p]:.2f}x the speed (training "
              f"{phase_med['false']['train'] / max(phase_med[p]['train'], 1e-9):.2f}x, answering "
              f"{phase_med['false']['answer'] / max(phase_med[p]['answer'], 1e-9):.2f}x)")
    print(f"largest per-question log-prob difference between the paths: {diff:.2e}")
    proxy_s = statistics.median(proxy_times)
    print(f"the in-context proxy (reward.metric=context_logprob, nothing absorbed): {proxy_s:.2f} s "
          f"for the {args.k} self-edits, {proxy_s / args.k:.3f} s each; absorbing costs "
          f"{med['false'] / proxy_s:.1f}x as much one at a time, {med[default] / proxy_s:.1f}x "
          "on the default path")
    print(f"speedup={med['false'] / med[default]:.2f} default={auto} "
          f"default_per_min={per_min[default]:.2f} batched_per_min={per_min['true']:.2f} "
          f"sequential_per_min={per_min['false']:.2f} peak_fraction={fraction[default]['train']:.2f}")

if __name__ == "__main__":
    main()
