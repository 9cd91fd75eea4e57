"""Sampling a scene's layout: which objects go where, independent of the output resolution."""

from __future__ import annotations

import random
from dataclasses import dataclass

from blip_core.scenes.world import BACKGROUNDS, COLOURS, GRID, POSITIONS, SHAPES, SIZES, SceneObject

# Object extent as a fraction of a cell side; the gap between the ranges keeps "small" and
# "large" obvious even for shapes whose area is a fraction of their box (diamond, star).
_EXTENT = {"small": (0.36, 0.42), "large": (0.74, 0.80)}
_MAX_OFFSET = 0.10  # max centre offset from the cell centre, in cells
_MARGIN = 0.04  # min gap between an object and its cell border, in cells
_COLOUR_JITTER = 12  # per channel, so colour is a category rather than one exact RGB value

# Probabilities that a further object repeats earlier attributes. Without them, two objects
# with the same shape (or colour) would be rare and counting / disambiguation questions
# would hardly ever arise; marginals stay uniform because the copied values are uniform.
_P_REPEAT_BOTH = 0.25
_P_REPEAT_SHAPE = 0.20
_P_REPEAT_COLOUR = 0.15


@dataclass(frozen=True)
class Placement:
    """An object independent of the output resolution: geometry as fractions of the image side."""

    shape: str
    colour: str
    size: str
    cell: int
    cx: float
    cy: float
    extent: float
    rgb: tuple[int, int, int]


def _sample_attributes(rng: random.Random, previous: list[tuple[str, str]]) -> tuple[str, str]:
    """(shape, colour) of the next object, sometimes repeating earlier ones (see _P_REPEAT_*)."""
    r = rng.random()
    if previous and r < _P_REPEAT_BOTH:
        return rng.choice(previous)
    if previous and r < _P_REPEAT_BOTH + _P_REPEAT_SHAPE:
        return rng.choice(previous)[0], rng.choice(tuple(COLOURS))
    if previous and r < _P_REPEAT_BOTH + _P_REPEAT_SHAPE + _P_REPEAT_COLOUR:
        return rng.choice(SHAPES), rng.choice(previous)[1]
    return rng.choice(SHAPES), rng.choice(tuple(COLOURS))


def sample_layout(rng: random.Random, max_objects: int) -> tuple[str, list[Placement]]:
    """Background name and objects in reading order (top-left to bottom-right)."""
    background = rng.choice(tuple(BACKGROUNDS))
    n = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    placements: list[Placement] = []
    previous: list[tuple[str, str]] = []
    for cell in cells:
        shape, colour = _sample_attributes(rng, previous)
        previous.append((shape, colour))
        size = rng.choice(SIZES)
        extent = rng.uniform(*_EXTENT[size])  # in cells
        # Large objects get less play so that they never leave their cell (no overlap).
        slack = min(_MAX_OFFSET, 0.5 - extent / 2 - _MARGIN)
        dx, dy = rng.uniform(-slack, slack), rng.uniform(-slack, slack)
        row, col = divmod(cell, GRID)
        rgb = tuple(min(255, max(0, c + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for c in COLOURS[colour])
        placements.append(
            Placement(
                shape=shape,
                colour=colour,
                size=size,
                cell=cell,
                cx=(col + 0.5 + dx) / GRID,
                cy=(row + 0.5 + dy) / GRID,
                extent=extent / GRID,
                rgb=rgb,  # type: ignore[arg-type]
            )
        )
    return background, placements


def to_object(p: Placement, size: int) -> SceneObject:
    half = p.extent / 2
    box = tuple(round(v * size) for v in (p.cx - half, p.cy - half, p.cx + half, p.cy + half))
    row, col = divmod(p.cell, GRID)
    return SceneObject(
        shape=p.shape,
        colour=p.colour,
        size=p.size,
        position=POSITIONS[p.cell],
        cell=(row, col),
        box=box,  # type: ignore[arg-type]
    )
