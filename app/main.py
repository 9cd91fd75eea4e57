"""Entry point of ``blip-cam``: parse arguments, create the QApplication and the main window.

``blip-cam --watch TEXT`` prints each watch event to stdout as one JSON line (``WatchPrinter``);
without a display it runs offscreen, so it works headless.

``blip-cam --exit-after-captions N`` runs the same app and exits 0 after printing its first N
captions to stdout, one per line: an end-to-end check of an install (camera or scenes, model,
worker, GUI). Without a display it switches to Qt's offscreen platform by itself.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, TextIO

from app.arguments import AppConfig, parse_args
from app.model_choice import Loader
from app.sources import FrameSource


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("win32", "darwin")


class ExitAfterCaptions:
    """Prints each caption the window shows; after ``n`` of them closes the window, which joins
    the threads, and quits the event loop (status 0). A model failure, or a source that has
    failed ``max_source_failures`` times in a row (a camera that is not there, a folder with
    nothing readable, a file that is not a video), ends the run the same way with status 1 and
    the reason on ``err``: a self-check must end, where the GUI would keep retrying."""

    max_source_failures = 5  # with capture.RETRY_DELAYS: gives up ~8.5 s after the first failure

    def __init__(self, window, n: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 quit: Callable[[], None] | None = None, max_source_failures: int | None = None):
        self.window, self.n, self.out, self.err, self.quit = window, n, out, err, quit
        if max_source_failures is not None:
            self.max_source_failures = max_source_failures
        self.count = 0
        self.exit_code: int | None = None
        window.set_continuous(True, persist=False)
        window.caption_shown.connect(self._on_caption)
        window.models_failed.connect(self._on_failed)
        window.source_failing.connect(self._on_source_failing)

    def _on_caption(self, outcome) -> None:
        if self.exit_code is not None:
            return
        self.count += 1
        print(" ".join(outcome.text.split()), file=self.out, flush=True)  # one caption, one line
        if self.count >= self.n:
            self._finish(0)

    def _on_source_failing(self, message: str, failures: int) -> None:
        if failures >= self.max_source_failures:
            self._on_failed(f"{message} (gave up after {failures} attempts)")

    def _on_failed(self, message: str) -> None:
        if self.exit_code is None:
            print(f"blip-cam: error: {message}", file=self.err, flush=True)
            self._finish(1)

    def _finish(self, code: int) -> None:
        self.exit_code = code
        # nothing more may reach this object: the window is about to close and be deleted
        w = self.window
        for qt_signal, slot in ((w.caption_shown, self._on_caption), (w.models_failed, self._on_failed),
                                (w.source_failing, self._on_source_failing)):
            qt_signal.disconnect(slot)
        self.window.close()  # joins the threads
        if self.quit is not None:
            # quit(), not exit(code): exit() outside a running loop would make every later
            # event loop return at once; main() returns self.exit_code instead
            self.quit()


class WatchPrinter:
    """Prints each watch event as one JSON line (ASCII) and keeps captioning continuous meanwhile."""

    def __init__(self, window, out: TextIO = sys.stdout):
        self.out = out
        self.events = 0
        window.set_continuous(True, persist=False)
        window.watch_fired.connect(self._on_event)

    def _on_event(self, event) -> None:
        self.events += 1
        print(event.to_json(), file=self.out, flush=True)


def _quiet_offscreen() -> None:
    """Offscreen, Qt warns that it cannot raise windows or propagate size hints; that is expected
    there and would only clutter ``--exit-after-captions`` output. Other messages pass through."""
    from PySide6.QtCore import qInstallMessageHandler

    def handler(_mode, _context, message: str) -> None:
        if not message.startswith("This plugin does not support"):
            print(message, file=sys.stderr)

    qInstallMessageHandler(handler)


def _preflight() -> str:
    """Why Qt cannot run here (see ``app.qt_preflight``), or "" when it can."""
    from app import qt_preflight

    return qt_preflight.missing_binding() or qt_preflight.platform_problem() or qt_preflight.binding_problem()


def main(argv: list[str] | None = None, *, loader: Loader | None = None, source: FrameSource | None = None) -> int:
    """Run the app; returns the process exit status.

    ``loader`` (``blip_core.load``'s signature) and ``source`` replace the real ones for tests
    and embedding; the command line never sets them.
    """
    config: AppConfig = parse_args(argv)  # exits 2 with one line on stderr for bad arguments
    if (config.exit_after_captions or config.watches) and not _has_display():
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # a headless Pi / CI box can still self-check
    problem = _preflight()
    if problem:
        print(f"blip-cam: error: {problem}", file=sys.stderr, flush=True)
        return 2

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.settings import APPLICATION, ORGANIZATION, Settings

    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        _quiet_offscreen()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)

    window = MainWindow(config, Settings(config.settings_path), loader=loader, source=source)
    checker = (
        ExitAfterCaptions(window, config.exit_after_captions, quit=app.quit) if config.exit_after_captions else None
    )
    printer = WatchPrinter(window) if config.watches else None  # noqa: F841 - lives as long as the window

    # Ctrl-C in the terminal closes the window cleanly; the idle timer lets Python see the signal
    # while Qt's event loop runs (it otherwise only runs Python code on Qt events)
    previous = signal.signal(signal.SIGINT, lambda *_: window.close())
    ticker = QTimer(interval=200)
    ticker.timeout.connect(lambda: None)
    ticker.start()

    window.showFullScreen() if config.fullscreen else window.show()
    window.start()
    try:
        status = app.exec()
    finally:
        ticker.stop()
        window.shutdown()  # no-op after a normal close; joins the threads if the loop ended otherwise
        signal.signal(signal.SIGINT, previous)
    if checker is not None and checker.exit_code is not None:
        return checker.exit_code
    return status


if __name__ == "__main__":
    raise SystemExit(main())
