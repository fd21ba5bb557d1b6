"""`python -m loop.run teacher=<preset> student=<preset> [key=value ...]`: the entry point.

Thin on purpose: compose (Hydra) -> typed config -> check the models are reachable -> run.
Only Hydra and the config dataclasses are imported at module level, so `--help` and
`--cfg job` answer without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import hydra

from loop.cli import check_models, launch
from loop.config import CONF_DIR, RunConfig, register

register()


def execute(run: RunConfig, out_dir: Path) -> None:
    """What a run does. Until the loop lands: the smallest real piece (loop.preview)."""
    from loop import preview

    check_models(run)
    preview.run(run)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg) -> None:
    launch(cfg, execute)


if __name__ == "__main__":
    main()
