"""A model's architecture, counted without its weights: the numbers the memory plan
(loop.core.memory) needs, from the model's config built on the `meta` device. The config is the
local checkpoint's config.json, else the project's copy of the published one
(data/architectures/, matched by hub id), else the hub's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from loop.core.errors import PROJECT_ROOT, ConfigError

ARCHITECTURES = PROJECT_ROOT / "data" / "architectures"


@dataclass(frozen=True)
class Arch:
    name: str
    params: int  # every parameter, embeddings included
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads x head dim
    vocab: int
    lora_dims: dict  # projection name -> (in, out)

    def lora_params(self, r: int, targets) -> int:
        return self.layers * r * sum(i + o for n, (i, o) in self.lora_dims.items() if n in targets)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def activation_bytes_per_token(self, dtype_bytes: int, targets, checkpointing: bool) -> float:
        """What one token keeps for the backward over all blocks (checkpointing: each block's
        input only, plus one block's full activations recomputed at a time). Below float32,
        each LoRA target's input is also kept as the float32 copy the adapter reads."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        block = dtype_bytes * (7 * h + 4 * kv + 4 * i)
        lora_in = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": h, "gate_proj": h,
                   "up_proj": h, "down_proj": i}
        if dtype_bytes < 4:  # the adapters run in float32: a float32 copy of each input
            block += 4 * sum(n for name, n in lora_in.items() if name in targets)
        if checkpointing:
            return dtype_bytes * h * self.layers + block
        return block * self.layers


def _config_values(preset) -> dict:
    """The architecture config of a role's preset: its local checkpoint's config.json when it
    has one (bundled models once prepared, student.path=<folder>), else the project's copy of
    the published config (data/architectures/, matched by hub id)."""
    if preset.path and (Path(preset.path) / "config.json").exists():
        return json.loads((Path(preset.path) / "config.json").read_text())
    wanted = str(preset.hub_id).removesuffix("-Instruct").lower()
    for file in sorted(ARCHITECTURES.glob("*.json")):
        values = json.loads(file.read_text())
        source = values.get("_source", "").split()[0].removesuffix("-Instruct").lower()
        if source == wanted or source.replace("-coder", "") == wanted.replace("-coder", ""):
            return values
    try:  # another hub model: its config.json (the Hugging Face cache, or the hub)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(
            preset.path or preset.hub_id, revision=preset.revision,
            trust_remote_code=preset.trust_remote_code).to_dict()
    except (OSError, ValueError) as e:
        raise Unplannable(f"no architecture config for {preset.name} ({preset.path or preset.hub_id}"
                          f"): {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e


class Unplannable(ConfigError):
    """A model whose architecture the plan cannot read (no config.json here or on the hub, a
    config transformers cannot build): `loop.plan` says so; the launch check warns and lets the
    run start, as before there was a plan."""


@lru_cache(maxsize=16)
def _arch(values_json: str, name: str) -> Arch:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in json.loads(values_json).items()
              if not k.startswith("_") and k not in ("architectures", "dtype", "torch_dtype",
                                                      "quantization_config")}
    try:
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # an unknown model_type
        raise Unplannable(f"{name}: transformers cannot build its architecture on the meta "
                          f"device ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    dims = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers.0." in module_name:
            dims[module_name.rsplit(".", 1)[-1]] = (module.in_features, module.out_features)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Arch(name, sum(p.numel() for p in model.parameters()), config.num_hidden_layers,
                config.hidden_size, config.intermediate_size,
                config.num_key_value_heads * head, config.vocab_size, dims)


def architecture(preset) -> Arch:
    return arch_of(_config_values(preset), preset.name)


def arch_of(values: dict, name: str) -> Arch:
    """The Arch of a config.json's values (counted on the meta device)."""
    return _arch(json.dumps(values, sort_keys=True), name)
