"""`python -m loop.run teacher=<preset> student=<preset> [key=value ...]`: the entry point.

Thin on purpose: compose (Hydra) -> typed config -> check the models are reachable ->
`loop.core.rounds.run` (the rounds; tests call it directly).
Only Hydra and the config dataclasses are imported at module level, so `--help` and
`--cfg job` answer without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import hydra

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)
from loop.core.cli import check_models, command_line, launch
from loop.core.config import CONF_DIR, RunConfig, register

register()


def execute(run: RunConfig, out_dir: Path) -> None:
    """Check the settings (and, on a GPU, that the run's memory plan fits) before the models are
    looked for, then the rounds (loop.core.rounds)."""
    from loop.core import rounds

    rounds.validate(run)  # before a hub download: a run that cannot fit is told so first
    check_models(run)
    rounds.run(run, out_dir, command=command_line("loop.run"))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg) -> None:
    launch(cfg, execute)


if __name__ == "__main__":
    main()
