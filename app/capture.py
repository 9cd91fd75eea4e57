"""The capture thread: reads a FrameSource at its own rate, keeps only the newest frame, and
survives a camera that disappears or a video that ends (status message, close, retry).

Frames reach the GUI through a one-slot mailbox rather than one queued signal per frame: if the
GUI is briefly busy, frames are replaced instead of piling up in the event queue, so the preview
shows the newest frame and memory stays flat.
"""

from __future__ import annotations

import threading
import time

from PySide6.QtCore import QThread, Signal

from app.sources.base import Frame, FrameSource, SourceError, shown

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)  # seconds between reopen attempts; the last one repeats


class FrameMailbox:
    """Holds the newest frame. ``put`` says whether the reader must be woken; ``take`` reads it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._pending = False

    def put(self, frame: Frame) -> bool:
        with self._lock:
            self._frame = frame
            wake = not self._pending
            self._pending = True
            return wake

    def take(self) -> Frame | None:
        with self._lock:
            self._pending = False
            return self._frame


class FpsMeter:
    """Frames per second as an exponential moving average of frame intervals."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self._last: float | None = None
        self._dt: float | None = None

    def tick(self, now: float) -> float:
        if self._last is not None:
            dt = max(now - self._last, 1e-6)
            self._dt = dt if self._dt is None else self.smoothing * self._dt + (1 - self.smoothing) * dt
        self._last = now
        return 1.0 / self._dt if self._dt else 0.0

    def reset(self) -> None:
        self._last = self._dt = None


class CaptureThread(QThread):
    """Runs ``source`` until ``shutdown()``. Signals: ``frame_available`` (take it from
    ``mailbox``), ``status(message, ok)`` on open / loss / recovery, and ``failing(message,
    failures)`` on each failed open or empty read, with the number of failures since the last
    frame (a headless run gives up after a few; the GUI keeps retrying and shows the message).
    """

    frame_available = Signal()
    status = Signal(str, bool)
    failing = Signal(str, int)

    def __init__(self, source: FrameSource, retry_delays: tuple[float, ...] | None = None, parent=None):
        super().__init__(parent)
        self.setObjectName("capture")
        self.source = source
        self.retry_delays = RETRY_DELAYS if retry_delays is None else retry_delays
        self.mailbox = FrameMailbox()
        self.frames_captured = 0
        self._stop = threading.Event()

    def shutdown(self) -> None:
        """Ask the loop to end (it wakes from any pacing/retry wait at once) and join it."""
        self._stop.set()
        if self.isRunning():
            self.wait()

    def run(self) -> None:
        # failures count since the last frame, not since the last open: a file that opens but
        # never decodes (or a camera that opens and then gives nothing) is still failing
        source, fps = self.source, FpsMeter()
        is_open, failures, next_due = False, 0, 0.0
        try:
            while not self._stop.is_set():
                if not is_open:
                    try:
                        source.open()
                    except Exception as e:
                        failures += 1
                        self._retry_wait(f"{source.name}: {_reason(e)}", failures)
                        continue
                    is_open, next_due = True, time.monotonic()
                    fps.reset()
                    again = " again" if failures else ""
                    notice = f" ({source.notice})" if source.notice else ""
                    self.status.emit(shown(f"{source.name}: running{again}{notice}"), True)
                if source.interval:  # files/folders/generators: pace to their rate, not as fast as possible
                    if self._stop.wait(max(0.0, next_due - time.monotonic())):
                        break
                    next_due = max(next_due + source.interval, time.monotonic() - source.interval)
                try:
                    image, meta = source.read(), {}
                    if image is not None:
                        meta = source.read_meta()
                    reason = source.end_message
                except Exception as e:
                    image, reason = None, _reason(e)
                if image is None:
                    self._close(source)
                    is_open = False
                    failures += 1
                    self._retry_wait(f"{source.name}: {reason}", failures)
                    continue
                failures = 0
                image.flags.writeable = False  # shared by preview, worker and snapshots: never edited
                now = time.monotonic()
                self.frames_captured += 1
                frame = Frame(image, self.frames_captured, now, source.name, fps.tick(now), meta)
                if self.mailbox.put(frame):
                    self.frame_available.emit()
        finally:
            self._close(source)

    def _retry_wait(self, message: str, failures: int) -> None:
        message = shown(message)
        delay = self.retry_delays[min(failures, len(self.retry_delays)) - 1] if self.retry_delays else 0.0
        self.failing.emit(message, failures)
        self.status.emit(f"{message} — retrying in {delay:g} s", False)
        self._stop.wait(delay)

    @staticmethod
    def _close(source: FrameSource) -> None:
        try:
            source.close()
        except Exception:  # a dead device may fail to close; we are abandoning it anyway
            pass


def _reason(error: Exception) -> str:
    """A source's own errors are written to be read as they are; anything else keeps its type."""
    return str(error) if isinstance(error, SourceError) else f"{type(error).__name__}: {error}"
