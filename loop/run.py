"""`python -m loop.run teacher=<preset> student=<preset> [key=value ...]`: the entry point.

Thin on purpose: compose (Hydra) -> typed config -> check the models are reachable -> run.
Only Hydra and the config dataclasses are imported at module level, so `--help` and
`--cfg job` answer without importing torch.
"""

from __future__ import annotations

import logging
import sys

import hydra

from loop.config import CONF_DIR, ConfigError, RunConfig, register, to_run_config

log = logging.getLogger(__name__)
register()


def check_models(run: RunConfig) -> None:
    """Fail at launch, not an hour in, when a role's model cannot be loaded here."""
    from loop.assets import check_available

    for role, m in (("teacher", run.teacher), ("student", run.student)):
        check_available(role, m.name, m.hub_id, m.path, m.revision)


def execute(run: RunConfig) -> None:
    """What a run does. Until the loop lands: the smallest real piece (loop.preview)."""
    from loop import preview

    check_models(run)
    preview.run(run)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from loop.assets import AssetError
    from loop.tasks import DataError

    print(f"run folder: {HydraConfig.get().runtime.output_dir}")
    try:
        execute(to_run_config(cfg))
    except (AssetError, ConfigError, DataError) as e:  # user errors: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
