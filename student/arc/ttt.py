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
3. Prediction (`predict`): the student answers the test input under each view (`views`: the
   whole task transformed, or its demonstrations reordered), greedy; each answer is parsed
   (untrusted text: a rectangle of digits or nothing), mapped back by the view's inverse, and
   the distinct grids are ranked by votes (ties: the earlier view wins, in `views` order). The
   two best are the attempts (pass@2).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from student.arc import augment, grids
from student.arc.grids import Grid
from student.arc.selfedit import TTTConfig, parse
from student.config import ArcSettings

Pair = tuple[Grid, Grid]  # (input, output)
SYSTEM = ("Figure out the underlying transformation in the following examples and apply it to "
          "the test case. Grids are rows of digits, one row per line.\n\n")


@dataclass
class Query:
    demos: list[Pair]
    input: Grid
    output: Grid | None = None  # the answer, for training tasks


def messages(q: Query) -> list[dict]:
    shown = "".join(f"Input:\n{grids.text(i)}\nOutput:\n{grids.text(o)}\n\n" for i, o in q.demos)
    out = [{"role": "system", "content": SYSTEM + shown},
           {"role": "user", "content": f"Input:\n{grids.text(q.input)}\nOutput:"}]
    if q.output is not None:
        out.append({"role": "assistant", "content": grids.text(q.output)})
    return out


def render_prompt(tokenizer, q: Query, instruct: bool) -> str:
    """The prompt up to where the answer starts (the chat template's assistant turn)."""
    msgs = messages(Query(q.demos, q.input))
    if instruct:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in msgs) + "\n"


def encode(tokenizer, q: Query, instruct: bool, loss: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a training task; `loss="output"` masks everything before the
    answer. The split point is where the rendered prompt alone ends."""
    from student.data import IGNORE

    prompt = render_prompt(tokenizer, q, instruct)
    if instruct:
        full = tokenizer.apply_chat_template(messages(q), tokenize=False)
    else:
        full = prompt + grids.text(q.output) + (tokenizer.eos_token or "")
    if not full.startswith(prompt):
        raise ValueError("the student's chat template renders the answer turn differently from "
                         "its generation prompt; train with the all-tokens strategy instead")
    p_ids = tokenizer(prompt, add_special_tokens=not instruct)["input_ids"]
    ids = tokenizer(full, add_special_tokens=not instruct)["input_ids"]
    if ids[: len(p_ids)] != p_ids:
        raise ValueError("the prompt's tokens change when the answer follows them; cannot locate "
                         "the answer tokens")
    labels = list(ids) if loss == "all" else [IGNORE] * len(p_ids) + ids[len(p_ids):]
    return ids, labels


def _fits(q: Query, max_side: int) -> bool:
    every = [g for pair in q.demos for g in pair] + [q.input] + ([q.output] if q.output else [])
    return all(max(grids.shape(g)) <= max_side for g in every)


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
            if _fits(a, settings.max_side):
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

    from student.data import pack

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

    from student.absorb import optimise

    steps, _ = plan(rows, config, settings, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings.warmup_steps, len(steps)))
    return optimise(model, iter(steps), opt, sched, settings.max_grad_norm)


def vote(candidates: list[Grid | None]) -> list[Grid]:
    """The two grids with the most votes (ties: the one first seen); None votes are dropped."""
    counts: dict[str, list] = {}
    for i, g in enumerate(candidates):
        if g is not None:
            counts.setdefault(repr(g), [0, i, g])[0] += 1
    ranked = sorted(counts.values(), key=lambda c: (-c[0], c[1]))
    return [g for _, _, g in ranked[:2]]


View = tuple[augment.Transform, tuple[int, ...]]  # a transform, and the demonstrations' order


def views(settings: ArcSettings, n_demos: int) -> list[View]:
    """The views of a task with `n_demos` demonstrations: each of `settings.views` in the given
    order, then the identity with the demonstrations in `settings.view_orders` other orders (a
    fixed, seeded choice: the reference votes over reordered views too)."""
    given = tuple(range(n_demos))
    out = [(augment.VIEW_TRANSFORMS[name], given) for name in settings.views]
    others = OtherOrders(n_demos)
    if others and settings.view_orders:
        picked = random.Random(0).sample(others, min(settings.view_orders, len(others)))
        out += [(augment.IDENTITY, o) for o in picked]
    return out


class OtherOrders(Sequence):
    """The orders of n demonstrations other than the given one, in lexicographic order, each
    built when asked for: a task may show 10 demonstrations (3.6 million orders)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return math.factorial(self.n) - 1

    def __getitem__(self, i: int) -> tuple[int, ...]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        rank, items, order = i + 1, list(range(self.n)), []  # rank 0 is the given order
        for k in range(self.n, 0, -1):
            j, rank = divmod(rank, math.factorial(k - 1))
            order.append(items.pop(j))
        return tuple(order)


def view_prompts(tokenizer, demos: Sequence[Pair], test_input: Grid, settings: ArcSettings,
                 instruct: bool) -> tuple[list[View], list[str], int]:
    """(views, their prompts, answer room in tokens) for one test input: every view whose grids
    have no side over `settings.max_side`, whose prompt plus answer room fits `settings.max_tokens`, and whose
    prompt no earlier view already has (a flip of a one-row grid is the grid itself: the
    same greedy answer would vote twice)."""
    # room for the largest grid the task shows, as rows of digits plus newlines, twice over
    largest = max((len(g) * (len(g[0]) + 1) for pair in demos for g in pair), default=0)
    max_new = 2 * max(largest, len(test_input) * (len(test_input[0]) + 1)) + 8
    kept, prompts = [], []
    for t, order in views(settings, len(demos)):
        q = Query([(t(demos[j][0]), t(demos[j][1])) for j in order], t(test_input))
        if _fits(q, settings.max_side):
            prompt = render_prompt(tokenizer, q, instruct)
            length = len(tokenizer(prompt, add_special_tokens=not instruct)["input_ids"])
            if length + max_new <= settings.max_tokens and prompt not in prompts:
                kept.append((t, order))
                prompts.append(prompt)
    return kept, prompts, max_new


def _generate(model, tokenizer, prompts: list[str], max_new: int, instruct: bool) -> list[str]:
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True,
                      add_special_tokens=not instruct).to(model.device)
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def _decide(views: list[View], answers: list[str]) -> list[Grid]:
    candidates = []
    for (t, _), a in zip(views, answers, strict=True):
        g = grids.parse(a)
        candidates.append(t.inverse(g) if g is not None else None)
    return vote(candidates)


def predict(model, tokenizer, demos: Sequence[Pair], test_input: Grid, settings: ArcSettings,
            instruct: bool) -> tuple[list[Grid], list[str]]:
    """(the two attempts, the raw answers) for one test input, from every view that fits: grids
    no side over `settings.max_side`, and prompt plus answer room within `settings.max_tokens`."""
    views, prompts, max_new = view_prompts(tokenizer, demos, test_input, settings, instruct)
    if not prompts:
        return [], []
    answers = _generate(model, tokenizer, prompts, max_new, instruct)
    return _decide(views, answers), answers


def predict_many(model, tokenizer, adapters, demos: Sequence[Pair], test_input: Grid,
                 settings: ArcSettings, instruct: bool) -> list[tuple[list[Grid], list[str]]]:
    """`predict` for every adapter of `adapters` (student.adapters.Adapters) in one generate
    call: the same view prompts, one block of rows per adapter."""
    views, prompts, max_new = view_prompts(tokenizer, demos, test_input, settings, instruct)
    if not prompts:
        return [([], []) for _ in range(adapters.k)]
    adapters.route([i for i in range(adapters.k) for _ in prompts])
    try:
        answers = _generate(model, tokenizer, prompts * adapters.k, max_new, instruct)
    finally:
        adapters.route(None)
    blocks = [answers[i * len(prompts) : (i + 1) * len(prompts)] for i in range(adapters.k)]
    return [(_decide(views, b), b) for b in blocks]


@dataclass
class Attempt:
    """One self-edit absorbed and the test inputs answered."""

    success: bool  # every test output among its two attempts (pass@2)
    failure: str | None = None  # why no training happened (an invalid or over-budget self-edit)
    tasks: int = 0  # training tasks built
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    attempts: list[list[Grid]] = field(default_factory=list)  # per test input
    answers: list[list[str]] = field(default_factory=list)  # per test input, the views' raw text


def solve(model, tokenizer, demos: Sequence[Pair], tests: Sequence[Pair], settings: ArcSettings,
          instruct: bool) -> Attempt:
    """The model as it is (in context only) answers every test input."""
    answered = [predict(model, tokenizer, demos, i, settings, instruct) for i, _ in tests]
    attempts = [a for a, _ in answered]
    return Attempt(all(o in a for (_, o), a in zip(tests, attempts, strict=True)),
                   attempts=attempts, answers=[raw for _, raw in answered])


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
                     self_edit: str, settings: ArcSettings, instruct: bool, seed: int) -> Attempt:
    """Parse the self-edit, build its training tasks, train a fresh LoRA, answer, unload."""
    from student.absorb import fresh_adapter

    failed, config, rows = prepare(tokenizer, demos, self_edit, settings, instruct, seed)
    if failed is not None:
        return failed
    with fresh_adapter(model, settings.lora, seed) as adapted:
        losses = train(adapted, rows, config, settings, seed)
        result = solve(adapted, tokenizer, demos, tests, settings, instruct)
    result.tasks, result.steps, result.losses = len(rows), len(losses), losses
    return result


def absorb_and_solve_many(model, tokenizer, demos: Sequence[Pair], tests: Sequence[Pair],
                          self_edits: list[str], settings: ArcSettings, instruct: bool,
                          seeds: list[int], max_adapters: int,
                          pass_tokens: int | None = None) -> list[Attempt]:
    """`absorb_and_solve` for many self-edits of one task: the trainable ones are trained
    `max_adapters` at a time in shared passes (student.batched) and answer the test inputs in
    one generate call per test input."""
    from student import batched as many

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
            many.train(model, adapters, jobs, tokenizer.pad_token_id,
                       pass_tokens=many.pass_tokens(pass_tokens, model.device),
                       max_grad_norm=settings.max_grad_norm)
            answered = [predict_many(model, tokenizer, adapters, demos, i, settings, instruct)
                        for i, _ in tests]
        for a, ((n, rows, _, _, _), job) in enumerate(zip(group, jobs, strict=True)):
            attempts = [per_test[a][0] for per_test in answered]
            out[n] = Attempt(all(o in g for (_, o), g in zip(tests, attempts, strict=True)),
                             tasks=len(rows), steps=len(job.steps), losses=job.losses,
                             attempts=attempts, answers=[per_test[a][1] for per_test in answered])
    return out
