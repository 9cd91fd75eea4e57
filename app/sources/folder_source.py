"""A folder of images shown as a slideshow (a camera stand-in for demos and tests)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from app.sources.base import FrameSource, SourceError, as_rgb_frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_SIDE = 1280  # larger photos are shrunk: BLIP sees 384 px and the preview a window's worth


class FolderSource(FrameSource):
    """Cycles through the images of ``folder`` (sorted by name), one every ``interval`` seconds.

    The folder is re-listed at every ``open``, so images added while running show up after the
    next pass. The files are untrusted: each is decoded by the library's checked loader (format
    whitelist, pixel limit), and one it refuses is skipped, logged once and counted in
    ``skipped``, never fatal.
    """

    def __init__(self, folder: str | Path, interval: float = 3.0):
        self.folder = Path(folder)
        self.name = f"folder {self.folder}"
        self.interval = interval
        self.skipped: dict[Path, str] = {}  # unreadable file -> why (the latest reason)
        self._paths: list[Path] = []
        self._pos = 0
        self._last: Path | None = None

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder not found: {self.folder}")
        self._paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise SourceError(f"no images in {self.folder}")
        self._pos = 0

    def read(self) -> np.ndarray | None:
        # one full pass over unreadable files ends in None, which makes the thread reopen later
        for _ in range(len(self._paths)):
            path = self._paths[self._pos % len(self._paths)]
            self._pos += 1
            image = self._load(path)
            if image is not None:
                self._last = path
                return image
        return None

    @property
    def end_message(self) -> str:  # type: ignore[override]
        """What a pass that found nothing readable means: say why, not "the camera stopped"."""
        first = next(iter(self.skipped.values()), "")
        return f"has no readable images ({len(self.skipped)} skipped; the first: {first[:200]})"

    def read_meta(self) -> dict:
        return {"path": str(self._last)} if self._last else {}

    def _load(self, path: Path) -> np.ndarray | None:
        from blip_core.errors import BadImageError  # lazily, as all of blip_core (see app.model_choice)

        try:
            return load_frame(path)
        except BadImageError as e:
            if path not in self.skipped:  # once per file, not at every pass of the slideshow
                log.warning("skipping %s: %s", path, e)
            self.skipped[path] = str(e)
            return None


def load_frame(path: Path) -> np.ndarray:
    """The image at ``path`` as an RGB frame no larger than MAX_SIDE, upright per its EXIF
    orientation; raises ``blip_core.errors.BadImageError`` for anything the checked loader refuses."""
    from blip_core.preprocess import load_image

    image = load_image(path)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return as_rgb_frame(np.asarray(image))
