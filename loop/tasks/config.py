"""The `task` config group (TaskConfig): a leaf, so the run config can import it without the
domains' code."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class TaskConfig:
    name: str = MISSING  # the task's name; also the MLflow experiment's name
    format: str = "squad"  # squad (passages and questions) or arc (few-shot grid tasks)
    data: str = MISSING  # a JSON file in the shared format; relative paths are from the cwd
    n_contexts: int | None = None  # a seeded subset of this many contexts (None: all of them)
    # loop.evaluate: `single`, one fresh student per passage (the paper's main setting);
    # `together`, all passages (and their self-edits) absorbed in one training run, then every
    # question asked (the paper's continued-pretraining setting, task=squad_cpt)
    absorb: str = "single"
    # arc: the solutions file; None: the challenges file's name with "challenges" -> "solutions"
    solutions: str | None = None
    ids: list[str] | None = None  # only these contexts (ARC task ids; SQuAD "<file>/<index>")
    # what loop.evaluate reads by default (the held-out set): its data file and ids
    eval_data: str | None = None
    eval_ids: list[str] | None = None
    # a development part of task.data, the same for every run and seed: `train` leaves its
    # `dev_size` passages out (what the loop trains the teacher on), `dev` keeps only them
    # (where every choice is made, so the evaluation set is touched once), `all` keeps all
    split: str = "all"
    dev_size: int = 50
