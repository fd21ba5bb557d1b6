"""The E-step's sampling: k self-edits per context from the teacher, one derived seed each,
recorded line by line (`round_<r>/self_edits.jsonl`) so a resume redraws none."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loop.core import faults
from loop.core.config import RunConfig
from loop.core.ledger import append_jsonl, batches_to_run, read_jsonl
from loop.core.seeds import derive_seed
from loop.core.vllm import teacher_engine
from teacher.generate import TransformersGenerator
from teacher.vllm_backend import VLLMGenerator


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SelfEdit:
    context: str
    sample: int
    seed: int
    text: str
    hash: str
    seconds: float  # this sample's share of its generate call
    cut: bool = False  # stopped by teacher.sampling.max_new_tokens, not by the teacher


def make_generator(run: RunConfig, teacher):
    """The teacher's sampler: in process on the loaded teacher, or a vLLM engine."""
    if run.teacher.backend == "vllm":
        return VLLMGenerator(teacher_engine(run), run.teacher, run.teacher.sampling)
    return TransformersGenerator(*teacher, instruct=run.teacher.instruct,
                                 settings=run.teacher.sampling)


def sample_round(generator, run: RunConfig, r: int, contexts: list, path: Path,
                 prompt: Callable) -> dict[tuple[str, int], SelfEdit]:
    """k self-edits per context; those already in `path` are read back, the rest sampled.
    `prompt(run, context)`: the domain's teacher prompt."""
    from tqdm import tqdm

    edits = {(row["context"], row["sample"]): SelfEdit(**row) for row in read_jsonl(path)}
    by_id = {c.id: c for c in contexts}
    keys = [(c.id, i) for c in contexts for i in range(run.loop.k)]
    batches = batches_to_run(keys, run.teacher.sampling.batch_size, edits)
    todo = sum(k not in edits for batch in batches for k in batch)
    with tqdm(total=todo, desc=f"round {r}: sampling", unit="self-edit") as bar:
        for batch in batches:  # a partly recorded batch is drawn whole: the same companions
            seeds = [derive_seed(run.seed, "sample", r, cid, i) for cid, i in batch]
            prompts = [prompt(run, by_id[cid]) for cid, _ in batch]
            t0 = time.perf_counter()
            samples = generator.sample(prompts, seeds)
            share = (time.perf_counter() - t0) / len(batch)
            missing = [(k, seed, s) for k, seed, s in zip(batch, seeds, samples, strict=True)
                       if k not in edits]
            for (cid, i), seed, s in missing:
                e = SelfEdit(cid, i, seed, s.text, text_hash(s.text), share, s.cut)
                append_jsonl(path, dataclasses.asdict(e))
                edits[(cid, i)] = e
            bar.update(len(missing))
            faults.point("sample")
    return edits
