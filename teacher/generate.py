"""Sampling self-edits from the teacher, behind one interface for every backend.

`Generator` is the seam: the transformers backend here (the embedded default, CPU or GPU), the
vLLM backend in its own module later. Both take one seed per prompt, so a sample depends on its
own seed and prompt only, never on which other prompts shared its batch: a resumed run that
samples only the missing self-edits gets the same ones an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from teacher.config import SamplingSettings
from teacher.prompts import Prompt, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One self-edit as the teacher wrote it."""

    text: str
    # stopped by max_new_tokens rather than by the model's end of text: its last line may be
    # cut mid-way (the M-step never teaches the teacher to stop there)
    cut: bool = False


class Generator(Protocol):
    def sample(self, prompts: list[Prompt], seeds: list[int]) -> list[Sample]: ...
    def use_adapter(self, path: Path | None) -> None: ...


class SeededSampler:
    """A logits processor that draws each row's next token with that row's own generator.

    It returns logits where only the drawn token is finite, so `generate(do_sample=False)`
    (greedy) keeps exactly the drawn token. Temperature and nucleus (top-p) filtering are
    applied here, and only here: the model's own generation_config is not consulted.
    """

    CANDIDATES = 1024  # the nucleus is looked for among the top tokens first (a full sort is slow)

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        if self.temperature <= 0:  # greedy: nothing to draw
            return scores
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        out = torch.full_like(scores, float("-inf"))
        top = min(self.CANDIDATES, probs.shape[-1])
        for row, gen in enumerate(self.generators):
            p, order = probs[row].topk(top)
            if p.sum() < self.top_p:  # a flat distribution: the nucleus needs the full ranking
                p, order = probs[row].sort(descending=True)
            # drop a token when the tokens ranked above it already hold top_p of the mass
            p = p.masked_fill(p.cumsum(-1) - p >= self.top_p, 0.0)
            out[row, order[torch.multinomial(p, 1, generator=gen)]] = 0.0
        return out


def sample(model, tokenizer, prompts: list[Prompt], seeds: list[int], *, instruct: bool,
           settings: SamplingSettings) -> list[Sample]:
    """One completion per prompt, each drawn with its own seed, `settings.batch_size` per call.

    (Sharing one prompt pass between a context's k samples was measured and lost: on 2 CPU
    cores a decode step costs 0.21 s at batch 1, 0.46 s at 4 and 0.55 s at 8, so a wide batch
    of several contexts beats k narrow ones; the prompt pass is the smaller cost.)
    """
    out: list[Sample] = []
    step = max(1, settings.batch_size)
    for i in range(0, len(prompts), step):
        out += _sample_batch(model, tokenizer, prompts[i : i + step], seeds[i : i + step],
                             instruct=instruct, settings=settings)
    return out


def _sample_batch(model, tokenizer, prompts: list[Prompt], seeds: list[int], *, instruct: bool,
                  settings: SamplingSettings) -> list[Sample]:
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    texts = [render(tokenizer, p, instruct) for p in prompts]
    # The chat template already holds the special tokens it needs.
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not instruct)
    batch = batch.to(model.device)
    sampler = SeededSampler(seeds, settings.temperature, settings.top_p, model.device)
    # An explicit config: checkpoints ship sampling defaults (repetition penalties, top_k) that
    # would otherwise change what `temperature` and `top_p` mean from one preset to the next.
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=settings.max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config,
                             logits_processor=LogitsProcessorList([sampler]))
    new = out[:, batch["input_ids"].shape[1]:]
    # a row that never drew an end-of-text token was stopped by max_new_tokens (every row of a
    # model without one is)
    ends = [t for t in (eos if isinstance(eos, list) else [eos]) if t is not None]
    ended = (torch.isin(new, torch.tensor(ends, device=new.device)).any(dim=1) if ends
             else torch.zeros(len(new), dtype=torch.bool))
    return [Sample(t.strip(), cut=not bool(e))
            for t, e in zip(tokenizer.batch_decode(new, skip_special_tokens=True), ended, strict=True)]


class TransformersGenerator:
    """The teacher's base model, optionally with one LoRA adapter (the latest round's) on top."""

    def __init__(self, model, tokenizer, *, instruct: bool, settings: SamplingSettings):
        self.base = self.model = model
        self.tokenizer, self.instruct, self.settings = tokenizer, instruct, settings
        self.adapter: Path | None = None
        self._lock, self._merged_depth = threading.RLock(), 0  # see `merged`

    def sample(self, prompts: list[Prompt], seeds: list[int]) -> list[Sample]:
        with self.merged() as model:
            return sample(model, self.tokenizer, prompts, seeds, instruct=self.instruct,
                          settings=self.settings)

    def mergeable(self) -> bool:
        """Whether the adapter's update can be added into the base's weights exactly as PEFT's
        layers add it: float32 weights (a bf16 sum would round a small update away) and plain
        LoRA on Linear layers only (no DoRA, bias, embeddings or modules_to_save)."""
        import torch

        name = self.model.active_adapter
        config = self.model.peft_config[name]
        if (getattr(config, "use_dora", False) or getattr(config, "bias", "none") != "none"
                or getattr(config, "modules_to_save", None)):
            return False
        for module in self.model.modules():
            if name in getattr(module, "lora_embedding_A", {}):
                return False
            if name in getattr(module, "lora_A", {}) and (
                    not hasattr(module, "get_delta_weight")
                    or module.base_layer.weight.dtype != torch.float32):
                return False
        return True

    @contextmanager
    def merged(self):
        """The model to sample from: with an adapter and `settings.merged` (where `mergeable`),
        the base with the adapter's update (PEFT's own `get_delta_weight`) added into its weights
        and the adapter switched off, for the `with` block only; the base's weights are then
        copied back from saved ones, bit for bit (a subtraction would not restore them
        exactly). One block at a time (a lock); a nested block gets the merged model as is."""
        with self._lock:
            if (self.model is self.base or not self.settings.merged or self._merged_depth
                    or not self.mergeable()):
                yield self.model
                return
            import torch

            name = self.model.active_adapter
            layers = [m for m in self.model.modules() if name in getattr(m, "lora_A", {})]
            saved = []
            self._merged_depth += 1
            try:
                with torch.no_grad():
                    for m in layers:
                        weight = m.base_layer.weight
                        saved.append(weight.detach().clone())
                        weight += m.get_delta_weight(name).to(weight.dtype)
                with self.model.disable_adapter():
                    yield self.model
            finally:
                self._merged_depth -= 1
                with torch.no_grad():
                    for m, weight in zip(layers, saved, strict=False):
                        m.base_layer.weight.copy_(weight)

    def use_adapter(self, path: Path | None) -> None:
        """Sample from base + the adapter at `path` from now on (None: the base alone).

        The adapter is loaded on the shared base; its update enters the base's weights only
        within a sampling call (`merged`), which leaves them exactly as they were.
        """
        from peft import PeftModel

        if self.model is not self.base:
            self.base = self.model.unload()  # the clean base back
        self.model, self.adapter = self.base, path
        if path is not None:
            self.model = PeftModel.from_pretrained(self.base, str(path)).eval()
            log.info("teacher now samples with the adapter %s", path)
