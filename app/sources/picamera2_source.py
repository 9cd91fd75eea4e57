"""Raspberry Pi cameras through picamera2 (libcamera), captured from the capture thread.

Why ``capture_array`` from our own thread rather than picamera2's ``QGlSide6Picamera2`` widget:
the app draws one preview (with its overlay) for every source, and ``Picamera2.start()`` without
a Qt widget runs picamera2's own background event loop, so a blocking ``capture_array`` is safe
off the GUI thread (picamera2 #666). A blocking capture *on* the GUI thread would deadlock
(#766, #336), which the capture thread avoids by construction. ``capture_array`` returns a copy,
so no ``CompletedRequest`` is held across a slow caption.

picamera2 is imported lazily, never at module import: it is only installed on a Pi (apt's
``python3-picamera2``), and importing it under Wayland rewrites ``QT_QPA_PLATFORM`` (anchors §1.1).
"""

from __future__ import annotations

import numpy as np

from app.sources.base import FrameSource, SourceError, as_rgb_frame


class Picamera2Source(FrameSource):
    """The first libcamera camera, main stream ``BGR888`` (which libcamera means as R,G,B in
    memory; picamera2 #1148), at a preview-sized resolution."""

    name = "picamera2"
    interval = None  # capture_array blocks until the next frame

    def __init__(self, camera_num: int = 0, size: tuple[int, int] = (640, 480)):
        self.camera_num = camera_num
        self.size = size
        self._cam = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise SourceError("picamera2 is not installed (on a Pi: sudo apt install python3-picamera2)") from e
        try:
            cam = Picamera2(self.camera_num)
            config = cam.create_preview_configuration(main={"size": self.size, "format": "BGR888"}, buffer_count=4)
            cam.configure(config)
            cam.start()  # show_preview=False: picamera2 runs its own (non-Qt) event loop thread
        except Exception as e:  # libcamera raises RuntimeError/IndexError/OSError for "no camera"
            raise SourceError(f"cannot open Pi camera {self.camera_num}: {e}") from e
        self._cam = cam

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            raise SourceError("Pi camera is not open")
        return as_rgb_frame(self._cam.capture_array("main"))

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()  # releases the camera so a retry (or another app) can open it


def picamera2_available() -> bool:
    """True if picamera2 imports and libcamera lists at least one camera."""
    import importlib.util

    if importlib.util.find_spec("picamera2") is None:
        return False
    try:
        from picamera2 import Picamera2

        return len(Picamera2.global_camera_info()) > 0
    except Exception:
        return False
