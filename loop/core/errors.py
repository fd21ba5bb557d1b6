"""Where the project's shared leaves live: its folders and the user-error type, importable by any
module without pulling in the config schema."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A composed config that Hydra accepted but the schema cannot use."""
