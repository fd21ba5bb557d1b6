"""Shared fixtures: Hydra composition, the bundled models, tiny random Llama/Qwen2 models.

Tiny models have the real architectures (same module names) and the real tokenizers of the
bundled models, with random weights: fast unit tests that exercise real code paths.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test ever waits on a model hub

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import loop.tasks  # noqa: E402,F401 (hands loop.core the domains, as every entry point does)
from loop.core import assets  # noqa: E402
from loop.core.config import CONF_DIR, RunConfig, register, to_run_config  # noqa: E402

register()
PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
ARCHITECTURE = {"smollm135m": "LlamaForCausalLM", "qwen0.5b": "Qwen2ForCausalLM"}


def compose_run(*overrides: str) -> RunConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_run_config(compose("config", overrides=list(overrides)))


def bundled_dir(name: str):
    path = assets.bundled_model_dir(name)
    if not assets.is_prepared(name):
        pytest.fail(f"bundled model {name} is not prepared at {path}: run `make setup` "
                    "(or `python -m loop.assets`) before the tests")
    return path


def _tiny(name: str, tmp_path_factory) -> str:
    """A 2-layer random model with the bundled model's architecture and tokenizer, saved."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = bundled_dir(name)
    config = AutoConfig.from_pretrained(source)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       initializer_range=0.2))  # wider than 0.02: varied, non-degenerate text
    if getattr(config, "layer_types", None):  # Qwen2 lists one attention type per layer
        config.layer_types = config.layer_types[:2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = tmp_path_factory.mktemp(f"tiny-{name}")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return _tiny("smollm135m", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    return _tiny("qwen0.5b", tmp_path_factory)


@pytest.fixture
def batches(monkeypatch) -> dict[str, list[list[int]]]:
    """The seeds of every batch the teacher sampled (`sample`) and the student absorbed and
    scored (`absorb`), in call order: a spy that records and calls the real functions. A resume
    that reproduces an uninterrupted run must form the same batches (results depend on their
    batch companions in the last float bits, which differ between CPUs)."""
    from loop.tasks.squad import absorb as squad_absorb
    from teacher.generate import TransformersGenerator

    seen: dict[str, list[list[int]]] = {"sample": [], "absorb": []}
    sample, absorb = TransformersGenerator.sample, squad_absorb.absorb_and_score_many

    def spy_sample(self, prompts, seeds):
        seen["sample"].append(list(seeds))
        return sample(self, prompts, seeds)

    def spy_absorb(model, tokenizer, jobs, *args, **kwargs):
        seen["absorb"].append([seed for _, _, seed in jobs])
        return absorb(model, tokenizer, jobs, *args, **kwargs)

    monkeypatch.setattr(TransformersGenerator, "sample", spy_sample)
    monkeypatch.setattr(squad_absorb, "absorb_and_score_many", spy_absorb)
    return seen


def trainable_samples(folder) -> set[tuple[str, int]]:
    """The (context, sample)s of a round folder's self-edits that the M-step can learn from: a
    random tiny teacher's text is cut at max_new_tokens, and a cut single line has nothing left
    to train on. Which samples those are depends on the CPU's rounding (Intel and AMD differ),
    so tests derive what a round keeps from this rather than hard-coding it."""
    from loop.core import mstep, sampling
    from loop.core.ledger import read_jsonl

    return {(e["context"], e["sample"]) for e in read_jsonl(folder / "self_edits.jsonl")
            if mstep.m_step_text(sampling.SelfEdit(e["context"], e["sample"], e["seed"], e["text"],
                                                   sampling.text_hash(e["text"]), 0.0, e["cut"]))}
