"""Render the blip-cam main window offscreen to docs/screenshot.png: a generated scene, its
caption from a real model, and one answered question; then the same at the sizes of the
Raspberry Pi Touch Displays (docs/screenshot-800x480.png and docs/screenshot-720x1280.png).

    python scripts/screenshot.py                      # the bundled demo model
    python scripts/screenshot.py --model Salesforce/blip-image-captioning-base --seed 7

Uses a throw-away settings file, so the user's configuration is neither read nor changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESKTOP_SIZE = (1280, 760)
TOUCH_SIZES = ((800, 480), (720, 1280))  # Touch Display (landscape) and Touch Display 2 (portrait)
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def default_model() -> str | None:
    from app.model_choice import demo_model_path

    path = demo_model_path()
    return str(path) if path else None


def touch_screenshot_path(out: Path, size: tuple[int, int]) -> Path:
    """docs/screenshot.png -> docs/screenshot-800x480.png"""
    return out.with_name(f"{out.stem}-{size[0]}x{size[1]}{out.suffix}")


def render_screenshot(out: Path, model: str, *, precision: str = "fp32", seed: int = 3, size=DESKTOP_SIZE,
                      timeout_s: float = 300.0, loader=None) -> int:
    """Show the window, wait for a caption and an answer, save the window's pixels to ``out``."""
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QApplication

    from app.arguments import AppConfig
    from app.main_window import MainWindow
    from app.model_choice import ModelRequest
    from app.settings import Settings
    from app.sources import ScenesSource

    QApplication.instance() or QApplication(sys.argv[:1])  # the widgets need one; it lives for the process
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(Path(tmp) / "screenshot.ini")
        settings.set("snapshots/folder", str(Path(tmp) / "snapshots"))
        config = AppConfig(models=ModelRequest(caption=model, vqa=model, precision=precision))
        source = ScenesSource(interval=3600.0, seed=seed)  # one scene for the whole run
        window = MainWindow(config, settings, loader=loader, source=source)
        window.set_continuous(False, persist=False)
        failure: list[str] = []
        window.models_failed.connect(failure.append)
        window.resize(*size)
        window.show()
        window.start()

        def wait(condition) -> bool:
            deadline = time.monotonic() + timeout_s
            while not condition() and not failure and time.monotonic() < deadline:
                QCoreApplication.processEvents()
                time.sleep(0.01)
            return condition()

        try:
            if not wait(lambda: window.models is not None and window.preview.frame is not None):
                print(f"screenshot: no model or frame: {failure[0] if failure else 'timed out'}", file=sys.stderr)
                return 1
            window.caption_now()
            if not wait(lambda: window.captions_shown > 0):
                print("screenshot: no caption arrived", file=sys.stderr)
                return 1
            if window.models.answerer is not None:
                question = _question(window.preview.frame.meta)
                window.questions.box.setText(question)
                window.ask(question)
                wait(lambda: bool(window.history.frames()) and not window.history.frames()[-1].entries[-1].pending)
            for _ in range(5):  # let the last repaints land
                QCoreApplication.processEvents()
                time.sleep(0.02)
            out.parent.mkdir(parents=True, exist_ok=True)
            if not window.grab().save(str(out)):
                print(f"screenshot: cannot write {out}", file=sys.stderr)
                return 1
            print(f"wrote {out}: {window.last_caption.text!r}")
            return 0
        finally:
            window.close()


def _question(meta: dict) -> str:
    """A question that fits the scene (the generator's own question when the frame has one)."""
    try:
        from blip_core.scenes import render

        qa = render(int(meta["seed"]), size=64).qa
        if qa:
            return qa[0][0]
    except Exception:
        pass
    return "what colour is the biggest shape?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint for captions and questions (default: the bundled demo model)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--seed", type=int, default=3, help="which generated scene to show")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    args = p.parse_args(argv)
    model = args.model or default_model()
    if model is None:
        print("screenshot: the bundled demo model is not installed (make demo-model), and no --model was given",
              file=sys.stderr)
        return 2
    for out, size in [(args.out, DESKTOP_SIZE)] + [(touch_screenshot_path(args.out, s), s) for s in TOUCH_SIZES]:
        status = render_screenshot(out, model, precision=args.precision, seed=args.seed, size=size)
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
