"""The M-step: the teacher trained on a round's kept (prompt -> self-edit) pairs, in this process
or on several (`accelerate launch -m loop.mstep <job.json>`).

`m_step` trains one LoRA with TRL (`teacher.train`) and saves it staged and renamed into
`round_<r>/teacher_adapter`. With `teacher.train.processes=N > 1` it writes the round's M-step
as a job file (`round_<r>/mstep_job.json`: the teacher's config, the kept pairs, the seed, the
adapter to start from and where to save) and runs

    accelerate launch --multi_gpu --num_processes N -m loop.mstep round_<r>/mstep_job.json

itself. Every process loads the teacher on its own device and TRL trains one LoRA data-parallel
(DDP); `teacher.train.batch_size` stays the global batch, split evenly over the processes. The
main process saves the adapter (staged and renamed, like a one-process M-step) and the loop reads
it back. The same command trains a job by hand, e.g. on a bigger machine than the loop's.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from loop.core.faults import point
from loop.core.ledger import write_json_atomic
from loop.core.seeds import derive_seed
from teacher.config import TeacherConfig
from teacher.prompts import Prompt
from teacher.train import train_adapter

if TYPE_CHECKING:  # annotations only: a launched M-step process needs neither
    from loop.core.config import RunConfig
    from loop.core.sampling import SelfEdit

log = logging.getLogger(__name__)


def write_job(path: Path, cfg: TeacherConfig, pairs: list[tuple[Prompt, str]], seed: int,
              out: Path, start_from: Path | None) -> None:
    write_json_atomic(path, {"teacher": asdict(cfg), "pairs": [list(p) for p in pairs],
                             "seed": seed, "out": str(out),
                             "start_from": str(start_from) if start_from else None})


def read_job(path: Path) -> tuple[TeacherConfig, list[tuple[str, str]], int, Path, Path | None]:
    from omegaconf import OmegaConf

    job = json.loads(path.read_text())
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TeacherConfig), job["teacher"]))
    return (cfg, [tuple(p) for p in job["pairs"]], job["seed"], Path(job["out"]),
            Path(job["start_from"]) if job["start_from"] else None)


def launch_command(job: Path, processes: int) -> list[str]:
    """`accelerate launch` for the job: one process per GPU (NCCL). Without a GPU the same
    command starts CPU processes that train over gloo (`accelerate launch --cpu` would start one
    process only; the trainer's use_cpu picks gloo). Mixed precision is the trainer's choice
    (bf16 on GPUs that have it), so accelerate's is left at no."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
            "no", "-m", "loop.mstep", str(job)]


def _term_with_parent():
    """On Linux: the child gets SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG); the
    launcher then stops its training processes. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # bound here, not in the forked child
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def run_launched(job: Path, processes: int) -> None:
    """Run the job under `accelerate launch` and wait; a failed launch raises with the command."""
    cmd = launch_command(job, processes)
    log.info("M-step on %d processes: %s", processes, " ".join(cmd))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # its output (TRL's progress, errors) goes to ours; it gets SIGTERM if the loop dies (a
    # killed loop must not leave trainers behind that would race a resumed run's M-step)
    done = subprocess.run(cmd, env=env, preexec_fn=_term_with_parent())
    if done.returncode != 0:
        raise RuntimeError(f"the M-step under accelerate launch failed (exit {done.returncode}; its "
                           f"output is above); rerun it by hand with: {' '.join(cmd)}")


def m_step_text(edit: SelfEdit) -> str:
    """What the M-step teaches the teacher to write for a kept self-edit: the text as the
    teacher ended it; for one that max_new_tokens cut, its complete lines only. The teacher
    should learn to end a self-edit, never to stop mid-line; the lines it completed carry most
    of what earned the reward, so they are kept rather than the sample dropped. Empty: nothing
    to train on (such a self-edit is never kept)."""
    if not edit.cut:
        return edit.text.strip()
    return "\n".join(edit.text.strip().splitlines()[:-1]).strip()


def m_step(teacher, run: RunConfig, r: int, contexts: list, edits, kept_keys,
           previous: Path | None, out: Path, prompt: Callable) -> tuple[Path | None, list[float]]:
    """Train the round's teacher adapter on the kept pairs; `prompt(run, context)`: the
    domain's teacher prompt."""
    model, tokenizer = teacher
    by_id = {c.id: c for c in contexts}
    pairs = [(prompt(run, by_id[c]), text) for c, i in sorted(kept_keys)
             if (text := m_step_text(edits[(c, i)]))]
    if not pairs:
        log.warning("round %d: no self-edit passed the filter; the teacher stays as it was", r)
        return previous, []
    start = None if run.teacher.train.from_base else previous
    seed = derive_seed(run.seed, "teacher", r)
    if run.teacher.train.processes > 1:  # data-parallel, in `accelerate launch` processes
        job = out.parent / "mstep_job.json"
        write_job(job, run.teacher, pairs, seed, out, start)
        run_launched(job, run.teacher.train.processes)
        return out, json.loads((out / "train_losses.json").read_text())
    stats = train_adapter(model, tokenizer, pairs, run.teacher, out, seed, start_from=start,
                          fault=point)
    return out, stats.losses
