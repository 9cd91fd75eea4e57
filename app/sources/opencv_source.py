"""OpenCV ``VideoCapture``: USB webcams (by index), video files and network streams (RTSP/HTTP).

OpenCV cannot open the Pi's CSI cameras (opencv #22820, #25072); those go through picamera2.
We depend on opencv-python-headless because the full wheel ships Qt plugins that clash with
PySide6 (picamera2 #251/#1036).
"""

from __future__ import annotations

import os

import numpy as np

from app.sources.base import FrameSource, SourceError, as_rgb_frame, is_utf8


class OpenCVSource(FrameSource):
    """Frames from ``cv2.VideoCapture(target)``; ``target`` is an int index or a path/URL.

    Files are paced at their own frame rate (decoding is faster than real time); cameras and
    streams block in ``read`` at device rate. At the end of a file ``read`` returns None, and the
    capture thread reopens it, which replays the video from the start.
    """

    def __init__(self, target: int | str, *, width: int | None = 640, height: int | None = 480):
        self.target = target
        self.is_camera = isinstance(target, int)
        self.is_stream = isinstance(target, str) and "://" in target
        self.name = f"webcam {target}" if self.is_camera else f"video {target}"
        self._size = (width, height)
        self._cap = None
        self._frames = 0  # frames read since the last open: none at all means the file is not a video
        self.interval = None

    @property
    def end_message(self) -> str:  # type: ignore[override]
        if self.is_camera:
            return "no frame: the camera stopped or was unplugged"
        if self.is_stream:
            return "the stream stopped"
        return "end of the video" if self._frames else "no frame could be decoded: not a video OpenCV can read"

    def open(self) -> None:
        if not self.is_camera and not is_utf8(self.target):
            # cv2.VideoCapture crashes the process (SIGSEGV) on such a str
            raise SourceError("the path is not valid UTF-8, which OpenCV cannot open; rename the file")
        import cv2  # imported here so listing sources does not load OpenCV

        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_failure())
        if self.is_camera and self._size[0]:
            # a modest size: BLIP sees 384x384 anyway and the preview stays cheap on a Pi
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        if not self.is_camera and not self.is_stream:
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.interval = 1.0 / fps if 1.0 <= fps <= 240.0 else 1.0 / 25.0
        self._cap, self._frames = cap, 0

    def _open_failure(self) -> str:
        """Why ``VideoCapture`` did not open, as far as we can tell (OpenCV only says no)."""
        if self.is_camera:
            return "could not be opened (no such camera, or another program is using it)"
        if self.is_stream:
            return "could not connect to the stream"
        if not os.path.isfile(self.target):
            return "no such file"
        return "not a video OpenCV can read"

    def read(self) -> np.ndarray | None:
        import cv2

        if self._cap is None:
            raise SourceError(f"{self.name} is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        self._frames += 1
        if bgr.ndim == 2:
            return as_rgb_frame(bgr)
        # OpenCV hands out BGR; everything downstream (PIL, BLIP, Qt RGB888) wants RGB
        return as_rgb_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def webcam_available(index: int = 0) -> bool:
    """True if a webcam opens and delivers a frame (used by ``--source auto``)."""
    source = OpenCVSource(index)
    try:
        source.open()
        return source.read() is not None
    except Exception:
        return False
    finally:
        source.close()
