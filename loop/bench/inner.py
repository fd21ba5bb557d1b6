"""The inner loop's bench (`python -m loop.bench`, whose docstring says what it measures) and the
recorded self-edits the benches and `loop.gpu_check` absorb."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from loop.core.config import PROJECT_ROOT, ConfigError, RunConfig
from loop.core.measure import PeakMemory, Phases, compose, matmul_peak
from loop.core.metrics import is_log_probability

SAMPLE = PROJECT_ROOT / "data" / "bench" / "self_edits.json"


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
    from loop.core.ledger import write_json_atomic
    from loop.core.seeds import derive_seed
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


def with_batched(run: RunConfig, setting: str) -> RunConfig:
    return dataclasses.replace(run, student=dataclasses.replace(
        run.student, train=dataclasses.replace(run.student.train, batched=setting)))


def run_path(model, tokenizer, jobs, run: RunConfig, setting: str, device: str, count=False):
    """(seconds, peak GiB, results, Phases) of absorbing and scoring every job on one path
    (student.train.batched=`setting`)."""
    from loop.tasks.squad.absorb import absorb_and_score_many

    generate = not is_log_probability(run.reward.metric)
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
    """Seconds to read every (passage, self-edit) in context (loop.tasks.squad.proxy): the cheap reward."""
    from loop.tasks.squad.proxy import context_rows

    t0 = time.perf_counter()
    for passage, text in items:
        context_rows(model, tokenizer, passage, text, run.student)
    return time.perf_counter() - t0


def bench(args, overrides: list[str]) -> None:
    import torch

    from loop.core.checks import check_settings
    from loop.core.cli import check_models
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
    generate = not is_log_probability(run.reward.metric)
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
