"""k LoRA adapters held at once on the shared frozen student (`student.batched` says why and
how they train): each LoRA target `nn.Linear` replaced by a `StackedLoRALinear` holding every
adapter's A and B stacked, routing of rows or tokens to adapters, and each adapter saved as a
standard PEFT folder.
"""

from __future__ import annotations

from pathlib import Path

from student.absorb import fresh_adapter, peft_weights
from student.config import LoraSettings


def _stacked_linear_class():
    import torch
    from torch import nn

    class StackedLoRALinear(nn.Module):
        """A frozen `nn.Linear` plus k LoRA updates, one per adapter, applied to its own rows."""

        def __init__(self, base: nn.Linear, owner: Adapters, a: torch.Tensor, scale: float,
                     dropout: float, b: torch.Tensor | None = None):
            super().__init__()
            self.base, self.scale, self.dropout = base, scale, dropout
            self._owner = [owner]  # a list: not registered as a submodule
            self.lora_A = nn.Parameter(a)  # k × r × in
            self.lora_B = nn.Parameter(  # k × out × r, zero for fresh adapters
                torch.zeros(a.shape[0], base.out_features, a.shape[1], dtype=a.dtype,
                            device=a.device) if b is None else b)

        def forward(self, x):
            y = self.base(x)
            routing = self._owner[0].tokens
            if routing is None:
                return y
            sizes, ids, per_row, index = routing
            if per_row:  # runs of whole rows: as many tokens per row as this pass has
                sizes = [n * x.shape[-2] for n in sizes]
            h = x.reshape(-1, x.shape[-1]).to(self.lora_A.dtype)
            if self.dropout and self.training:
                h = nn.functional.dropout(h, self.dropout)
            if len(set(sizes)) == 1:  # equal runs: two batched matmuls for all adapters
                a = self.lora_A if index is None else self.lora_A[index]
                b = self.lora_B if index is None else self.lora_B[index]
                h = h.view(len(ids), sizes[0], h.shape[-1])
                delta = torch.bmm(torch.bmm(h, a.transpose(1, 2)) * self.scale,
                                  b.transpose(1, 2))
            else:  # unbind: one gradient buffer per stacked matrix, not one per adapter
                a, b = self.lora_A.unbind(0), self.lora_B.unbind(0)
                delta = torch.cat([((c @ a[i].T) * self.scale) @ b[i].T
                                   for c, i in zip(h.split(sizes), ids, strict=True)])
            return y + delta.reshape(y.shape).to(y.dtype)

    return StackedLoRALinear


class Adapters:
    """k fresh LoRA adapters installed on `model` (a frozen causal LM), one per seed, or k
    adapters trained elsewhere (`weights`: one `student.absorb.peft_weights` dict each, e.g.
    trained alone with PEFT by `student.absorb.train_alone`), to be answered together.

        with Adapters(model, lora, seeds) as adapters:
            train(model, adapters, jobs, pad_id)  # all k in the same passes
            adapters.route(row_owners)            # then each row's adapter, rows grouped
            model(...) / model.generate(...)
            adapters.save(i, folder)              # adapter i in PEFT's format
        # the base's modules are exactly the originals again
    """

    def __init__(self, model, lora: LoraSettings, seeds: list[int],
                 weights: list[dict] | None = None):
        if not seeds:
            raise ValueError("Adapters: no seeds (one per adapter)")
        if weights is not None and len(weights) != len(seeds):
            raise ValueError(f"Adapters: {len(weights)} adapters' weights for {len(seeds)} seeds")
        self.model, self.lora, self.seeds, self._weights = model, lora, list(seeds), weights
        self.tokens = None  # the next passes' routing (None: the base alone): see `route`
        self.modules: dict[str, object] = {}  # module name -> StackedLoRALinear
        self._originals: dict[str, object] = {}

    @property
    def k(self) -> int:
        return len(self.seeds)

    def __enter__(self) -> Adapters:
        import torch

        if self._weights is None:
            inits = [{name: (a, None) for name, a in peft_init(self.model, self.lora, s).items()}
                     for s in self.seeds]
        else:
            inits = self._weights
            if any(w.keys() != inits[0].keys() for w in inits):
                raise ValueError("Adapters: the adapters' weights name different modules")
        cls = _stacked_linear_class()
        try:
            for name in inits[0]:
                base = self.model.get_submodule(name)
                a = torch.stack([init[name][0] for init in inits])
                b = None if self._weights is None else torch.stack([w[name][1] for w in inits])
                layer = cls(base, self, a, self.lora.alpha / self.lora.r, self.lora.dropout, b)
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
        self.tokens = None
        self.model.eval()

    def _swap(self, name: str, module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, module)

    def parameters(self) -> list:
        return [p for m in self.modules.values() for p in (m.lora_A, m.lora_B)]

    def route(self, owners) -> None:
        """The next forward passes take adapter `owners[row, t]` for each token (a 2-D tensor:
        rows may mix adapters) or `owners[row]` for each row (a 1-D tensor or a list: rows of
        any length, so also every step of `generate`). Read row after row, each adapter's tokens
        must form one contiguous run (student.batched._rows packs them so); they are multiplied
        by that adapter's own matrices. None: the base alone."""
        if owners is None:
            self.tokens = None
            return
        import torch

        owners = torch.as_tensor(owners)
        ids, sizes = torch.unique_consecutive(owners.flatten(), return_counts=True)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("route: an adapter's tokens are not one contiguous run")
        ids = ids.tolist()
        device = next(iter(self.modules.values())).lora_A.device
        index = None if ids == list(range(self.k)) else torch.tensor(ids, device=device)
        self.tokens = (sizes.tolist(), ids, owners.dim() == 1, index)

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
    with fresh_adapter(model, lora, seed) as peft_model:
        out = {name: a for name, (a, _) in peft_weights(peft_model).items()}
    if not out:
        raise ValueError(f"student.lora.targets {list(lora.targets)} match no module of "
                         f"{type(model).__name__}")
    return out
