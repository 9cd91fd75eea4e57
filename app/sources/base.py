"""The frame-source interface, the frame type, and parsing of ``--source`` specs (no Qt).

Every source yields HxWx3 uint8 **RGB** arrays (what blip_core and PIL expect); sources whose
device speaks BGR (OpenCV) convert before returning. A source is opened, read and closed from the
capture thread only, so implementations need no locking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SourceError(Exception):
    """A source cannot be opened or read; the message is shown in the status bar."""


@dataclass(frozen=True)
class Frame:
    """One captured image and where it came from.

    ``image``: uint8 array, shape (H, W, 3), RGB, C-contiguous, never written to after capture
    (the preview, the worker and the snapshot writer share it without copies).
    ``index`` grows by one per captured frame for the whole session (across reconnects), so it
    identifies a frame for feature caching and question history.
    """

    image: np.ndarray
    index: int
    timestamp: float  # time.monotonic() at capture
    source: str = ""
    fps: float = 0.0  # smoothed capture rate of the source when this frame arrived
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


class FrameSource:
    """A camera, video, folder or generator of RGB frames.

    ``read`` returns an RGB array, or ``None`` when no frame is available right now (a camera
    unplugged, a video at its end); it may raise ``SourceError`` (or anything else: the capture
    thread treats every failure the same way, closes the source and retries ``open``).
    ``interval`` is the pacing in seconds between frames for sources that do not block on
    hardware (files, folders, generators); ``None`` means ``read`` itself blocks at device rate.
    """

    name = "source"
    interval: float | None = None
    notice = ""  # a caveat to show while this source runs (e.g. "no camera found: scenes")
    # what a None from read means, shown after the source's name; sources that know better say
    # more (a camera: "stopped or was unplugged"; a video: "end of the video"; a folder: what it skipped)
    end_message = "no frame: the source delivered nothing"

    def open(self) -> None:
        """Acquire the device or files; raise SourceError with a readable message on failure."""

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def read_meta(self) -> dict[str, Any]:
        """Extra facts about the last frame (e.g. a generated scene's reference captions)."""
        return {}

    def close(self) -> None:
        """Release the device. Must be safe to call twice and after a failed open."""


def is_utf8(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 (a file name or argument decoded by Python
    with ``surrogateescape``): Qt drops those characters and OpenCV crashes on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` safe to show: bytes that were not UTF-8 appear as ``\\xNN`` rather than vanish."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that never was a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def as_rgb_frame(image: np.ndarray) -> np.ndarray:
    """Validate/convert an array to the HxWx3 uint8 C-contiguous RGB layout sources promise."""
    if image.ndim == 2:  # grey camera or image: replicate, BLIP wants three channels
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise SourceError(f"unsupported frame shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        raise SourceError(f"unsupported frame dtype {image.dtype}")
    return np.ascontiguousarray(image)


# --- `--source` specs -----------------------------------------------------------------------

SOURCE_KINDS = ("auto", "picamera2", "webcam", "file", "folder", "scenes")
SOURCE_HELP = "auto | picamera2 | webcam[:N] | file:PATH_OR_URL | folder:PATH | scenes"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: ``kind`` is one of SOURCE_KINDS; ``arg`` the index/path/URL."""

    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")


def parse_source_spec(text: str, *, check_paths: bool = True) -> SourceSpec:
    """Parse ``--source``; raise ValueError with a one-line message on anything unusable.

    A bare stream URL (``rtsp://...``) is accepted as ``file:`` since OpenCV opens both alike.
    ``check_paths`` verifies that files and folders exist (off when re-reading saved settings).
    """
    text = text.strip()
    if not text:
        raise ValueError(f"empty --source (expected {SOURCE_HELP})")
    if text.lower().startswith(_URL_SCHEMES):
        return SourceSpec("file", text)
    kind, sep, arg = text.partition(":")
    kind = kind.lower()
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source {text!r} (expected {SOURCE_HELP})")
    if kind in ("auto", "picamera2", "scenes"):
        if sep:
            raise ValueError(f"source {kind!r} takes no argument (got {text!r})")
        return SourceSpec(kind)
    if kind == "webcam":
        arg = arg or "0"
        if not arg.isdigit():
            raise ValueError(f"webcam index must be a number, got {arg!r}")
        return SourceSpec("webcam", str(int(arg)))
    if not arg:
        raise ValueError(f"source {kind!r} needs a path: {kind}:PATH")
    if kind == "file":
        if not is_utf8(arg):  # OpenCV takes only UTF-8 text: refuse here rather than crash later
            raise ValueError(f"video path {shown(arg)} is not valid UTF-8, which OpenCV cannot open; rename the file")
        if check_paths and not arg.lower().startswith(_URL_SCHEMES) and not os.path.isfile(arg):
            raise ValueError(f"video file not found: {arg}")
        return SourceSpec("file", arg)
    if check_paths and not os.path.isdir(arg):
        raise ValueError(f"image folder not found: {arg}")
    return SourceSpec("folder", arg)
