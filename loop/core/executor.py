"""Where inner-loop work runs: in this process (`executor=local`, the default) or on Ray actors
that each hold a loaded student (`executor=ray`).

The loop cuts a round's missing evaluations into batches (`student.train.max_adapters`
self-edits each, one task's for ARC) and hands them to `Executor.map`, which yields each batch's
results as they come back; the loop alone writes the ledger, one batch at a time. So a worker
that dies mid-batch loses nothing that was recorded and records nothing twice: its batch goes
back to the queue, a fresh actor replaces it (wherever the cluster has room), and the batch is
retried up to `executor.max_retries` times. The results depend on the batch and its seeds, not
on the worker, so a Ray run records the same rewards as a local one (up to the last bits of
float sums when the workers use another number of threads).

    python -m loop.run executor=ray                                   # a local Ray, 2 workers
    python -m loop.run executor=ray executor.address=ray://head:10001 \\
        executor.num_workers=8 executor.gpus_per_worker=1             # a cluster
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from loop.core import faults
from student.model import load_student

log = logging.getLogger(__name__)


@dataclass
class ExecutorConfig:
    """`executor=local` (this process) or `executor=ray` (actors holding a student each)."""

    name: str = "local"
    address: str | None = None  # ray: a cluster to join (ray://host:10001 or auto); unset: start one
    num_workers: int = 2  # ray: actors, each with its own loaded student
    cpus_per_worker: float = 1.0
    # ray: GPUs per actor; null (auto): a whole GPU each where the cluster has one per worker,
    # else a share that packs whole GPUs (3 workers on 1 GPU: 0.3333 each; on 2 GPUs: 0.5), 0
    # where it has none
    gpus_per_worker: float | None = None
    max_retries: int = 3  # ray: a batch whose worker died is retried this many times

    ACCEPTS: ClassVar[dict] = {
        "name": {"one of": ("local", "ray"), "name": "executor"},
        "num_workers": ">= 1",
        "cpus_per_worker": "> 0",
        "gpus_per_worker": ("null or >= 0", "null (auto) or at least 0"),
        "max_retries": ">= 0",
    }


Score = Callable[[Any, Any, Any, Any], list]  # (student, run, judge, work item) -> results


def timed(score: Score, student, run, judge_model, item) -> tuple[list, float]:
    """One batch of the inner loop, `score(student, run, judge, item)` (the domain's
    `score_batch`): (results, seconds of compute)."""
    t0 = time.perf_counter()
    results = score(student, run, judge_model, item)
    return results, time.perf_counter() - t0


class LocalExecutor:
    """Batches one after the other on the student this process holds."""

    retries = 0

    def __init__(self, student, judge_model, score: Score):
        self.student, self.judge_model, self.score = student, judge_model, score

    def map(self, run, items: list) -> Iterator[tuple[int, tuple[list, float]]]:
        for n, item in enumerate(items):
            yield n, timed(self.score, self.student, run, self.judge_model, item)

    def close(self) -> None:
        pass


def _worker_class():
    import ray

    @ray.remote
    class StudentWorker:
        """A Ray actor holding a loaded student (and the reward judge, when there is one)."""

        def __init__(self, run, score: Score, load_judge):
            self.run, self.score_fn = run, score
            self.student = load_student(run.student)
            self.judge = load_judge(run.reward.judge, "reward.judge") if run.reward.judge else None

        def score(self, item):
            faults.point("worker")
            return timed(self.score_fn, self.student, self.run, self.judge, item)

    return StudentWorker


def worker_gpus(cfg: ExecutorConfig, cluster_gpus: float) -> float:
    """executor.gpus_per_worker resolved against the cluster's GPUs (see ExecutorConfig). A
    worker given no GPU would load its student on the CPU in float32: on a GPU cluster that is
    never what auto means."""
    if cfg.gpus_per_worker is not None:
        return float(cfg.gpus_per_worker)
    if cluster_gpus <= 0:
        return 0.0
    # 1 / (workers per GPU, rounded up): shares that fill whole GPUs (3 workers on 2 GPUs: 0.5
    # each, as Ray cannot place two 0.67 shares on one GPU and the third would wait forever)
    per_gpu = -(-max(1, cfg.num_workers) // max(1, int(cluster_gpus)))
    return int(1e4 / per_gpu) / 1e4


class RayExecutor:
    """Batches spread over `num_workers` actors; a dead actor's batch is retried on a new one."""

    def __init__(self, run, score: Score, load_judge):
        import ray

        cfg = run.executor
        self.cfg, self.retries = cfg, 0
        self.started = not ray.is_initialized()
        if self.started:
            local = cfg.address is None
            ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False,
                     # a local Ray gets a small object store: batches and results are small
                     **({"object_store_memory": 256 * 2**20} if local else {}))
        self.gpus = worker_gpus(cfg, ray.cluster_resources().get("GPU", 0.0))
        self.worker = _worker_class().options(num_cpus=cfg.cpus_per_worker, num_gpus=self.gpus)
        self.run, self.args = run, (score, load_judge)
        self.actors = [self.worker.remote(run, *self.args) for _ in range(cfg.num_workers)]
        log.info("ray: %d workers (%s CPU, %s GPU each) at %s", cfg.num_workers,
                 cfg.cpus_per_worker, self.gpus, cfg.address or "a local Ray")

    def map(self, run, items: list) -> Iterator[tuple[int, tuple[list, float]]]:
        import ray
        from ray.exceptions import RayActorError

        queue, tries = deque(range(len(items))), dict.fromkeys(range(len(items)), 0)
        idle, running = list(self.actors), {}
        while queue or running:
            while queue and idle:
                actor, n = idle.pop(), queue.popleft()
                running[actor.score.remote(items[n])] = (actor, n)
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, n = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:
                tries[n] += 1
                self.retries += 1
                if tries[n] > self.cfg.max_retries:
                    raise RuntimeError(f"an inner-loop batch lost its worker {tries[n]} times; "
                                       f"giving up (executor.max_retries={self.cfg.max_retries}). "
                                       "What was recorded is kept: resume the run") from e
                log.warning("ray: a worker died during a batch (%s); retrying it on a new worker "
                            "(%d/%d)", type(e).__name__, tries[n], self.cfg.max_retries)
                self.actors.remove(actor)
                replacement = self.worker.remote(self.run, *self.args)
                self.actors.append(replacement)
                idle.append(replacement)
                queue.appendleft(n)
                continue
            idle.append(actor)
            yield n, result

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started:
            ray.shutdown()


def make(run, student, judge_model, score: Score, load_judge: Callable):
    """The executor `executor.name` names, scoring batches with `score` (the domain's
    `score_batch`). Ray workers load their own student and, with `reward.judge`, their judge
    with `load_judge(preset, key)` (loop.core.judge)."""
    if run.executor.name == "local":
        return LocalExecutor(student, judge_model, score)
    if run.executor.name == "ray":
        return RayExecutor(run, score, load_judge)
    raise ValueError(f"unknown executor '{run.executor.name}'")
