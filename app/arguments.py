"""Command-line arguments of ``blip-cam`` -> ``AppConfig`` (no Qt, so errors come fast).

Argument errors print one line on stderr and exit with status 2, like ``blip``'s CLI.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from app.model_choice import DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL, PRECISIONS, ModelRequest
from app.mqtt import parse_broker
from app.notify import validate_url
from app.sources.base import SOURCE_HELP, SourceSpec, is_utf8, parse_source_spec, shown
from app.watches import WatchError, validate_watch

# pacing faster than 100 images a second only burns the CPU; an hour apart is a still image already
# (and an infinite interval would overflow the capture thread's wait)
MIN_INTERVAL, MAX_INTERVAL = 0.01, 3600.0


@dataclass(frozen=True)
class AppConfig:
    """Everything the command line decides; the rest comes from the settings file."""

    source: SourceSpec = SourceSpec("auto")
    models: ModelRequest = ModelRequest()
    exit_after_captions: int | None = None
    interval: float = 3.0
    snapshot_dir: Path | None = None
    settings_path: Path | None = None
    fullscreen: bool = False  # kiosk mode for this run (a command-line choice, not saved)
    speak: bool = False  # speak captions and answers this run (the drawer's toggle, not saved)
    watches: tuple[str, ...] = ()  # --watch texts
    notify_url: str = ""  # --notify-url: POST each watch event as JSON here
    mqtt: str = ""  # --mqtt HOST[:PORT]: publish watch events in Home Assistant's conventions


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage block on errors; we print one line and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="blip-cam", description="Live BLIP captions and questions about what the camera sees.",
                       epilog="keys: Space caption now · Enter ask · S save snapshot · P pause/resume · "
                              "F11 full screen · Ctrl+Q quit")
    p.add_argument("--source", default="auto", metavar="SPEC",
                   help=f"where frames come from: {SOURCE_HELP} "
                        "(default: auto = Pi camera, else webcam 0, else scenes)")
    p.add_argument("--model", metavar="ID_OR_PATH",
                   help="one model for captions and questions (shortcut for both options below)")
    p.add_argument("--caption-model", metavar="ID_OR_PATH",
                   help=f"caption checkpoint (default: {DEFAULT_CAPTION_MODEL})")
    p.add_argument("--vqa-model", metavar="ID_OR_PATH",
                   help=f"question-answering checkpoint: BLIP VQA or BLIP-2 (e.g. Salesforce/blip2-opt-2.7b, "
                        "which answers open questions while BLIP keeps captioning live), or 'none' "
                        f"(default: {DEFAULT_VQA_MODEL}; unused when the caption model answers too)")
    p.add_argument("--precision", choices=PRECISIONS, default="int8",
                   help="weights: int8 (fast on CPU, default) or fp32")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for inference, up to 4 per CPU "
                        "(default: physical cores minus one, leaving one for the preview)")
    p.add_argument("--interval", type=float, default=3.0, metavar="SECONDS",
                   help="seconds per image for folder: and scenes sources (default: 3)")
    p.add_argument("--snapshot-dir", type=Path, metavar="DIR",
                   help="where snapshots go (default: the saved choice, else ~/Pictures/blip-cam)")
    p.add_argument("--settings", type=Path, metavar="PATH",
                   help="settings INI file (default: the per-user config file)")
    p.add_argument("--fullscreen", action="store_true",
                   help="kiosk mode: full screen without a window frame (F11 or Esc leaves it)")
    p.add_argument("--speak", action="store_true",
                   help="speak captions (when they change in meaning) and answers aloud with espeak-ng "
                        "(the drawer's Voice toggle; off by default)")
    p.add_argument("--watch", action="append", default=[], metavar="TEXT",
                   help="watch for TEXT (e.g. \"a person at the door\"; repeatable): each captioned frame is "
                        "scored with the matching model and each firing is printed to stdout as one JSON line, "
                        "with a snapshot tagged with the watch (works headless, offscreen)")
    p.add_argument("--notify-url", metavar="URL",
                   help="POST each watch event as JSON to this http(s) URL")
    p.add_argument("--mqtt", metavar="HOST[:PORT]",
                   help="publish watch events to this MQTT broker as Home Assistant binary sensors "
                        "(discovery under homeassistant/; default port 1883)")
    p.add_argument("--exit-after-captions", type=int, metavar="N",
                   help="print the first N captions to stdout, one per line, then exit 0 "
                        "(checks an install; works offscreen)")
    return p


def parse_args(argv: list[str] | None = None) -> AppConfig:
    """Parse and validate; on error print one line to stderr and ``SystemExit(2)``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        source = parse_source_spec(args.source)
    except ValueError as e:
        parser.error(str(e))
    if args.model is not None and (args.caption_model is not None or args.vqa_model is not None):
        parser.error("--model sets both models; do not combine it with --caption-model/--vqa-model")
    for option in ("model", "caption_model", "vqa_model"):
        value = getattr(args, option)
        if value is not None and not value.strip():
            parser.error(f"--{option.replace('_', '-')} is empty; give a model id or path (or leave the option out)")
    if args.threads is not None:
        _check_threads(parser, args.threads)
    if args.exit_after_captions is not None and args.exit_after_captions < 1:
        parser.error(f"--exit-after-captions must be at least 1, got {args.exit_after_captions}")
    if not MIN_INTERVAL <= args.interval <= MAX_INTERVAL:
        parser.error(f"--interval must be in [{MIN_INTERVAL:g}, {MAX_INTERVAL:g}] seconds, got {args.interval:g}")
    watches = []
    for text in args.watch:
        try:
            watches.append(validate_watch(text))
        except WatchError as e:
            parser.error(f"--watch: {e}")
    if args.notify_url is not None:
        try:
            validate_url(args.notify_url)
        except ValueError as e:
            parser.error(f"--notify-url: {e}")
    if args.mqtt is not None:
        try:
            parse_broker(args.mqtt)
        except ValueError as e:
            parser.error(f"--mqtt: {e}")
    if args.settings is not None and not is_utf8(str(args.settings)):
        # Qt would silently drop the undecodable bytes and use another file
        parser.error(f"--settings path {shown(str(args.settings))} is not valid UTF-8, which Qt cannot open; rename it")
    if args.model:
        caption, vqa = args.model, args.model
    else:
        caption = args.caption_model or DEFAULT_CAPTION_MODEL
        vqa = args.vqa_model or DEFAULT_VQA_MODEL
        if vqa.lower() == "none":
            vqa = None
    models = ModelRequest(caption=caption, vqa=vqa, precision=args.precision, threads=args.threads)
    return AppConfig(source, models, args.exit_after_captions, args.interval, args.snapshot_dir, args.settings,
                     args.fullscreen, args.speak, tuple(dict.fromkeys(watches)), args.notify_url or "",
                     args.mqtt or "")


def _check_threads(parser: argparse.ArgumentParser, threads: int) -> None:
    """The library's bound (100000 threads hung the machine), checked here so the error comes
    before Qt starts; blip_core is imported only when --threads is given (it costs ~0.2 s)."""
    from blip_core.api import MAX_THREADS, max_threads

    if not 1 <= threads <= max_threads():
        parser.error(f"--threads must be in [1, {max_threads()}] (4 per CPU, at most {MAX_THREADS}), got {threads}")


if __name__ == "__main__":  # handy for checking a command line: python -m app.arguments --source ...
    print(parse_args(sys.argv[1:]))
