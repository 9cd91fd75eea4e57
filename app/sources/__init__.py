"""Frame sources behind one interface (see ``base.FrameSource``) and ``make_source(spec)``."""

from __future__ import annotations

from app.sources.base import SOURCE_HELP, Frame, FrameSource, SourceError, SourceSpec, parse_source_spec
from app.sources.folder_source import FolderSource
from app.sources.opencv_source import OpenCVSource, webcam_available
from app.sources.picamera2_source import Picamera2Source, picamera2_available
from app.sources.scenes_source import ScenesSource

__all__ = [
    "SOURCE_HELP", "AutoSource", "FolderSource", "Frame", "FrameSource", "OpenCVSource", "Picamera2Source",
    "ScenesSource", "SourceError", "SourceSpec", "make_source", "parse_source_spec",
]


class AutoSource(FrameSource):
    """``--source auto``: the Pi camera if there is one, else webcam 0, else generated scenes.

    The choice is made at ``open`` (in the capture thread, since probing a camera can take a
    second) and kept for retries: a camera that was found and then lost is retried, rather than
    silently swapped for scenes.
    """

    name = "auto"

    def __init__(self, interval: float = 3.0):
        self._interval = interval
        self.chosen: FrameSource | None = None
        self.notice = ""

    def open(self) -> None:
        if self.chosen is None:
            if picamera2_available():
                self.chosen = Picamera2Source()
            elif webcam_available(0):
                self.chosen = OpenCVSource(0)
            else:
                self.chosen = ScenesSource(interval=self._interval)
                self.notice = "no camera found: showing generated scenes"
            self.name = self.chosen.name
        self.chosen.open()
        self.notice = self.notice or getattr(self.chosen, "notice", "")

    @property
    def interval(self) -> float | None:  # type: ignore[override]
        return self.chosen.interval if self.chosen else None

    @property
    def end_message(self) -> str:  # type: ignore[override]
        return self.chosen.end_message if self.chosen else FrameSource.end_message

    def read(self):
        return self.chosen.read() if self.chosen else None

    def read_meta(self) -> dict:
        return self.chosen.read_meta() if self.chosen else {}

    def close(self) -> None:
        if self.chosen is not None:
            self.chosen.close()


def make_source(spec: SourceSpec, *, interval: float = 3.0) -> FrameSource:
    """Build (but do not open) the source for a parsed ``--source``."""
    if spec.kind == "auto":
        return AutoSource(interval=interval)
    if spec.kind == "picamera2":
        return Picamera2Source()
    if spec.kind == "webcam":
        return OpenCVSource(int(spec.arg))
    if spec.kind == "file":
        return OpenCVSource(spec.arg)
    if spec.kind == "folder":
        return FolderSource(spec.arg, interval=interval)
    if spec.kind == "scenes":
        return ScenesSource(interval=interval)
    raise ValueError(f"unknown source kind {spec.kind!r}")
