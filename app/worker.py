"""The background threads: inference (models, captions, answers, snapshot ranking), snapshot
writing and snapshot reading. The GUI thread only submits jobs and receives signals; it never
waits on any of them.

Why snapshot writing has its own thread: the JPEG encode is quick, but ``fsync`` on a Pi's SD card
can take hundreds of milliseconds, and a caption in progress must not delay a save either. Reading
has its own too: listing a folder of hundreds of snapshots and decoding their thumbnails takes
seconds on a Pi, and a folder is untrusted (a FIFO named like a snapshot blocks whoever opens it
without care), so none of it may run on the GUI thread or hold up a save.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal

from app.inference import MAX_RANKED_SNAPSHOTS, AnswerOutcome, InferenceEngine, PartialText
from app.jobs import JobThread
from app.model_choice import LoadedModels, Loader, ModelRequest, default_loader
from app.prompts import CaptionOptions
from app.snapshots import SnapshotError, SnapshotRecord, read_thumbnail, scan_snapshots, write_snapshot
from app.sources.base import Frame
from app.watches import WatchScores

log = logging.getLogger(__name__)


def _is_user_error(e: Exception) -> bool:
    from blip_core.errors import BlipError  # lazily, as all of blip_core (see app.model_choice)

    return isinstance(e, BlipError)


def _message(e: Exception) -> str:
    # BlipError messages are written for users; anything else is a bug, so say what it was
    return str(e) if _is_user_error(e) else f"internal error: {type(e).__name__}: {e}"


class LoadCancelled(Exception):
    """Raised from the progress callback when the app closes mid-load, to abandon a download
    (huggingface_hub resumes it next time) instead of making the window wait for it."""


class RankSuperseded(Exception):
    """Raised from the ranking's progress callback when a newer search (or the app closing) makes
    this ranking pointless, to stop it at its next snapshot."""


class Abandoned(Exception):
    """Raised from a streaming callback to stop a decode midway: a newer caption superseded it, or
    the app is closing. Nothing is reported for it but ``caption_abandoned``."""


THUMBNAIL_BATCH = 16  # thumbnails per signal: the grid fills as they come, without a signal per image
RANK_PROGRESS_INTERVAL = 0.1  # s between rank_progress signals: a live count without flooding the GUI
PARTIAL_INTERVAL = 0.05  # s between partial-text signals: ~20 overlay updates a second at most


class Throttle:
    """``due()`` is True the first time and then once per ``interval`` seconds (monotonic clock)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


@dataclass(frozen=True)
class RankOutcome:
    """Snapshot records ranked against a query: ``ranked`` is [(record, itm, itc)], best first;
    ``left_out`` counts the snapshots whose image could not be decoded (or was deleted)."""

    query: str
    ranked: list
    model: str
    left_out: int = 0


class InferenceWorker(JobThread):
    """Owns the InferenceEngine; every model call happens on this thread."""

    load_progress = Signal(float, str)  # fraction 0..1, message
    models_changed = Signal(object)  # LoadedModels: after the caption model, again after the VQA model
    models_failed = Signal(str)
    caption_ready = Signal(object)  # engine.CaptionOutcome
    caption_failed = Signal(str)
    answer_ready = Signal(object)  # engine.AnswerOutcome (with .error set when it failed)
    # the text so far of a running caption / answer (engine.PartialText), at most every PARTIAL_INTERVAL;
    # the final caption_ready / answer_ready always follows unless the caption is abandoned
    caption_partial = Signal(object)
    answer_partial = Signal(object)
    caption_abandoned = Signal(int)  # frame index of a caption stopped midway by a newer request
    rank_ready = Signal(object)  # RankOutcome
    rank_failed = Signal(str)
    rank_progress = Signal(int, int)  # snapshots ranked so far, of how many (throttled; the last always sent)
    watch_scores = Signal(object)  # watches.WatchScores of a frame just captioned (when watches are set)
    watch_failed = Signal(str)

    def __init__(self, loader: Loader | None = None, parent=None):
        super().__init__("inference", parent)
        self._loader = loader
        self.engine = InferenceEngine(loader)  # loader resolved in the thread when None
        self._latest_rank = 0  # written on the GUI thread only; the worker thread compares
        self._caption_count = 0  # caption requests so far (GUI thread)
        self._abandon_before = 0  # a running caption with a smaller number stops at its next token
        self._watch_texts: tuple[str, ...] = ()  # replaced whole on the GUI thread, read here

    # --- submissions (GUI thread) -------------------------------------------------------------

    def load_models(self, request: ModelRequest) -> None:
        self.submit(lambda: self._load(request))

    def request_caption(self, frame: Frame, options: CaptionOptions, *, supersede: bool = False) -> None:
        """Caption ``frame`` when free; a newer request replaces this one if it is still waiting.

        ``supersede=True`` (the user asked: caption now, new options) also abandons a caption that
        is being decoded, at its next token. Continuous captioning's frames do not: at camera rate
        every caption would be abandoned by the next frame and none would ever finish."""
        self._caption_count += 1
        number = self._caption_count
        if supersede:
            self._abandon_before = number
        self.submit_latest(lambda: self._caption(number, frame, options))

    def set_watches(self, texts) -> None:
        """Score each captioned frame against ``texts`` from now on (empty: stop scoring)."""
        self._watch_texts = tuple(texts)

    def ask(self, frame: Frame, question: str, tag: Any = None) -> None:
        self.submit(lambda: self._answer(frame, question, tag))

    def rank(self, query: str, records: list) -> None:
        """Rank ``records`` against ``query``. A newer ``rank`` supersedes this one: dropped if it
        still waits, stopped at its next snapshot if it runs (no signal for it either way). Queued,
        not ``submit_latest``: that slot is the captions', which would drop the ranking."""
        self._latest_rank += 1
        rank_id = self._latest_rank
        self.submit(lambda: self._rank(rank_id, query, records))

    # --- jobs (worker thread) -----------------------------------------------------------------

    def _progress(self, fraction: float, message: str) -> None:
        if self.stopping:
            raise LoadCancelled("the app is closing")
        self.load_progress.emit(float(fraction), str(message))

    def _snapshot_models(self) -> LoadedModels:
        # a copy, so the GUI never reads an object this thread is still filling in
        models = self.engine.models
        return dataclasses.replace(models, notices=list(models.notices))

    def _load(self, request: ModelRequest) -> None:
        try:
            if self.engine.loader is None:
                self._progress(0.0, "starting the model library")
                self.engine.loader = default_loader()  # imports blip_core: kept off the GUI thread
            self.engine.load_captioner(request, self._progress)
            self.models_changed.emit(self._snapshot_models())
            self.engine.load_answerer(request, self._progress)
            self.models_changed.emit(self._snapshot_models())
        except LoadCancelled:
            return
        except Exception as e:
            if not _is_user_error(e):
                log.exception("model loading failed")
            self.models_failed.emit(_message(e))

    def _caption(self, number: int, frame: Frame, options: CaptionOptions) -> None:
        throttle = Throttle(PARTIAL_INTERVAL)
        model = self.engine.models.captioner
        name = model.name if model is not None else ""

        def partial(text: str, first_word_ms: float | None) -> None:
            if number < self._abandon_before or self.stopping:
                raise Abandoned
            if throttle.due():
                self.caption_partial.emit(PartialText(frame.index, text, first_word_ms, name))

        try:
            outcome = self.engine.caption(frame, options, partial)
        except Abandoned:
            self.caption_abandoned.emit(frame.index)
            return
        except Exception as e:
            if not _is_user_error(e):
                log.exception("caption failed")
            self.caption_failed.emit(_message(e))
            return
        self.caption_ready.emit(outcome)
        self._score_watches(frame, outcome.text)

    def _score_watches(self, frame: Frame, caption: str) -> None:
        texts = self._watch_texts
        if not texts or self.engine.models.matcher is None:
            return  # the window says when the models cannot match
        try:
            scores = self.engine.match_texts(frame, list(texts))
        except Exception as e:
            if not _is_user_error(e):
                log.exception("watch scoring failed")
            self.watch_failed.emit(_message(e))
            return
        self.watch_scores.emit(WatchScores(frame, caption, scores))

    def _answer(self, frame: Frame, question: str, tag: Any) -> None:
        throttle = Throttle(PARTIAL_INTERVAL)
        model = self.engine.models.answerer
        name = model.name if model is not None else ""

        def partial(text: str, first_word_ms: float | None) -> None:
            if self.stopping:  # a question is never superseded; only closing the app stops it
                raise Abandoned
            if throttle.due():
                self.answer_partial.emit(PartialText(frame.index, text, first_word_ms, name, question, tag))

        try:
            outcome = self.engine.answer(frame, question, tag, partial)
        except Abandoned:
            return
        except Exception as e:
            if not _is_user_error(e):
                log.exception("answer failed")
            from blip_core.results import Timings

            outcome = AnswerOutcome(frame.index, question, None, Timings(), False, error=_message(e), tag=tag)
        self.answer_ready.emit(outcome)

    def _rank_reporter(self, rank_id: int):
        """-> ``progress(done, total)`` for ``rank_snapshots``: emits ``rank_progress`` at most every
        RANK_PROGRESS_INTERVAL (the first and last always), raises RankSuperseded once replaced."""
        last_emit = -RANK_PROGRESS_INTERVAL

        def report(done: int, total: int) -> None:
            nonlocal last_emit
            if rank_id != self._latest_rank or self.stopping:
                raise RankSuperseded
            now = time.monotonic()
            if done in (0, total) or now - last_emit >= RANK_PROGRESS_INTERVAL:
                last_emit = now
                self.rank_progress.emit(done, total)

        return report

    def _rank(self, rank_id: int, query: str, records: list) -> None:
        try:
            ranked = self.engine.rank_snapshots(query, records, self._rank_reporter(rank_id))
        except RankSuperseded:
            return
        except Exception as e:
            if not _is_user_error(e):
                log.exception("ranking failed")
            self.rank_failed.emit(_message(e))
            return
        asked = min(len(records), MAX_RANKED_SNAPSHOTS)
        self.rank_ready.emit(RankOutcome(query, ranked, self.engine.models.matcher.name, asked - len(ranked)))


class SnapshotSaver(JobThread):
    """Writes snapshots in order, off the GUI thread."""

    saved = Signal(object)  # SnapshotRecord with .path set
    failed = Signal(str)
    finished = Signal(object, object)  # the save's tag (when given), SnapshotRecord with .path or None if failed

    def __init__(self, parent=None):
        super().__init__("snapshots", parent)

    def save(self, folder: str | Path, image, record: SnapshotRecord, tag: Any = None) -> None:
        """Write a snapshot; ``tag`` (e.g. a watch event) comes back with ``finished`` either way."""
        self.submit(lambda: self._save(Path(folder), image, record, tag))

    def _save(self, folder: Path, image, record: SnapshotRecord, tag: Any = None) -> None:
        saved = None
        try:
            saved = write_snapshot(folder, image, record)
        except SnapshotError as e:
            self.failed.emit(str(e))
        except Exception as e:  # e.g. an encoder error: report it, keep the app running
            log.exception("snapshot failed")
            self.failed.emit(f"Snapshot not saved: {type(e).__name__}: {e}")
        else:
            self.saved.emit(saved)
        if tag is not None:
            self.finished.emit(tag, saved)


class SnapshotReader(JobThread):
    """Reads a snapshot folder for the browser: the listing (sidecars included) first, then the
    thumbnails in batches. Each ``read`` gets an id that its signals carry; a newer read replaces
    a waiting one and stops a running one at its next file, so only the latest reaches the GUI."""

    listed = Signal(int, object)  # read id, snapshots.SnapshotListing
    thumbnails_ready = Signal(int, object)  # read id, [(jpeg path, H x W x 3 uint8 RGB thumbnail)]

    def __init__(self, parent=None):
        super().__init__("snapshot reader", parent)
        self._latest_read = 0  # written on the GUI thread only; the reading thread compares

    def read(self, folder: str | Path, *, limit: int, thumb_size: tuple[int, int], known=frozenset()) -> int:
        """List ``folder`` (its newest ``limit`` snapshots), then decode the thumbnails of those not
        in ``known`` (paths whose thumbnails the caller has). Returns the read's id."""
        self._latest_read += 1
        read_id = self._latest_read
        known = frozenset(known)
        self.submit_latest(lambda: self._read(read_id, Path(folder), limit, thumb_size, known))
        return read_id

    def _superseded(self, read_id: int) -> bool:
        return read_id != self._latest_read or self.stopping

    def _read(self, read_id: int, folder: Path, limit: int, thumb_size: tuple[int, int], known: frozenset) -> None:
        listing = scan_snapshots(folder, limit)
        self.listed.emit(read_id, listing)
        batch = []
        for record in listing.records:
            if self._superseded(read_id):
                return
            if record.path in known:
                continue
            thumbnail = self._thumbnail(record.path, thumb_size)
            if thumbnail is not None:
                batch.append((record.path, thumbnail))
            if len(batch) == THUMBNAIL_BATCH:
                self.thumbnails_ready.emit(read_id, batch)
                batch = []
        if batch:
            self.thumbnails_ready.emit(read_id, batch)

    @staticmethod
    def _thumbnail(path: Path, size: tuple[int, int]):
        from blip_core.errors import BadImageError

        try:
            return read_thumbnail(path, size)
        except BadImageError:  # its sidecar is fine, so it is listed, without a thumbnail
            return None
