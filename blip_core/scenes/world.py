"""The scene world's vocabulary and types: shapes, colours, sizes, positions, SceneObject, Scene."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}

# Saturated, mutually distant colours (>= ~110 apart in RGB, also from every background), so
# the colour jitter and texture below can never move one into another's neighbourhood.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 95, 225),
    "yellow": (240, 215, 45),
    "purple": (145, 60, 190),
    "white": (240, 240, 240),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (120, 120, 120),
    "black": (25, 25, 30),
    "brown": (105, 72, 45),
}

SIZES: tuple[str, ...] = ("small", "large")

# Cell index = row * 3 + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "middle", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

_POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "middle": "in the middle",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip

# The picture is a GRID x GRID board of cells, at most one object per cell.
GRID = 3


def plural(shape: str) -> str:
    """Plural of a shape name (``"cross"`` -> ``"crosses"``)."""
    return _PLURALS[shape]


def position_phrase(position: str) -> str:
    """How a caption places an object in a cell: ``"left"`` -> ``"on the left"``."""
    return _POSITION_PHRASES[position]


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    ``position`` is the name of its grid cell (one of ``POSITIONS``), ``cell`` the same as
    ``(row, col)``; ``box`` is ``(x0, y0, x1, y1)`` in pixels of the rendered image (the
    shape's nominal square extent, exclusive of anti-aliasing).
    """

    shape: str
    colour: str
    size: str
    position: str
    cell: tuple[int, int]
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[int, int]:
        """Pixel ``(x, y)`` at the middle of ``box``; always inside the shape's silhouette."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) // 2, (y0 + y1) // 2

    def describe(self, with_size: bool = True) -> str:
        """``"large red circle"`` (or ``"red circle"`` without the size)."""
        return " ".join(([self.size] if with_size else []) + [self.colour, self.shape])


@dataclass(frozen=True)
class Scene:
    """A rendered scene and its true texts (see the module docstring)."""

    seed: int
    image: Image.Image
    objects: tuple[SceneObject, ...]
    background: str
    captions: tuple[str, ...]
    qa: tuple[tuple[str, str], ...]
