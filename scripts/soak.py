"""Soak the real app: ``blip-cam`` through its own entry point, offscreen, generated scenes at camera
rate (30 fps by default), captioning continuously, a question every few seconds and a snapshot every
so often, for a set time. Prints one JSON summary line and exits 0 if the app stayed alive and
answering with flat memory, 1 otherwise (the reasons are in the summary's ``failures``).

``make soak`` runs it for 10 minutes; ``tests/app/test_app_soak.py`` runs a shorter one in
``make test``. A crash (e.g. the Qt binding freeing ``None``) kills this process: the caller sees
its exit status and stderr, never a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class SoakStats:
    seconds: float = 0.0
    frames_shown: int = 0
    captions: int = 0
    questions: int = 0
    answers: int = 0
    answer_errors: int = 0
    snapshots: int = 0
    longest_caption_gap_s: float = 0.0
    rss_mb: list[float] = field(default_factory=list)  # one sample per second
    none_refcount_min: int = 0
    none_refcount_start: int = 0
    failures: list[str] = field(default_factory=list)

    def memory_growth_mb(self, warmup_fraction: float) -> float:
        """Median RSS over the last tenth of the run minus the median over the tenth after warm-up
        (medians, so one decoder arena growing for a long caption does not count as a leak)."""
        n = len(self.rss_mb)
        if n < 10:
            return 0.0
        start = int(n * warmup_fraction)
        width = max(3, n // 10)
        return statistics.median(self.rss_mb[-width:]) - statistics.median(self.rss_mb[start:start + width])


class Driver:
    """Plays the user: asks questions and saves snapshots on a schedule, and records everything."""

    def __init__(self, args, stats: SoakStats):
        self.args, self.stats = args, stats
        self.window = None
        self.t0 = time.monotonic()
        self.last_caption_t: float | None = None
        self.next_question = self.next_snapshot = 0.0

    def tick(self) -> None:
        from PySide6.QtWidgets import QApplication

        from app.main_window import MainWindow

        now = time.monotonic() - self.t0
        if self.window is None:
            self.window = next((w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)), None)
            if self.window is None:
                return
            self.window.caption_shown.connect(self._on_caption)
            self.window.snapshot_saved.connect(lambda *_: self._count("snapshots"))
            self.window.answer_shown.connect(self._on_answer)
        self.stats.rss_mb.append(round(rss_mb(), 1))
        refs = sys.getrefcount(None)
        self.stats.none_refcount_min = min(self.stats.none_refcount_min or refs, refs)
        self.stats.none_refcount_start = self.stats.none_refcount_start or refs
        if self.last_caption_t is not None:
            self.stats.longest_caption_gap_s = max(self.stats.longest_caption_gap_s, now - self.last_caption_t)
        ready = self.window.models is not None and self.window.models.answerer is not None
        if ready and now >= self.next_question and self.window.preview.frame is not None:
            self.next_question = now + self.args.question_every
            self._ask()
        if ready and now >= self.next_snapshot and self.window.last_caption is not None:
            self.next_snapshot = now + self.args.snapshot_every
            self.window.save_snapshot()
        if now >= self.args.seconds:
            self.stats.seconds = round(now, 1)
            self.stats.frames_shown = int(getattr(self.window.capture, "frames_captured", 0))
            self.window.close()

    def _on_caption(self, _outcome) -> None:
        now = time.monotonic() - self.t0
        if self.last_caption_t is not None:
            self.stats.longest_caption_gap_s = max(self.stats.longest_caption_gap_s, now - self.last_caption_t)
        self.last_caption_t = now
        self.stats.captions += 1

    def _ask(self) -> None:
        questions = ("what colour is the biggest shape?", "how many shapes are there?", "what is on the left?")
        question = questions[self.stats.questions % len(questions)]
        self.window.ask(question)
        self.stats.questions += 1

    def _on_answer(self, outcome) -> None:
        self._count("answer_errors" if getattr(outcome, "error", "") else "answers")

    def _count(self, name: str) -> None:
        setattr(self.stats, name, getattr(self.stats, name) + 1)


def judge(stats: SoakStats, args) -> list[str]:
    """What went wrong, if anything: the app must caption throughout, answer what it was asked and
    keep its memory flat."""
    failures = []
    if stats.seconds < args.seconds:
        failures.append(f"the app ended after {stats.seconds:.0f} s of {args.seconds:.0f}")
    if stats.captions < args.seconds / 4:
        failures.append(f"only {stats.captions} captions in {args.seconds:.0f} s")
    if stats.longest_caption_gap_s > args.max_caption_gap:
        failures.append(f"no caption for {stats.longest_caption_gap_s:.1f} s (allowed {args.max_caption_gap} s)")
    if stats.questions == 0 or stats.answers < stats.questions - 1 or stats.answer_errors:
        failures.append(f"{stats.answers} answers ({stats.answer_errors} errors) to {stats.questions} questions")
    growth = stats.memory_growth_mb(args.warmup)
    if growth > args.max_growth_mb:
        failures.append(f"memory grew {growth:.1f} MB after warm-up (allowed {args.max_growth_mb} MB)")
    if stats.none_refcount_start and stats.none_refcount_min < stats.none_refcount_start - 1000:
        failures.append(f"None's reference count fell from {stats.none_refcount_start} to {stats.none_refcount_min}")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--interval", type=float, default=1 / 30, help="seconds per generated frame (default: 30 fps)")
    p.add_argument("--model", default=str(REPO / "assets" / "blip-scenes-demo"))
    p.add_argument("--precision", default="int8")
    p.add_argument("--threads", type=int, default=None, help="the app's inference threads (default: its own)")
    p.add_argument("--question-every", type=float, default=5.0, help="seconds between questions")
    p.add_argument("--snapshot-every", type=float, default=30.0, help="seconds between snapshots")
    p.add_argument("--warmup", type=float, default=0.25, help="fraction of the run before memory is compared")
    p.add_argument("--max-growth-mb", type=float, default=16.0)
    p.add_argument("--max-caption-gap", type=float, default=10.0, help="seconds without a caption that count as a hang")
    args = p.parse_args(argv)

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.main import main as blip_cam

    stats = SoakStats()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    driver = Driver(args, stats)
    timer = QTimer(interval=1000)
    timer.timeout.connect(driver.tick)
    timer.start()
    with tempfile.TemporaryDirectory() as tmp:
        status = blip_cam(["--source", "scenes", "--interval", str(args.interval), "--model", args.model,
                           "--precision", args.precision, "--settings", str(Path(tmp) / "soak.ini"),
                           "--snapshot-dir", str(Path(tmp) / "snapshots"),
                           *(["--threads", str(args.threads)] if args.threads else [])])
    timer.stop()
    del app
    if status != 0:
        stats.failures.append(f"blip-cam returned {status}")
    stats.failures += judge(stats, args)
    summary = asdict(stats) | {"memory_growth_mb": round(stats.memory_growth_mb(args.warmup), 1),
                               "rss_mb_first": stats.rss_mb[:1], "rss_mb_max": max(stats.rss_mb, default=0)}
    print(json.dumps(summary), flush=True)
    return 1 if stats.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
