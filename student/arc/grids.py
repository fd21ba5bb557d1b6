"""ARC grids: validation and a reversible text form.

A grid is a non-empty rectangular list of rows of colours 0-9. As text (SEAL's and marc's
representation) each row is its digits with no separator, one row per line:

    [[0, 1], [2, 3]]  <->  "01\\n23"

The text form is exact and reversible (`parse(text(g)) == g` for every valid grid). `parse`
reads a model's answer, which is untrusted: anything that is not a rectangle of digits is None,
never an exception.
"""

from __future__ import annotations

Grid = list[list[int]]


def check(grid, where: str) -> Grid:
    """`grid` if it is a valid ARC grid, else ValueError naming `where` and the problem."""
    if not isinstance(grid, list) or not grid:
        raise ValueError(f"{where}: a grid must be a non-empty list of rows, got {grid!r:.60}")
    width = None
    for i, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            raise ValueError(f"{where}: row {i} must be a non-empty list, got {row!r:.60}")
        if width is not None and len(row) != width:
            raise ValueError(f"{where}: row {i} has {len(row)} cells, row 0 has {width}")
        width = len(row)
        for v in row:
            if type(v) is not int or not 0 <= v <= 9:
                raise ValueError(f"{where}: row {i} holds {v!r:.20}; colours are integers 0-9")
    return grid


def text(grid: Grid) -> str:
    return "\n".join("".join(str(v) for v in row) for row in grid)


def parse(answer: str, max_cells: int = 30 * 30) -> Grid | None:
    """The grid written in `answer` (rows of digits, one per line; blank lines and surrounding
    spaces ignored), or None when it is not a rectangle of digits within `max_cells`."""
    rows = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not rows or len(rows) * len(rows[0]) > max_cells:
        return None
    if any(len(r) != len(rows[0]) or not r.isdigit() or not r.isascii() for r in rows):
        return None
    return [[int(c) for c in r] for r in rows]


def shape(grid: Grid) -> tuple[int, int]:
    return len(grid), len(grid[0])
