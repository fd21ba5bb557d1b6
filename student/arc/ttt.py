"""ARC test-time training: the student absorbs an ARC self-edit and answers the test input.

1. Training tasks (`training_tasks`): from the task's n demonstrations, leave-k-out tasks (each
   demonstration in turn is the query, k-1 more are removed; `student.arc.leave_out`), each
   copied under every transform of the families the self-edit switched on, then every task once
   more with its demonstrations reordered and, when a family is on, its colours permuted (the
   reference's copy; `permute`, `permute_colors`).
   Duplicates are removed in a fixed order, and a seeded subset of `max_tasks` is kept: the
   same inputs give the same tasks in every process (the reference's `set()` makes its subset
   change with Python's hash seed).
2. Training (`train`): a fresh LoRA on the frozen student (`student.arc.lora`), AdamW with the
   self-edit's learning rate and epochs, cosine schedule with warm-up from 0, `batch_size`
   tasks per step (packed, no padding). The loss is on every token, or on the answer grid's
   tokens only, located by rendering the prompt alone through the student's chat template (no
   token ids written in the code). A self-edit that needs more than `max_steps` steps fails.
3. Prediction: the adapted student answers the test input (`student.arc.predict`: views,
   votes, pass@2).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Sequence

from student import batched as many
from student.absorb import fresh_adapter, optimise
from student.arc import augment
from student.arc.predict import Attempt, answer_logprobs, predict_many, solve
from student.arc.query import Pair, Query, encode, fits
from student.arc.selfedit import TTTConfig, parse
from student.config import ArcSettings
from student.data import pack


def _key(q: Query) -> str:
    return repr((q.demos, q.input, q.output))


def training_tasks(demos: Sequence[Pair], config: TTTConfig, settings: ArcSettings,
                   seed: int) -> list[Query]:
    """The leave-k-out tasks of `demos`, augmented as `config` says, deduplicated, at most
    `settings.max_tasks` (a seeded subset)."""
    n = len(demos)
    base = []
    for k in settings.leave_out:
        for held in range(n):
            others = [j for j in range(n) if j != held]
            for removed in itertools.combinations(others, k - 1):
                base.append(Query([demos[j] for j in others if j not in removed],
                                  demos[held][0], demos[held][1]))
    transforms = [augment.IDENTITY] + [t for fam in config.families
                                       for t in augment.family(fam, seed)]
    tasks: dict[str, Query] = {}
    for q in base:
        for t in transforms:
            a = Query([(t(i), t(o)) for i, o in q.demos], t(q.input), t(q.output))
            if fits(a, settings.max_side):
                tasks.setdefault(_key(a), a)
    if settings.permute:  # the reference's copy: demonstrations reordered, colours permuted
        rng = random.Random(seed)
        recolour = settings.permute_colors and bool(config.families)
        for q in list(tasks.values()):
            if len(q.demos) < 2 and not recolour:
                continue
            order = rng.sample(range(len(q.demos)), len(q.demos)) if len(q.demos) > 1 else [0]
            c = augment.recolour(rng) if recolour else augment.IDENTITY
            p = Query([(c(q.demos[j][0]), c(q.demos[j][1])) for j in order], c(q.input),
                      c(q.output))
            tasks.setdefault(_key(p), p)
    out = list(tasks.values())
    if len(out) > settings.max_tasks:
        keep = sorted(random.Random(seed).sample(range(len(out)), settings.max_tasks))
        out = [out[i] for i in keep]
    return out


def _schedule(warmup: int, total: int):
    """transformers' cosine schedule with warm-up (the reference's trainer): the learning rate
    rises linearly from 0 over `warmup` steps, then falls to 0 along a half cosine."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def plan(rows: list[tuple[list[int], list[int]]], config: TTTConfig, settings: ArcSettings,
         seed: int) -> tuple[list[dict], list[float]]:
    """The packed batch of every optimiser step (seeded order) and its learning rate (warm-up,
    then cosine): what both training paths run."""
    import torch

    batch = max(1, settings.batch_size)
    total = config.epochs * math.ceil(len(rows) / batch)
    factor = _schedule(settings.warmup_steps, total)
    order = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(config.epochs):
        perm = torch.randperm(len(rows), generator=order).tolist()
        for i in range(0, len(rows), batch):
            chunk = [rows[j] for j in perm[i : i + batch]]
            steps.append(pack([ids for ids, _ in chunk], [lab for _, lab in chunk]))
    return steps, [config.lr * factor(s) for s in range(total)]


def train(model, rows: list[tuple[list[int], list[int]]], config: TTTConfig,
          settings: ArcSettings, seed: int) -> list[float]:
    """SFT of the adapter on encoded tasks; one loss per optimiser step (one adapter at a time)."""
    import torch

    steps, _ = plan(rows, config, settings, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings.warmup_steps, len(steps)))
    return optimise(model, iter(steps), opt, sched, settings.max_grad_norm)


def prepare(tokenizer, demos: Sequence[Pair], self_edit: str, settings: ArcSettings,
            instruct: bool, seed: int) -> tuple[Attempt | None, TTTConfig | None, list]:
    """Parse a self-edit and build its encoded training tasks: (a failed Attempt, None, [])
    when it cannot be trained (invalid, nothing fits, over the step budget)."""
    parsed = parse(self_edit, tuple(settings.lr_range), settings.max_epochs)
    if parsed.config is None:
        return Attempt(False, failure=f"invalid self-edit: {parsed.reason}"), None, []
    config = parsed.config
    tasks = training_tasks(demos, config, settings, seed)
    rows = [encode(tokenizer, q, instruct, config.loss) for q in tasks]
    rows = [r for r in rows if len(r[0]) <= settings.max_tokens]
    if not rows:
        return Attempt(False, failure="no training task fits student.arc.max_tokens"), None, []
    steps = config.epochs * math.ceil(len(rows) / max(1, settings.batch_size))
    if steps > settings.max_steps:
        return Attempt(False, failure=f"over budget: {steps} steps > student.arc.max_steps="
                                      f"{settings.max_steps}", tasks=len(rows), steps=steps), \
            None, []
    return None, config, rows


def absorb_and_solve(model, tokenizer, demos: Sequence[Pair], tests: Sequence[Pair],
                     self_edit: str, settings: ArcSettings, instruct: bool, seed: int,
                     phase=None) -> Attempt:
    """Parse the self-edit, build its training tasks, train a fresh LoRA, answer, unload.
    `phase` (name -> context manager; loop.bench times "train" and "answer" with it) wraps
    each phase."""
    phase = phase or (lambda name: contextlib.nullcontext())
    failed, config, rows = prepare(tokenizer, demos, self_edit, settings, instruct, seed)
    if failed is not None:
        return failed
    with fresh_adapter(model, settings.lora, seed) as adapted:
        with phase("train"):
            losses = train(adapted, rows, config, settings, seed)
        with phase("answer"):
            result = solve(adapted, tokenizer, demos, tests, settings, instruct)
    result.tasks, result.steps, result.losses = len(rows), len(losses), losses
    return result


def absorb_and_solve_many(model, tokenizer, demos: Sequence[Pair], tests: Sequence[Pair],
                          self_edits: list[str], settings: ArcSettings, instruct: bool,
                          seeds: list[int], max_adapters: int,
                          pass_tokens: int | None = None, phase=None) -> list[Attempt]:
    """`absorb_and_solve` for many self-edits of one task: the trainable ones are trained
    `max_adapters` at a time in shared passes (student.batched) and answer the test inputs in
    one generate call per test input (the path the loop takes; `phase` as there)."""
    phase = phase or (lambda name: contextlib.nullcontext())

    out: list[Attempt | None] = []
    ready = []
    for n, (text, seed) in enumerate(zip(self_edits, seeds, strict=True)):
        failed, config, rows = prepare(tokenizer, demos, text, settings, instruct, seed)
        out.append(failed)
        if failed is None:
            ready.append((n, rows, *plan(rows, config, settings, seed), seed))
    for group in many.chunks(ready, max_adapters):
        jobs = [many.Job(seed, steps, lrs) for _, _, steps, lrs, seed in group]
        with many.Adapters(model, settings.lora, [j.seed for j in jobs]) as adapters:
            with phase("train"):
                many.train(model, adapters, jobs, tokenizer.pad_token_id,
                           pass_tokens=many.pass_tokens(pass_tokens, model.device),
                           max_grad_norm=settings.max_grad_norm)
            with phase("answer"):
                answered = [predict_many(model, tokenizer, adapters, demos, i, settings,
                                         instruct) for i, _ in tests]
            logprobs = answer_logprobs(model, tokenizer, demos, tests, instruct,
                                       settings.max_tokens, adapters)
        for a, ((n, rows, _, _, _), job) in enumerate(zip(group, jobs, strict=True)):
            attempts = [per_test[a][0] for per_test in answered]
            out[n] = Attempt(all(o in g for (_, o), g in zip(tests, attempts, strict=True)),
                             tasks=len(rows), steps=len(job.steps), losses=job.losses,
                             attempts=attempts, answers=[per_test[a][1] for per_test in answered],
                             logprob=logprobs[a])
    return out
