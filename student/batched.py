"""Many self-edit adapters at once on the shared frozen student.

PEFT trains one adapter at a time (its issues 631, 2436, 3012). The student's base is frozen and
shared, so k adapters can share every pass over its weights: `Adapters` replaces each LoRA
target `nn.Linear` by a `StackedLoRALinear` that holds all k adapters' A and B matrices stacked
(A: k × r × in, B: k × out × r) and adds, to the rows of adapter i, adapter i's update:

    y = base(x) + scale · (x A_iᵀ) B_iᵀ        (two batched matmuls for all adapters)

Rows are grouped by adapter: `select(adapters, rows_each)` says which adapters the next
forward passes serve and how many consecutive rows each one owns, so a (k·m × T × d) input is
viewed as (k × m·T × d) and no weights are gathered per row. Training (`train`) packs each
adapter's step into one row, pads the rows to one width with a separate padding segment (its
positions restart at 0, so transformers' packed-sequence mask keeps it apart and it is not a
target), sums the adapters' mean losses (each adapter's gradient is its own loss's gradient: the
adapters share no parameter) and steps a stacked AdamW in which every adapter has its own
learning rate per step and its own step count; an adapter whose steps are done leaves the batch
and stops changing.

Equivalence: an adapter trained here equals the same adapter trained alone by `student.absorb`
(PEFT, torch AdamW) with the same seed, data and steps, up to floating-point reduction order
(tests/test_batched.py states the tolerance). Each adapter's A starts from PEFT's own seeded
initialisation (B starts at zero) and `save` writes the standard PEFT folder, so any self-edit's
adapter loads with `PeftModel.from_pretrained` or as a vLLM LoRA request.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from student.config import LoraSettings
from student.data import IGNORE

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


def _stacked_linear_class():
    import torch
    from torch import nn

    class StackedLoRALinear(nn.Module):
        """A frozen `nn.Linear` plus k LoRA updates, one per adapter, applied to its own rows."""

        def __init__(self, base: nn.Linear, owner: Adapters, a: torch.Tensor, scale: float,
                     dropout: float):
            super().__init__()
            self.base, self.scale, self.dropout = base, scale, dropout
            self._owner = [owner]  # a list: not registered as a submodule
            self.lora_A = nn.Parameter(a)  # k × r × in
            self.lora_B = nn.Parameter(torch.zeros(a.shape[0], base.out_features, a.shape[1],
                                                   dtype=a.dtype, device=a.device))

        def forward(self, x):
            y = self.base(x)
            owner = self._owner[0]
            if owner.active is None:
                return y
            a, b = self.lora_A, self.lora_B
            if owner.subset is not None:  # some adapters only: gather their (small) matrices
                a, b = a[owner.subset], b[owner.subset]
            n = a.shape[0]
            h = x.reshape(n, -1, x.shape[-1]).to(a.dtype)  # adapter i's rows are consecutive
            if self.dropout and self.training:
                h = nn.functional.dropout(h, self.dropout)
            delta = torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2))
            return y + (self.scale * delta).reshape(y.shape).to(y.dtype)

    return StackedLoRALinear


class Adapters:
    """k fresh LoRA adapters installed on `model` (a frozen causal LM), one per seed.

        with Adapters(model, lora, seeds) as adapters:
            train(model, adapters, jobs)          # all k in the same passes
            adapters.select(range(k), rows_each=m)  # then k·m rows, m per adapter
            model(...) / model.generate(...)
            adapters.save(i, folder)              # adapter i in PEFT's format
        # the base's modules are exactly the originals again
    """

    def __init__(self, model, lora: LoraSettings, seeds: list[int]):
        if not seeds:
            raise ValueError("Adapters: no seeds (one per adapter)")
        self.model, self.lora, self.seeds = model, lora, list(seeds)
        self.active = None  # adapters served by the next forward passes (None: the base alone)
        self.subset = None  # their indices when not all k, in order
        self.modules: dict[str, object] = {}  # module name -> StackedLoRALinear
        self._originals: dict[str, object] = {}

    @property
    def k(self) -> int:
        return len(self.seeds)

    def __enter__(self) -> Adapters:
        import torch

        inits = [peft_init(self.model, self.lora, s) for s in self.seeds]
        cls = _stacked_linear_class()
        try:
            for name in inits[0]:
                base = self.model.get_submodule(name)
                a = torch.stack([init[name] for init in inits])
                layer = cls(base, self, a, self.lora.alpha / self.lora.r, self.lora.dropout)
                self._swap(name, layer)
                self._originals[name] = base
                self.modules[name] = layer
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for name, base in self._originals.items():
            self._swap(name, base)
        self._originals.clear()
        self.active = self.subset = None
        self.model.eval()

    def _swap(self, name: str, module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, module)

    def parameters(self) -> list:
        return [p for m in self.modules.values() for p in (m.lora_A, m.lora_B)]

    def select(self, adapters, rows_each: int = 1) -> None:
        """The next forward passes serve `adapters` (indices, in row order), each owning
        `rows_each` consecutive rows of the batch; None: the base alone."""
        if adapters is None:
            self.active = self.subset = None
            return
        import torch

        adapters = list(adapters)
        if not adapters or rows_each < 1:
            raise ValueError("select: at least one adapter and one row each")
        device = next(iter(self.modules.values())).lora_A.device
        self.active = (adapters, rows_each)
        self.subset = None if adapters == list(range(self.k)) else torch.tensor(adapters,
                                                                                device=device)

    def state_dict(self, i: int) -> dict:
        """Adapter i's weights under PEFT's key names (`...q_proj.lora_A.weight`)."""
        out = {}
        for name, m in self.modules.items():
            prefix = f"base_model.model.{name}"
            out[f"{prefix}.lora_A.weight"] = m.lora_A[i].detach().clone().contiguous()
            out[f"{prefix}.lora_B.weight"] = m.lora_B[i].detach().clone().contiguous()
        return out

    def save(self, i: int, folder) -> None:
        """Adapter i as a standard PEFT adapter folder (adapter_config.json and
        adapter_model.safetensors): `PeftModel.from_pretrained(base, folder)` or vLLM's
        `LoRARequest(name, id, folder)` load it."""
        from pathlib import Path

        from peft import LoraConfig
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha,
                            lora_dropout=self.lora.dropout, target_modules=list(self.lora.targets),
                            task_type="CAUSAL_LM",
                            base_model_name_or_path=getattr(self.model.config, "_name_or_path",
                                                            None))
        config.save_pretrained(str(folder))
        tmp = folder / "adapter_model.safetensors.tmp"
        save_file(self.state_dict(i), str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / "adapter_model.safetensors")  # atomic: never a half-written file


def peft_init(model, lora: LoraSettings, seed: int) -> dict:
    """{module name: A (r × in)} of the adapter PEFT builds with `seed` (its B is zero): the
    same initial adapter `student.absorb.fresh_adapter(model, lora, seed)` trains."""
    from student.absorb import fresh_adapter

    out = {}
    with fresh_adapter(model, lora, seed) as peft_model:
        inner = peft_model.base_model.model
        for name, module in inner.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                out[name] = module.lora_A["default"].weight.detach().clone()
    if not out:
        raise ValueError(f"student.lora.targets {list(lora.targets)} match no module of "
                         f"{type(model).__name__}")
    return out


class StackedAdamW:
    """torch's AdamW (weight decay 0) over stacked per-adapter parameters (first dim = adapter),
    with a learning rate and a step count per adapter. Only the adapters given to `step` move."""

    def __init__(self, params: list, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params, (self.b1, self.b2), self.eps = list(params), betas, eps
        k = self.params[0].shape[0]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros(k, dtype=torch.float64)

    def step(self, adapters: list[int], lrs: list[float]) -> None:
        import torch

        idx = torch.tensor(adapters)
        self.t[idx] += 1
        t = self.t[idx]
        c1 = 1 - self.b1 ** t  # bias corrections, in float64 like torch's scalars
        c2 = (1 - self.b2 ** t).sqrt()
        step = (torch.tensor(lrs, dtype=torch.float64) / c1)
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

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def _stack_rows(rows: list[dict], pad_id: int) -> dict:
    """One packed row per adapter, right-padded to one width. The padding is a segment of its
    own (positions from 0), so no real token attends to it, and it is never a target."""
    import torch

    width = max(r["input_ids"].shape[1] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = r["input_ids"].shape[1]
        ids[i, :n], labels[i, :n], pos[i, :n] = r["input_ids"][0], r["labels"][0], \
            r["position_ids"][0]
        pos[i, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def train(model, adapters: Adapters, jobs: list[Job], pad_id: int, progress=None) -> list[Job]:
    """Train adapter i on jobs[i], all in the same forward/backward passes; fills each job's
    `losses`. Adapters with fewer steps leave the batch when done; the base never changes."""
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
            batch = _stack_rows([jobs[i].steps[s] for i in live], pad_id)
            adapters.select(live)
            logits = model(input_ids=batch["input_ids"].to(device),
                           position_ids=batch["position_ids"].to(device), use_cache=False).logits
            # the token at t is predicted at t - 1; each adapter's loss is its mean over targets
            target = batch["labels"][:, 1:].to(device)
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                   target.flatten(), ignore_index=IGNORE,
                                                   reduction="none").view(target.shape)
            count = (target != IGNORE).sum(1).clamp(min=1)
            losses = ce.sum(1) / count
            losses.sum().backward()
            opt.step(live, [jobs[i].lrs[s] for i in live])
            opt.zero_grad()
            for i, loss in zip(live, losses.tolist(), strict=True):
                jobs[i].losses.append(loss)
            if progress is not None:
                progress(s)
    finally:
        adapters.select(None)
        model.eval()
    return jobs


def steps_total(jobs: list[Job]) -> int:
    return sum(len(j.steps) for j in jobs)


def chunks(items: list, size: int) -> list[list]:
    """`items` in consecutive groups of at most `size` (the adapters trained per pass)."""
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def pad_groups(groups: list[list]) -> tuple[list, int]:
    """Equal-size groups for `Adapters.select(rows_each=m)`: each group is padded by repeating
    its last item (the copies' results are dropped by the caller). Returns the flat rows and m."""
    m = max(len(g) for g in groups)
    if any(not g for g in groups):
        raise ValueError("pad_groups: an empty group")
    return [x for g in groups for x in g + [g[-1]] * (m - len(g))], m


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
