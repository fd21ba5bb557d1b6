"""What every bench measures with, whatever the domain: the composed config, peak memory, the
machine's dense matmul peak, and seconds and FLOPs per phase."""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext

from loop.core.config import CONF_DIR, RunConfig, register, to_run_config


def compose(overrides: list[str]) -> RunConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_run_config(hydra_compose("config", overrides=overrides))


class PeakMemory:
    """Peak resident memory of this process (CPU, sampled every 20 ms) or peak CUDA memory
    allocated, over a `with` block, in GiB."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            self.peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def matmul_peak(dtype, device: str, n: int = 1024, repeats: int = 20) -> float:
    """This machine's dense matmul throughput in GFLOP/s (median of `repeats`, n × n × n)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


class Phases:
    """Seconds (and, with `count`, floating-point operations) per phase of the inner loop, for
    `absorb_and_score_many(..., phase=)`."""

    def __init__(self, count: bool = False):
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.count = count

    @contextmanager
    def __call__(self, name: str):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False) if self.count else nullcontext()
        t0 = time.perf_counter()
        with counter:
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        if self.count:
            self.flops[name] = self.flops.get(name, 0) + counter.get_total_flops()


