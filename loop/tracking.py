"""`python -m loop.tracking sync <run folder>...`: send the MLflow records that runs kept in their
folders while the server was away (the tracking itself is loop.core.tracking)."""

from __future__ import annotations

import logging
from pathlib import Path

from loop.core.tracking import TrackingError, sync


def main(argv: list[str] | None = None) -> None:
    """`python -m loop.tracking sync <run folder>...`"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m loop.tracking", description=(
        "Send the MLflow records that runs kept in their folders while the server was away."))
    parser.add_argument("command", choices=["sync"])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    for folder in args.folders:
        if not (folder / "run.json").is_file():
            print(f"error: {folder} is not a run folder (no run.json)", file=sys.stderr)
            sys.exit(2)
        try:
            n = sync(folder)
        except TrackingError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"{folder}: {n} tracking records sent" if n else f"{folder}: nothing to send")


if __name__ == "__main__":
    main()
