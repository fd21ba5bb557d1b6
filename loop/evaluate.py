"""`python -m loop.evaluate`: score conditions on an evaluation set and print one row per condition.

    python -m loop.evaluate                                    # base and passage on eval200
    python -m loop.evaluate task.n_contexts=50                 # a seeded, recorded subset
    python -m loop.evaluate task.data=my_passages.json evaluate.conditions=[base]

    python -m loop.evaluate evaluate.conditions=[base,passage,teacher_base,teacher] \
        teacher.adapter=outputs/<a loop.run folder>       # did training the teacher help?

Conditions (rows):
- `base`: the frozen student, no adaptation (cached once per context: loop.core.baseline);
- `passage`: a fresh LoRA trained on the passage alone (the title-prefixed passage as one
  sequence), then discarded;
- `passage_matched`: the same passage alone, trained for as many optimiser steps as the
  self-edit row's (`teacher`, else `teacher_base`, else `external`) on that passage, their
  mean: a self-edit row's gain over it is what the self-edit's content adds, not more training;
- `teacher`: a fresh LoRA trained on self-edits of the teacher (`evaluate.samples` per
  passage, each absorbed separately with SEAL's data rule: its lines plus the passage), with the
  trained adapter `teacher.adapter` when one is given;
- `teacher_base`: the same, from the teacher without any adapter (the untrained teacher).
- `external`: the same, with self-edits from an OpenAI-compatible endpoint
  (`evaluate.external.url` and `.model`; the key from the environment: teacher.external), e.g. a
  larger hosted model, a `vllm serve`, or `python -m loop.serve`.
  The self-edit conditions draw with the same seeds (the prompt and the sample index decide
  them) and absorb with the same seeds, so their differences are paired down to the sample.

Every condition is scored on the same contexts, so differences are paired: the table shows each
condition's mean over contexts with a 95% bootstrap interval, and its paired difference from
every condition listed before it. Results go to the run folder (`results.json`, `scores.jsonl`,
`self_edits.jsonl`, `results.png`) and to an MLflow run.

A killed evaluation continues with `resume=<its folder>` (same overrides): self-edits and
per-passage scores already recorded are read back, never recomputed. A resume may also add
conditions (a longer `evaluate.conditions`, with `teacher.adapter` or `evaluate.external.*` for
a row that is new): the recorded rows are kept and only the new ones computed, so a trained
teacher is compared with the rows of an evaluation that ran while it trained.

Each domain owns its rows: SQuAD's in `loop.tasks.squad.rows`; with `task=arc` the rows are
ARC's (base, teacher_base, teacher, oracle), in `loop.tasks.arc.rows`. What every evaluation
shares (launch checks, the run folder, sampling the self-edits, intervals, the table) is in
`loop.core.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import hydra

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)
from loop.core.cli import command_line, launch
from loop.core.config import CONF_DIR, RunConfig, register

register()


def evaluate(run: RunConfig, out_dir: Path, command: str = "python -m loop.evaluate") -> dict:
    """Score every condition on every selected context; write and return the results.

    With `resume=<folder>` the folder's recorded self-edits and scores are read back and only
    the missing ones computed (the config must match the folder's `run.json`)."""
    from loop.tasks import domain

    return domain(run.task).evaluate(run, out_dir, command)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg) -> None:
    launch(cfg, lambda run, out_dir: evaluate(run, out_dir, command_line("loop.evaluate")))


if __name__ == "__main__":
    main()
