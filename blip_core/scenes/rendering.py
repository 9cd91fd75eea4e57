"""Scene ``seed`` as a picture and its true texts: a pure function, and endless deterministic streams of it."""

from __future__ import annotations

import hashlib
import operator
import random
from typing import Iterator

from blip_core.scenes.drawing import draw
from blip_core.scenes.language import choose_captions, choose_questions
from blip_core.scenes.layout import sample_layout, to_object
from blip_core.scenes.world import GRID, Scene


def _as_int(name: str, value: object) -> int:
    """``value`` as a plain int; numpy integers are accepted (dataset indices often are)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def render(seed: int, size: int = 384, max_objects: int = 3) -> Scene:
    """Draw scene ``seed`` as a ``size`` x ``size`` RGB image with 1..``max_objects`` objects.

    Pure: the same arguments always give identical pixels and texts. Raises ``ValueError`` for
    ``size < 16`` or ``max_objects`` outside 1..9 (the grid has nine cells).
    """
    seed, size, max_objects = (
        _as_int(name, v) for name, v in (("seed", seed), ("size", size), ("max_objects", max_objects))
    )
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if not 1 <= max_objects <= GRID * GRID:
        raise ValueError(f"max_objects must be in 1..{GRID * GRID}, got {max_objects}")
    # All content comes from one Random(seed), consumed in a fixed order; the texture has its
    # own generator keyed by (seed, size) so content does not depend on the resolution.
    rng = random.Random(seed)
    background, placements = sample_layout(rng, max_objects)
    objects = tuple(to_object(p, size) for p in placements)
    captions = choose_captions(objects, background, rng)
    qa = choose_questions(objects, background, rng)
    image = draw(background, placements, size, [seed & (2**64 - 1), size])
    return Scene(seed=seed, image=image, objects=objects, background=background, captions=captions, qa=qa)


def stream_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th scene of ``scene_stream(seed, ...)``, for random access (e.g.
    a map-style dataset). A 63-bit hash, so streams of different seeds do not share scenes
    and never collide with small evaluation seeds like ``range(1000)`` in practice."""
    digest = hashlib.blake2b(f"blip-scenes/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def scene_stream(seed: int, size: int = 384, max_objects: int = 3) -> Iterator[Scene]:
    """Endless, deterministic stream of scenes: ``render(stream_seed(seed, i), size, max_objects)``
    for i = 0, 1, 2, ..."""
    index = 0
    while True:
        yield render(stream_seed(seed, index), size, max_objects)
        index += 1
