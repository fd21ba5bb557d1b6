"""The baseline is computed once per context and read back from the run folder."""

from __future__ import annotations

from loop.core.baseline import BaselineCache


def test_computed_once_then_read_back(tmp_path):
    calls = []

    def compute(ctx):
        def f():
            calls.append(ctx)
            return [{"f1": len(calls)}]
        return f

    path = tmp_path / "baseline.jsonl"
    cache = BaselineCache(path, "smollm135m")
    assert cache.get("a", compute("a")) == [{"f1": 1}]
    assert cache.get("a", compute("a")) == [{"f1": 1}]
    assert cache.get("b", compute("b")) == [{"f1": 2}]
    assert calls == ["a", "b"]
    resumed = BaselineCache(path, "smollm135m")  # a new process on the same run folder
    assert resumed.get("a", compute("a")) == [{"f1": 1}] and calls == ["a", "b"]
    other = BaselineCache(path, "qwen0.5b")  # another student's baseline is not this one
    assert other.get("a", compute("a")) == [{"f1": 3}] and calls == ["a", "b", "a"]
