"""ARC prediction: the student answers a test input under each view (`views`: the whole task
transformed, or its demonstrations reordered), greedy; each answer is parsed (untrusted text: a
rectangle of digits or nothing), mapped back by the view's inverse, and the distinct grids are
ranked by votes (ties: the earlier view wins, in `views` order). The two best are the attempts
(pass@2).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from student.arc import augment, grids
from student.arc.grids import Grid
from student.arc.query import Pair, Query, encode, fits, render_prompt
from student.config import ArcSettings
from student.data import IGNORE
from student.model import gold_logprobs


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
        if fits(q, settings.max_side):
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


def answer_logprobs(model, tokenizer, demos: Sequence[Pair], tests: Sequence[Pair],
                    instruct: bool, max_tokens: int, adapters=None) -> list[float | None]:
    """The mean log-probability per token of the gold test outputs, teacher-forced after the
    task as given (no view, demonstrations in their order), averaged over the test inputs whose
    task fits `max_tokens`: one value for the model as it is, or one per adapter of `adapters`
    (student.adapters.Adapters); None where no test input fits. The answer tokens are those an
    output-only training task is trained on (`query.encode`).

    Dense and generation-free: it moves with what test-time training taught even when the
    greedy answer is still wrong, which is what a small student's rewards need
    (reward.metric=answer_logprob)."""
    encoded = [encode(tokenizer, Query(list(demos), i, o), instruct, "output") for i, o in tests]
    sequences = [(ids, [t for t, label in enumerate(labels) if label != IGNORE])
                 for ids, labels in encoded if len(ids) <= max_tokens]
    k = 1 if adapters is None else adapters.k
    if not sequences:
        return [None] * k
    if adapters is not None:  # every adapter's copy of the tasks, adapter by adapter
        adapters.route([r // len(sequences) for r in range(k * len(sequences))])
    try:
        per_row = gold_logprobs(model, tokenizer.pad_token_id, sequences * k)
    finally:
        if adapters is not None:
            adapters.route(None)
    n = len(sequences)
    return [sum(per_row[a * n : (a + 1) * n]) / n for a in range(k)]


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
    logprob: float | None = None  # answer_logprobs of the model that answered (None: a self-edit
    # that failed before training, or no test input fits student.arc.max_tokens)


def solve(model, tokenizer, demos: Sequence[Pair], tests: Sequence[Pair], settings: ArcSettings,
          instruct: bool) -> Attempt:
    """The model as it is (in context only) answers every test input."""
    answered = [predict(model, tokenizer, demos, i, settings, instruct) for i, _ in tests]
    attempts = [a for a, _ in answered]
    return Attempt(all(o in a for (_, o), a in zip(tests, attempts, strict=True)),
                   attempts=attempts, answers=[raw for _, raw in answered],
                   logprob=answer_logprobs(model, tokenizer, demos, tests, instruct,
                                           settings.max_tokens)[0])
