"""Derived seeds: every random choice is a function of the run seed and where it happens.

Python's `hash()` of a string changes from process to process (PYTHONHASHSEED), so seeds are
derived from a SHA-256 of the parts instead: the same run seed gives the same seeds on every
machine and after a resume.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from e.g. (run seed, "absorb", round, context id, sample index)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF
