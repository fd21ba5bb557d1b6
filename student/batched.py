"""Many self-edit adapters at once on the shared frozen student.

PEFT trains one adapter at a time (its issues 631, 2436, 3012). The student's base is frozen and
shared, so k adapters can share every pass over its weights: `Adapters` replaces each LoRA
target `nn.Linear` by a `StackedLoRALinear` that holds all k adapters' A and B matrices stacked
(A: k × r × in, B: k × out × r) and adds, to the rows of adapter i, adapter i's update:

    y = base(x) + scale · (x A_iᵀ) B_iᵀ        (two batched matmuls for all adapters)

Routing (`Adapters.route`): the next forward passes give each row, or each token, an adapter;
read row after row, every adapter's tokens form one contiguous run, so the update is two
matmuls per adapter on its slice of the flattened input, or two batched matmuls for all when
the runs are equal (generation: one block of rows per adapter). Training (`train`) packs every
adapter's step into shared rows of one width with little padding (`_rows`), sums the adapters'
mean losses (each adapter's gradient is its own loss's gradient: the adapters share no
parameter) and steps a stacked AdamW in which every adapter has its own learning rate per step
and its own step count; an adapter whose steps are done leaves the batch and stops changing.

Speed: every pass over the base serves all k adapters. On a GPU that is the point (one
self-edit's few hundred tokens leave it idle). On a small CPU a single self-edit's step
already keeps the matmuls busy, and training together is no faster there; answering together
is (docs/batched.md, `python -m loop.bench`).

Equivalence: an adapter trained here equals the same adapter trained alone by `student.absorb`
(PEFT, torch AdamW) with the same seed, data and steps, up to floating-point reduction order
(tests/student/test_batched.py states the tolerance). Each adapter's A starts from PEFT's own seeded
initialisation (B starts at zero) and `save` writes the standard PEFT folder, so any self-edit's
adapter loads with `PeftModel.from_pretrained` or as a vLLM LoRA request.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

from student.adapters import Adapters, peft_init  # noqa: F401 (used as many.Adapters)
from student.data import IGNORE
from student.model import head_logits, on_cpu

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One adapter's training: the packed batch of every optimiser step and each step's lr."""

    seed: int
    steps: list[dict]  # student.data.pack output: input_ids, position_ids, labels (one row each)
    lrs: list[float]  # learning rate per step (the schedule, evaluated)
    losses: list[float] = field(default_factory=list)  # filled by train: one per step

    def __post_init__(self):
        if len(self.steps) != len(self.lrs):
            raise ValueError(f"Job: {len(self.steps)} steps but {len(self.lrs)} learning rates")


class StackedAdamW:
    """torch's AdamW (weight decay 0) over stacked per-adapter parameters (first dim = adapter),
    with a learning rate and a step count per adapter. Only the adapters given to `step` move."""

    def __init__(self, params: list, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params, (self.b1, self.b2), self.eps = list(params), betas, eps
        k = self.params[0].shape[0]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        # step counts and bias corrections live on the parameters' device (a CPU step count
        # dividing CUDA parameters fails there), in float64 like torch's scalars where the
        # device has it (MPS has no float64)
        device = self.params[0].device
        self.t = torch.zeros(k, dtype=torch.float64 if device.type != "mps" else torch.float32,
                             device=device)

    def step(self, adapters: list[int], lrs: list[float], max_grad_norm: float | None = None) -> None:
        """One step of the given adapters, each with its learning rate; with `max_grad_norm`
        each adapter's gradient is first clipped to that norm over its own slices, as
        `torch.nn.utils.clip_grad_norm_` clips one adapter's parameters."""
        import torch

        idx = torch.tensor(adapters, device=self.t.device)
        if max_grad_norm is not None:
            self.clip(idx, max_grad_norm)
        self.t[idx] += 1
        t = self.t[idx]
        c1 = 1 - self.b1 ** t  # bias corrections, in float64 like torch's scalars
        c2 = (1 - self.b2 ** t).sqrt()
        step = (torch.tensor(lrs, dtype=self.t.dtype, device=self.t.device) / c1)
        full = adapters == list(range(self.params[0].shape[0]))
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                shape = (-1,) + (1,) * (p.dim() - 1)
                g = p.grad if full else p.grad[idx]
                mm, vv = (m, v) if full else (m[idx], v[idx])
                mm.lerp_(g, 1 - self.b1)
                vv.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                denom = (vv.sqrt() / c2.to(p.dtype).view(shape)).add_(self.eps)
                update = mm / denom * step.to(p.dtype).view(shape)
                if full:
                    p.sub_(update)
                else:
                    m[idx], v[idx] = mm, vv
                    p[idx] = p[idx] - update

    def clip(self, idx, max_norm: float) -> None:
        import torch

        # torch's rule: the norm of the per-tensor norms, then a factor min(1, max / (norm + 1e-6))
        norms = torch.stack([p.grad[idx].flatten(1).norm(dim=1) for p in self.params], dim=1)
        factor = (max_norm / (norms.norm(dim=1) + 1e-6)).clamp(max=1.0)
        with torch.no_grad():
            for p in self.params:
                p.grad[idx] *= factor.to(p.grad.dtype).view((-1,) + (1,) * (p.dim() - 1))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def _segments(step: dict) -> list[tuple[list[int], list[int]]]:
    """A packed row (student.data.pack) back into its sequences: (token ids, labels) each."""
    ids, labels = step["input_ids"][0].tolist(), step["labels"][0].tolist()
    starts = [t for t, p in enumerate(step["position_ids"][0].tolist()) if p == 0] + [len(ids)]
    return [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:], strict=False)]


def _rows(steps: list[dict], pad_id: int) -> tuple[dict, object]:
    """The adapters' step data as rows of one width with little padding. Sequences go in adapter
    order (longest first within an adapter), each into the current row if it fits, else a new
    one, so that read row after row every adapter's tokens are one contiguous run
    (`Adapters.route`); a row may hold several adapters' sequences. The width is the one, among
    a few from the longest sequence up, that needs the fewest padded tokens. Padding is a segment
    of its own (positions from 0), so no real token attends to it; it is never a target and
    takes the adapter of the sequence before it. Returns the batch and each token's adapter
    (an index into `steps`)."""
    import torch

    seqs = [(i, ids, labels) for i, s in enumerate(steps)
            for ids, labels in sorted(_segments(s), key=lambda x: -len(x[0]))]

    def fill(width: int) -> list[list]:
        rows: list[list] = []
        used = width
        for seq in seqs:
            if used + len(seq[1]) > width:
                rows.append([])
                used = 0
            rows[-1].append(seq)
            used += len(seq[1])
        return rows

    longest = max(len(ids) for _, ids, _ in seqs)
    widths = sorted({longest, *(int(longest * f) for f in (1.15, 1.3, 1.5, 1.75, 2.0))})
    width = min(widths, key=lambda w: (len(fill(w)) * w, w))
    rows = fill(width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    owner = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        t = 0
        for i, seq, lab in row:
            ids[n, t : t + len(seq)] = torch.tensor(seq)
            labels[n, t : t + len(seq)] = torch.tensor(lab)
            pos[n, t : t + len(seq)] = torch.arange(len(seq))
            owner[n, t:] = i
            t += len(seq)
        pos[n, t:] = torch.arange(width - t)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}, owner


def train(model, adapters: Adapters, jobs: list[Job], pad_id: int, progress=None,
          pass_tokens: int = 0, max_grad_norm: float | None = None) -> list[Job]:
    """Train adapter i on jobs[i], all in the same forward/backward passes; fills each job's
    `losses`. Adapters with fewer steps leave the batch when done; the base never changes.

    `pass_tokens` > 0 splits a step's rows into passes of about that many tokens, gradients
    accumulated (the same step, exactly: each adapter's loss is divided by its whole step's
    target count); 0 takes every row in one pass. On a CPU, passes of a few hundred tokens keep
    the activations in cache; on a GPU one wide pass is the point. `max_grad_norm` clips each
    adapter's gradient on its own (None: no clipping)."""
    import torch

    if len(jobs) != adapters.k:
        raise ValueError(f"train: {len(jobs)} jobs for {adapters.k} adapters")
    device = next(iter(adapters.modules.values())).lora_A.device
    opt = StackedAdamW(adapters.parameters())
    for job in jobs:
        job.losses = []
    model.train()
    try:
        for s in range(max(len(j.steps) for j in jobs)):
            live = [i for i, j in enumerate(jobs) if s < len(j.steps)]
            batch, owner = _rows([jobs[i].steps[s] for i in live], pad_id)
            targets = batch["labels"][:, 1:] != IGNORE
            # each adapter's target count over the whole step: its loss is its mean
            count = torch.zeros(len(live)).index_add(0, owner[:, 1:][targets],
                                                     torch.ones(int(targets.sum()))).clamp(min=1)
            count = count.to(device)
            width = batch["input_ids"].shape[1]
            per_pass = max(1, pass_tokens // width) if pass_tokens > 0 else len(owner)
            losses = torch.zeros(len(live), device=device)
            for a in range(0, len(owner), per_pass):
                rows = slice(a, a + per_pass)
                adapters.route(torch.tensor(live)[owner[rows]])
                hidden = model.get_decoder()(
                    input_ids=batch["input_ids"][rows].to(device),
                    position_ids=batch["position_ids"][rows].to(device),
                    use_cache=False).last_hidden_state
                # the token at t is predicted at t - 1; logits only where there is a target (no
                # vocabulary-wide rows for padding)
                target = batch["labels"][rows, 1:].to(device)
                where = (target != IGNORE).nonzero(as_tuple=True)
                picked, wanted = hidden[:, :-1][where], target[where]
                if not len(wanted):  # rows of one-token sequences only: nothing to predict
                    continue
                # in slices of 256 targets: the vocabulary-wide softmax stays in cache (faster
                # than one call on a CPU)
                ce = torch.cat([torch.nn.functional.cross_entropy(
                    head_logits(model, picked[b : b + 256]).float(), wanted[b : b + 256],
                    reduction="none") for b in range(0, len(wanted), 256)])
                mine = owner[rows, 1:].to(device)[where]  # each target's adapter, in `live`
                part = torch.zeros(len(live), device=device).index_add(0, mine, ce) / count
                part.sum().backward()
                losses += part.detach()
            opt.step(live, [jobs[i].lrs[s] for i in live], max_grad_norm)
            opt.zero_grad()
            for i, loss in zip(live, losses.tolist(), strict=True):
                jobs[i].losses.append(loss)
            if progress is not None:
                progress(s)
    finally:
        adapters.route(None)
        model.eval()
    return jobs


def pass_tokens(setting: int | None, device) -> int:
    """student.train.pass_tokens resolved: unset means 512 on a CPU, one pass (0) on a GPU (any
    device but the CPU: tests/emulated runs the GPU branches on the `meta` device). How the
    pass size was chosen on a CPU: docs/batched.md."""
    if setting is not None:
        return max(0, setting)
    return 512 if on_cpu(device) else 0


class OutOfMemory(RuntimeError):
    """A batched pass ran out of memory; the message names the settings to lower."""


@contextmanager
def memory_advice(adapters: int, train):
    """Turn an out-of-memory error inside a batched pass into one that says what to lower."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        # CUDA: "CUDA out of memory"; CPU: "can't allocate memory" or "not enough memory"
        text = str(e).lower()
        if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
                or any(m in text for m in ("out of memory", "not enough memory",
                                           "allocate memory"))):
            raise
        raise OutOfMemory(
            f"out of memory training and scoring {adapters} self-edit adapters together "
            f"(student.train.max_adapters={train.max_adapters}, student.train.pass_tokens="
            f"{train.pass_tokens}): lower student.train.max_adapters, set "
            "student.train.pass_tokens (e.g. 512), or lower student.eval.batch_size; "
            "student.train.batched=false trains one adapter at a time. A run resumes with "
            "these changed (resume=<run folder>), keeping what it finished") from e


def chunks(items: list, size: int) -> list[list]:
    """`items` in consecutive groups of at most `size` (the adapters trained per pass)."""
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def fill(sizes: list[int], budget: int) -> list[list[int]]:
    """Indices into `sizes`, in order, grouped so that each group's sizes sum to at most
    `budget` (a group holds at least one index)."""
    groups: list[list[int]] = []
    total = budget
    for i, n in enumerate(sizes):
        if total + n > budget or not groups:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups
