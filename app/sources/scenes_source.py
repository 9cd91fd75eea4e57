"""Generated scenes from ``blip_core.scenes``: what the bundled demo model was trained on.

With no camera this is the source that gives meaningful captions from the demo model. If
``blip_core.scenes`` is not importable (an older library), a plain test pattern is shown instead,
and the source's ``notice`` says so.
"""

from __future__ import annotations

import numpy as np

from app.sources.base import FrameSource, as_rgb_frame

_PALETTE = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 200, 40), (150, 60, 190), (240, 130, 30)]


class ScenesSource(FrameSource):
    """A new scene every ``interval`` seconds, from seed ``seed``, ``seed + 1``, ..."""

    name = "scenes"

    def __init__(self, interval: float = 3.0, seed: int = 0, size: int = 384):
        self.interval = interval
        self.seed = seed
        self.size = size
        self.notice = ""
        self._meta: dict = {}
        self._render = None

    def open(self) -> None:
        try:
            from blip_core.scenes import render
        except Exception:  # ImportError, or a half-written module during development
            render = None
            self.notice = "blip_core.scenes is not available: showing a plain test pattern"
        self._render = render

    def read(self) -> np.ndarray:
        seed, self.seed = self.seed, self.seed + 1
        if self._render is not None:
            scene = self._render(seed, size=self.size)
            self._meta = {"seed": seed, "captions": list(getattr(scene, "captions", []))}
            return as_rgb_frame(np.asarray(scene.image.convert("RGB")))
        self._meta = {"seed": seed}
        return pattern_frame(seed, self.size)

    def read_meta(self) -> dict:
        return dict(self._meta)


def pattern_frame(seed: int, size: int = 384) -> np.ndarray:
    """A deterministic frame: a coloured background with a contrasting square, varying by seed."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = _PALETTE[seed % len(_PALETTE)]
    q = size // 4
    offset = (seed * 37) % (size - 2 * q)
    image[q:3 * q, offset:offset + 2 * q] = _PALETTE[(seed + 3) % len(_PALETTE)]
    return image
