"""Generated scenes from ``blip_core.scenes``: what the bundled demo model was trained on.

With no camera this is the source that gives meaningful captions from the demo model.
"""

from __future__ import annotations

import numpy as np

from app.sources.base import FrameSource, as_rgb_frame


class ScenesSource(FrameSource):
    """A new scene every ``interval`` seconds, from seed ``seed``, ``seed + 1``, ..."""

    name = "scenes"

    def __init__(self, interval: float = 3.0, seed: int = 0, size: int = 384):
        self.interval = interval
        self.seed = seed
        self.size = size
        self._meta: dict = {}
        self._render = None

    def open(self) -> None:
        # imported on open, not with the app: only this source needs the scene world (and PIL)
        from blip_core.scenes import render

        self._render = render

    def read(self) -> np.ndarray:
        seed, self.seed = self.seed, self.seed + 1
        scene = self._render(seed, size=self.size)
        self._meta = {"seed": seed, "captions": list(scene.captions)}
        return as_rgb_frame(np.asarray(scene.image.convert("RGB")))

    def read_meta(self) -> dict:
        return dict(self._meta)
