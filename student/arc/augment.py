"""Grid augmentations: pure functions on grids, each with its inverse where one exists.

The four families a self-edit switches on (SEAL's, after marc's augmenters):
- basic: rotations by 90/180/270 degrees (counter-clockwise, as numpy's rot90), flips of the
  rows and of the columns, reflections (the grid next to its mirror image, doubling one side;
  mirror after or before), a cyclic translation, the transposition;
- size: every cell as a 2x2 block, every row twice, every column twice;
- chain: each rotation, flip and the transposition followed by the 2x2 resolution;
- repeat: the grid tiled twice down, twice across, and 2x2.

A transform is applied to every grid of a task (inputs and outputs alike), so the task's rule
is transformed consistently. Departure from the reference: its random translation shifts an
example's input and output by different amounts; here one shift moves every grid of the task.

`inverse(g)` undoes `forward`: `inverse(forward(g)) == g` for every grid. On a model's answer
it may be asked to undo a shape it never produced (an odd height after a doubling): it then
returns None, and that answer loses its vote.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from student.arc.grids import Grid


def rot90(g: Grid) -> Grid:  # counter-clockwise, like numpy.rot90
    return [list(row) for row in zip(*g, strict=True)][::-1]


def rot180(g: Grid) -> Grid:
    return [row[::-1] for row in g[::-1]]


def rot270(g: Grid) -> Grid:
    return [list(row)[::-1] for row in zip(*g, strict=True)]


def flip_rows(g: Grid) -> Grid:  # numpy.flipud
    return [list(row) for row in g[::-1]]


def flip_cols(g: Grid) -> Grid:  # numpy.fliplr
    return [row[::-1] for row in g]


def transpose(g: Grid) -> Grid:
    return [list(row) for row in zip(*g, strict=True)]


def _halve(g: Grid, axis: int, first: bool) -> Grid | None:
    """The first or second half of g along an axis, if that side is even."""
    if axis == 0:
        if len(g) % 2:
            return None
        h = len(g) // 2
        return [list(r) for r in (g[:h] if first else g[h:])]
    if len(g[0]) % 2:
        return None
    w = len(g[0]) // 2
    return [r[:w] if first else r[w:] for r in g]


def _scale(g: Grid, fy: int, fx: int) -> Grid:
    return [[v for v in row for _ in range(fx)] for row in g for _ in range(fy)]


def _unscale(g: Grid, fy: int, fx: int) -> Grid | None:
    if len(g) % fy or len(g[0]) % fx:
        return None
    return [row[::fx] for row in g[::fy]]


def _tile(g: Grid, ny: int, nx: int) -> Grid:
    return [row * nx for row in g] * ny


def _untile(g: Grid, ny: int, nx: int) -> Grid | None:
    if len(g) % ny or len(g[0]) % nx:
        return None
    return [row[: len(row) // nx] for row in g[: len(g) // ny]]


def _roll(g: Grid, dy: int, dx: int) -> Grid:
    h, w = len(g), len(g[0])
    return [[g[(y - dy) % h][(x - dx) % w] for x in range(w)] for y in range(h)]


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[Grid], Grid]
    inverse: Callable[[Grid], Grid | None]

    def __call__(self, g: Grid) -> Grid:
        return self.forward(g)


def chain(*ts: Transform) -> Transform:
    def fwd(g):
        for t in ts:
            g = t.forward(g)
        return g

    def inv(g):
        for t in reversed(ts):
            if g is None:
                return None
            g = t.inverse(g)
        return g

    return Transform("+".join(t.name for t in ts), fwd, inv)


def translate(dy: int, dx: int) -> Transform:
    """A cyclic shift by (dy, dx) cells, taken modulo each grid's own size."""
    return Transform(f"translate({dy},{dx})", lambda g: _roll(g, dy, dx),
                     lambda g: _roll(g, -dy, -dx))


IDENTITY = Transform("identity", lambda g: [list(r) for r in g], lambda g: [list(r) for r in g])
ROT90 = Transform("rot90", rot90, rot270)
ROT180 = Transform("rot180", rot180, rot180)
ROT270 = Transform("rot270", rot270, rot90)
FLIP_ROWS = Transform("flip_rows", flip_rows, flip_rows)
FLIP_COLS = Transform("flip_cols", flip_cols, flip_cols)
TRANSPOSE = Transform("transpose", transpose, transpose)
REFLECT = [  # the grid and its mirror image along an axis; `before`: the mirror comes first
    Transform("reflect_rows", lambda g: g + flip_rows(g), lambda g: _halve(g, 0, True)),
    Transform("reflect_cols", lambda g: [r + r[::-1] for r in g], lambda g: _halve(g, 1, True)),
    Transform("reflect_rows_before", lambda g: flip_rows(g) + g, lambda g: _halve(g, 0, False)),
    Transform("reflect_cols_before", lambda g: [r[::-1] + r for r in g],
              lambda g: _halve(g, 1, False)),
]
RESOLUTION2 = Transform("resolution2", lambda g: _scale(g, 2, 2), lambda g: _unscale(g, 2, 2))
HEIGHT2 = Transform("height2", lambda g: _scale(g, 2, 1), lambda g: _unscale(g, 2, 1))
WIDTH2 = Transform("width2", lambda g: _scale(g, 1, 2), lambda g: _unscale(g, 1, 2))
REPEAT = [
    Transform("repeat_rows2", lambda g: _tile(g, 2, 1), lambda g: _untile(g, 2, 1)),
    Transform("repeat_cols2", lambda g: _tile(g, 1, 2), lambda g: _untile(g, 1, 2)),
    Transform("repeat_both2", lambda g: _tile(g, 2, 2), lambda g: _untile(g, 2, 2)),
]
GEOMETRIC = [ROT90, ROT270, ROT180, FLIP_ROWS, FLIP_COLS, TRANSPOSE]


def family(name: str, seed: int) -> list[Transform]:
    """The transforms of one family; the translation's shift (1-3 cells each way) is seeded."""
    if name == "basic":
        rng = random.Random(seed)
        return [ROT90, ROT270, ROT180, FLIP_ROWS, FLIP_COLS, *REFLECT,
                translate(rng.randint(1, 3), rng.randint(1, 3)), TRANSPOSE]
    if name == "size":
        return [RESOLUTION2, HEIGHT2, WIDTH2]
    if name == "chain":
        return [chain(t, RESOLUTION2) for t in GEOMETRIC]
    if name == "repeat":
        return list(REPEAT)
    raise ValueError(f"unknown augmentation family '{name}'; choose basic, size, chain, repeat")


def recolour(rng) -> Transform:
    """A random permutation of the colours 1-9 (0, the background, stays): the reference's
    PermuteColors, drawn from `rng` (a random.Random)."""
    new = [0, *rng.sample(range(1, 10), 9)]
    back = [new.index(c) for c in range(10)]
    return Transform("recolour(" + "".join(map(str, new[1:])) + ")",
                     lambda g: [[new[v] for v in row] for row in g],
                     lambda g: [[back[v] for v in row] for row in g])


FAMILIES = ("basic", "size", "chain", "repeat")
# the transforms a view of the test input may apply (student.arc.views names them); each answer
# is undone by its inverse before the vote
VIEW_TRANSFORMS = {t.name: t for t in (IDENTITY, TRANSPOSE, FLIP_ROWS, FLIP_COLS, ROT90, ROT180,
                                       ROT270)}
