"""`accelerate launch -m loop.mstep <round_r/mstep_job.json>`: one process of a data-parallel
M-step (`teacher.train.processes=N > 1`; loop.core.mstep writes the job and launches this).

Every process loads the teacher on its own device and TRL trains one LoRA data-parallel (DDP);
the main process saves the adapter. The same command trains a job by hand, e.g. on a bigger
machine than the loop's.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from loop.core.mstep import read_job


def main(argv: list[str] | None = None) -> int:
    import torch

    from loop.core import faults
    from teacher.model import load_teacher
    from teacher.train import train_adapter

    parser = argparse.ArgumentParser(prog="accelerate launch -m loop.mstep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path, help="a round's mstep_job.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, pairs, seed, out, start_from = read_job(args.job)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(rank)
    model, tokenizer = load_teacher(cfg, device=device)
    train_adapter(model, tokenizer, pairs, cfg, out, seed, start_from=start_from,
                  fault=faults.point)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
