"""The main window: wires the capture thread, the inference worker, the snapshot saver and the
widgets together. All slots here run on the GUI thread and only submit work or update widgets.

Data flow (docs/architecture.md, "app"):
    CaptureThread --mailbox--> preview (every frame)
                         \\--> InferenceWorker.request_caption (newest frame wins)
    InferenceWorker --signals--> overlay, question history, status bar

Captions and answers stream: their text so far reaches the overlay (``partial_shown``) as it is
decoded, marked as unfinished, until the final one replaces it. A partial caption that is a
prefix of the caption on screen is not shown: the new caption is saying the same so far, and
showing its first words would make a still scene flicker at every caption.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QByteArray, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QResizeEvent, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app import speech
from app.arguments import AppConfig
from app.capture import CaptureThread
from app.inference import AnswerOutcome, CaptionOutcome, PartialText
from app.model_choice import LoadedModels, Loader, short_name
from app.questions import QAHistory, QuestionError, validate_question
from app.settings import Settings
from app.snapshots import SnapshotRecord
from app.sources import FrameSource, make_source
from app.sources.base import Frame
from app.watch_controller import WatchController
from app.widgets.controls import CaptionControls
from app.widgets.overlay import STREAMING_MARK, OverlayState, answer_line
from app.widgets.plain_text import plain_label
from app.widgets.preview import PreviewWidget
from app.widgets.question_panel import QuestionPanel
from app.widgets.snapshot_browser import SnapshotBrowser
from app.widgets.speech_controls import SpeechControls
from app.widgets.touch import touch_sized
from app.widgets.watch_panel import HIGHLIGHT_MS, WatchPanel
from app.worker import InferenceWorker, RankOutcome, SnapshotReader, SnapshotSaver

CAPTIONS_KEPT = 20  # recent captions by frame, so a snapshot of a frozen frame finds its caption
# below this width or height the drawer starts folded: the Raspberry Pi Touch Displays (800x480
# landscape, 720x1280 portrait) then show the preview, the main buttons and the question box at once
COMPACT_SIZE = (1000, 640)


class MainWindow(QMainWindow):
    """``caption_shown(CaptionOutcome)`` fires after each caption reaches the overlay;
    ``models_failed(message)`` when no caption model could be loaded."""

    caption_shown = Signal(object)
    partial_shown = Signal(object)  # PartialText of a caption or answer that the overlay now shows
    answer_shown = Signal(object)
    models_failed = Signal(str)
    snapshot_saved = Signal(object)
    snapshot_failed = Signal(str)
    # the capture thread's failing(message, count), relayed by the window: delivered on the GUI
    # thread and disconnected with the window, so a listener never outlives what it watches
    source_failing = Signal(str, int)
    speech_failed = Signal(str)  # from the speech thread; queued to the GUI thread
    watch_fired = Signal(object)  # watches.WatchEvent, after its snapshot was saved (or failed)

    def __init__(self, config: AppConfig, settings: Settings, *, loader: Loader | None = None,
                 source: FrameSource | None = None, retry_delays: tuple[float, ...] | None = None):
        super().__init__()
        self.setWindowTitle("blip-cam")
        self.config = config
        self.settings = settings
        self.models: LoadedModels | None = None
        self.paused = False
        self.latest_frame: Frame | None = None
        self.question_frame: Frame | None = None
        self.last_caption: CaptionOutcome | None = None
        self.partial_caption: PartialText | None = None  # a caption still being decoded, on screen
        self.captions_abandoned = 0
        self.captions: OrderedDict[int, CaptionOutcome] = OrderedDict()
        self.history = QAHistory()
        self.last_answer_line = ""  # the overlay's answer line, once a question was answered
        self.captions_shown = 0
        self.load_message = "loading models…"
        self.browser: SnapshotBrowser | None = None
        self.speech: speech.SpeechQueue | None = None  # while the Voice toggle is on
        self._watch_alert: tuple[str, float] | None = None  # (overlay line, until when: monotonic s)
        self._started = self._shut_down = False
        self._saved_continuous: bool | None = None
        self._compact: bool | None = None  # unknown until the first resize

        if source is None:
            source = make_source(config.source, interval=config.interval)
        kwargs = {"retry_delays": retry_delays} if retry_delays is not None else {}
        self.capture = CaptureThread(source, **kwargs)
        self.worker = InferenceWorker(loader)
        self.saver = SnapshotSaver()
        self.snapshot_reader = SnapshotReader()  # the browser's: folder listing and thumbnails
        self._folder_override = config.snapshot_dir  # --snapshot-dir: this run only, not saved

        self._build_ui()
        self.watcher = WatchController(self.worker, self.saver, self.watch_panel, self._watch_snapshot, parent=self)
        self._connect()
        for text in config.watches:  # checked by parse_args
            self.watcher.add(text)
        if config.notify_url:
            self.watcher.set_url(config.notify_url)
        if config.mqtt:
            self.watcher.set_mqtt(config.mqtt)
        self.controls.load(settings)
        self.preview.set_overlay_position(self.controls.overlay_position.currentText())
        if config.speak or settings.get("speech/enabled"):
            self.set_speaking(True)
        geometry = settings.get("window/geometry")
        if geometry:
            self.restoreGeometry(QByteArray(geometry))
        else:
            self.resize(1180, 720)

    # --- construction ------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.preview = PreviewWidget()
        self.notice = plain_label()
        self.notice.setObjectName("notice")
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("background: #fff3cd; color: #664d03; padding: 6px; border-radius: 4px;")
        self.notice.hide()
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.notice)
        left_layout.addWidget(self.preview, 1)

        self.controls = CaptionControls()
        self.questions = QuestionPanel()
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addLayout(self._action_buttons())
        side_layout.addWidget(self.questions, 1)
        side_layout.addWidget(self._build_drawer(), 1)

        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.setChildrenCollapsible(False)
        self.split.addWidget(left)
        self.split.addWidget(side)
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 2)
        self.setCentralWidget(self.split)

        self.source_label = plain_label("source: starting…")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(True)
        self.model_label = plain_label("models: loading…")
        bar = self.statusBar()
        bar.addWidget(self.source_label, 1)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.model_label)

        for keys, slot in ((Qt.Key.Key_Space, self.caption_now), (Qt.Key.Key_S, self.save_snapshot),
                           (Qt.Key.Key_P, self.toggle_pause), (Qt.Key.Key_Return, self._on_return),
                           (Qt.Key.Key_Enter, self._on_return), ("Ctrl+Q", self.close),
                           (Qt.Key.Key_F11, self.toggle_fullscreen), (Qt.Key.Key_Escape, self.leave_fullscreen)):
            QShortcut(QKeySequence(keys), self, activated=slot)

    def _action_buttons(self) -> QGridLayout:
        """The buttons used all the time, touch-sized and always in view: caption now, pause, save,
        and the toggle of the drawer that holds the rest."""
        self.save_button = QPushButton("Save (S)")
        self.more_button = QPushButton("More ⋯")
        self.more_button.setCheckable(True)
        self.more_button.setToolTip("Show or hide the prompt, decoding, display and snapshot folder settings")
        touch_sized(self.save_button, self.more_button)
        grid = QGridLayout()
        grid.addWidget(self.controls.buttons, 0, 0, 1, 2)
        grid.addWidget(self.save_button, 1, 0)
        grid.addWidget(self.more_button, 1, 1)
        return grid

    def _build_drawer(self) -> QScrollArea:
        """The drawer: the seldom-used controls, open on large windows, folded away on small ones
        (``adapt_layout``); it scrolls so that it never pushes the question box out of view."""
        snapshots = QGroupBox("Snapshots")
        snap_layout = QVBoxLayout(snapshots)
        snap_row = QHBoxLayout()
        self.folder_button = QPushButton("Folder…")
        self.browse_button = QPushButton("Browse…")
        touch_sized(self.folder_button, self.browse_button)
        snap_row.addWidget(self.folder_button)
        snap_row.addWidget(self.browse_button)
        self.snapshot_label = plain_label()
        self.snapshot_label.setObjectName("snapshot_label")
        self.snapshot_label.setWordWrap(True)
        self.snapshot_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        snap_layout.addLayout(snap_row)
        snap_layout.addWidget(self.snapshot_label)
        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.addWidget(self.controls)
        content_layout.addWidget(snapshots)
        self.voice = SpeechControls()
        content_layout.addWidget(self.voice)
        self.watch_panel = WatchPanel()
        content_layout.addWidget(self.watch_panel)
        content_layout.addStretch(1)
        self.drawer = QScrollArea()
        self.drawer.setObjectName("drawer")
        self.drawer.setWidget(content)
        self.drawer.setWidgetResizable(True)
        self.drawer.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.drawer.hide()
        return self.drawer

    def _connect(self) -> None:
        self.capture.frame_available.connect(self._on_frame_available)
        self.capture.status.connect(self._on_source_status)
        self.capture.failing.connect(self.source_failing)
        w = self.worker
        w.load_progress.connect(self._on_load_progress)
        w.models_changed.connect(self._on_models_changed)
        w.models_failed.connect(self._on_models_failed)
        w.caption_ready.connect(self._on_caption_ready)
        w.caption_failed.connect(self._on_caption_failed)
        w.caption_partial.connect(self._on_caption_partial)
        w.caption_abandoned.connect(self._on_caption_abandoned)
        w.answer_partial.connect(self._on_answer_partial)
        w.answer_ready.connect(self._on_answer_ready)
        w.job_failed.connect(lambda m: self.statusBar().showMessage(m, 10_000))
        self.saver.saved.connect(self._on_snapshot_saved)
        self.saver.failed.connect(self._on_snapshot_failed)
        self.controls.options_changed.connect(self._on_options_changed)
        self.controls.continuous_toggled.connect(self._on_continuous_toggled)
        self.controls.caption_now.connect(self.caption_now)
        self.controls.pause_toggled.connect(self.set_paused)
        self.controls.overlay_moved.connect(self._on_overlay_moved)
        self.more_button.toggled.connect(self.drawer.setVisible)
        self.questions.ask_requested.connect(self.ask)
        self.questions.new_frame_requested.connect(self.release_question_frame)
        self.save_button.clicked.connect(self.save_snapshot)
        self.folder_button.clicked.connect(self.choose_folder)
        self.browse_button.clicked.connect(self.open_browser)
        self.voice.speak.toggled.connect(self._on_speak_toggled)
        self.speech_failed.connect(self._on_speech_failed)
        self.watcher.fired.connect(self.watch_fired)
        self.watcher.alert.connect(self._on_watch_alert)

    # --- size, screen and touch ------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.adapt_layout()

    def adapt_layout(self) -> None:
        """Fit the window's shape: portrait puts the questions under the preview; a small window
        folds the drawer away (crossing the size threshold, so a user's own choice then stays)."""
        width, height = self.width(), self.height()
        orientation = Qt.Orientation.Vertical if height > width else Qt.Orientation.Horizontal
        if self.split.orientation() != orientation:
            self.split.setOrientation(orientation)
            total = height if orientation == Qt.Orientation.Vertical else width
            self.split.setSizes([total * 3 // 5, total * 2 // 5])
        compact = width < COMPACT_SIZE[0] or height < COMPACT_SIZE[1]
        if compact != self._compact:
            self._compact = compact
            self.more_button.setChecked(not compact)

    def toggle_fullscreen(self) -> None:
        """F11: kiosk mode (full screen, no frame) on or off."""
        if self.isFullScreen():
            self.showNormal()
        else:
            self.showFullScreen()

    def leave_fullscreen(self) -> None:
        """Esc: the way out of kiosk mode everyone tries first."""
        if self.isFullScreen():
            self.showNormal()

    def _on_overlay_moved(self, position: str) -> None:
        self.preview.set_overlay_position(position)
        self.controls.save(self.settings)

    def start(self) -> None:
        """Start the threads and the model load (separate from __init__ so tests can wire first)."""
        if self._started:
            return
        self._started = True
        self.capture.start()
        self.worker.start()
        self.saver.start()
        self.snapshot_reader.start()
        self.worker.load_models(self.config.models)
        self._refresh_overlay()

    # --- frames and captions -----------------------------------------------------------------

    @property
    def continuous(self) -> bool:
        return self.controls.continuous.isChecked()

    @property
    def can_caption(self) -> bool:
        return self.models is not None and self.models.captioner is not None

    def _on_frame_available(self) -> None:
        frame = self.capture.mailbox.take()
        if frame is None or self.paused:
            return  # paused: the preview keeps the frame it froze on
        self.latest_frame = frame
        self.preview.set_frame(frame)
        self._refresh_overlay()
        if self.continuous and self.can_caption:
            self.worker.request_caption(frame, self.controls.options())

    def caption_now(self) -> None:
        """Space: caption the frame on screen now (the paused frame, when paused)."""
        frame = self.preview.frame
        if frame is None:
            self.statusBar().showMessage("No frame yet", 3000)
        elif not self.can_caption:
            self.statusBar().showMessage(self.load_message, 3000)
        else:
            self.worker.request_caption(frame, self.controls.options(), supersede=True)

    def _on_caption_partial(self, partial: PartialText) -> None:
        shown = self.last_caption.text if self.last_caption is not None else ""
        if self.partial_caption is None and shown.startswith(partial.text):
            return  # the same so far as the caption on screen: keep it (see the module docstring)
        self.partial_caption = partial
        self._refresh_overlay()
        self.partial_shown.emit(partial)

    def _on_caption_abandoned(self, _frame_index: int) -> None:
        self.captions_abandoned += 1
        if self.partial_caption is not None:
            self.partial_caption = None
            self._refresh_overlay()

    def _on_caption_ready(self, outcome: CaptionOutcome) -> None:
        self.partial_caption = None
        self.last_caption = outcome
        self.captions[outcome.frame.index] = outcome
        while len(self.captions) > CAPTIONS_KEPT:
            self.captions.popitem(last=False)
        self.captions_shown += 1
        self._refresh_overlay()
        if self.speech is not None:
            self.speech.offer_caption(outcome.text)
        self.caption_shown.emit(outcome)

    def _on_caption_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Caption failed: {message}", 10_000)

    def _on_options_changed(self) -> None:
        self.controls.save(self.settings)
        # show the effect of a new prompt/decoding choice at once, even when not continuous
        if self.can_caption and self.preview.frame is not None and (self.paused or not self.continuous):
            self.worker.request_caption(self.preview.frame, self.controls.options(), supersede=True)

    def _on_continuous_toggled(self, on: bool) -> None:
        self._saved_continuous = None  # the user chose: that choice is the one to keep
        self.controls.save(self.settings)
        if on and self.can_caption and self.latest_frame is not None and not self.paused:
            self.worker.request_caption(self.latest_frame, self.controls.options())

    def set_continuous(self, on: bool, *, persist: bool = True) -> None:
        """Switch continuous captioning; ``persist=False`` for a one-off (``--exit-after-captions``)."""
        if not persist:
            self._saved_continuous = self.settings.get("captioning/continuous")
            self.controls.continuous.blockSignals(True)
        self.controls.continuous.setChecked(on)
        self.controls.continuous.blockSignals(False)

    def toggle_pause(self) -> None:
        self.controls.set_paused(not self.paused)  # the button's toggled signal calls set_paused

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if self.controls.pause_button.isChecked() != paused:
            self.controls.set_paused(paused)
        self._refresh_overlay()

    def overlay_state(self) -> OverlayState:
        c = self.last_caption
        status = "paused (P resumes)" if self.paused else ""
        if not self.can_caption:
            status = self.load_message
        if self._watch_alert is not None and time.monotonic() < self._watch_alert[1]:
            status = " · ".join(filter(None, [self._watch_alert[0], status]))
        fps = self.latest_frame.fps if self.latest_frame else 0.0
        p = self.partial_caption
        if p is not None:
            model = self.models.captioner if self.can_caption else None
            return OverlayState(p.text, camera_fps=fps, model=short_name(p.model), status=status,
                                precision=model.precision if model else "", answer=self.last_answer_line,
                                first_word_ms=p.first_word_ms, streaming=True)
        if c is None:
            model = self.models.captioner if self.can_caption else None
            return OverlayState(camera_fps=fps, model=short_name(model.name) if model else "",
                                precision=model.precision if model else "", status=status,
                                answer=self.last_answer_line)
        t = c.timings
        return OverlayState(c.text, t.vision_ms, t.decode_ms, t.total_ms, c.tokens_per_s, fps, short_name(c.model),
                            c.precision, status, self.last_answer_line, first_word_ms=c.first_word_ms)

    def _refresh_overlay(self) -> None:
        self.preview.set_overlay(self.overlay_state())

    # --- models ------------------------------------------------------------------------------

    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.progress.show()
        self.progress.setValue(round(100 * max(0.0, min(1.0, fraction))))
        self.load_message = message
        self.model_label.setText(message)
        self._refresh_overlay()

    def _on_models_changed(self, models: LoadedModels) -> None:
        first = self.models is None
        self.models = models
        self.progress.hide()
        parts = [f"captions: {short_name(models.captioner.name)} ({models.captioner.precision})"]
        if models.shared:
            parts.append("questions: same model")
        elif models.answerer is not None:
            parts.append(f"questions: {short_name(models.answerer.name)}")
        self.model_label.setText(" · ".join(parts))
        self.notice.setText("\n".join(models.notices))
        self.notice.setVisible(bool(models.notices))
        if self.browser is not None:
            self.browser.set_ranker(models.matcher.name if models.matcher else None)
        self.watcher.set_models(models)
        self._refresh_overlay()
        if first and self.continuous and self.latest_frame is not None and not self.paused:
            self.worker.request_caption(self.latest_frame, self.controls.options())

    def _on_models_failed(self, message: str) -> None:
        self.progress.hide()
        self.load_message = f"No model: {message}"
        self.model_label.setText("models: failed")
        self.notice.setText(f"Could not load a caption model: {message}")
        self.notice.show()
        self._refresh_overlay()
        self.models_failed.emit(message)

    # --- questions ---------------------------------------------------------------------------

    def _on_return(self) -> None:
        """Enter asks when the question box has focus or text (so an empty Enter there gets its
        message); elsewhere it moves the focus to the box. (A window shortcut sees Enter before
        the line edit, so this is the one place that handles it.)"""
        box = self.questions.box
        if box.hasFocus() or box.text().strip():
            self.ask(box.text())
        else:
            box.setFocus()

    def ask(self, text: str) -> None:
        try:
            question = validate_question(text)
        except QuestionError as e:
            self.questions.show_error(str(e))
            return
        if self.models is None:
            self.questions.show_error(f"The models are still loading ({self.load_message}); ask again in a moment.")
            return
        if self.models.answerer is None:
            why = next((n for n in self.models.notices if n.startswith("Questions")), "no question model is loaded")
            self.questions.show_error(why)
            return
        frame = self.question_frame or self._freeze_question_frame()
        if frame is None:
            self.questions.show_error("No frame yet: wait for the camera.")
            return
        caption = self.captions[frame.index].text if frame.index in self.captions else ""
        entry = self.history.add_question(frame.index, question, caption)
        self.worker.ask(frame, question, tag=entry)
        self.questions.clear_question()
        self.questions.show_history(self.history, latest=entry)

    def _freeze_question_frame(self) -> Frame | None:
        """Freeze the frame the next questions are about (see ``focus_frame``)."""
        frame = self.focus_frame()
        self.question_frame = frame
        self.questions.set_frozen_frame(frame)
        return frame

    def release_question_frame(self) -> None:
        self.question_frame = None
        self.questions.set_frozen_frame(None)

    def _on_answer_partial(self, partial: PartialText) -> None:
        self.last_answer_line = answer_line(partial.question, partial.text, short_name(partial.model), None,
                                            partial.first_word_ms)
        self._refresh_overlay()
        self.partial_shown.emit(partial)

    def _on_answer_ready(self, outcome: AnswerOutcome) -> None:
        entry = outcome.tag
        if entry is not None:
            entry.model = short_name(outcome.model)
            if outcome.result is not None:
                entry.answer = outcome.result.text
                entry.total_ms = outcome.timings.total_ms
                entry.reused_features = outcome.reused_features
            else:
                entry.error = outcome.error
        if outcome.result is not None:
            self.last_answer_line = answer_line(outcome.question, outcome.result.text, short_name(outcome.model),
                                                outcome.timings.total_ms, outcome.first_word_ms)
            self._refresh_overlay()
            if self.speech is not None:
                self.speech.offer_answer(outcome.result.text)
        elif self.last_answer_line.endswith(STREAMING_MARK):  # it failed midway: the partial must not stay
            self.last_answer_line = answer_line(outcome.question, "no answer (see the questions)",
                                                short_name(outcome.model), outcome.timings.total_ms)
            self._refresh_overlay()
        self.questions.show_history(self.history, latest=entry)
        self.answer_shown.emit(outcome)

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot_folder(self) -> Path:
        return self._folder_override or self.settings.snapshot_dir()

    def focus_frame(self) -> Frame | None:
        """The frame a question or snapshot is about: the frozen question frame; else, paused,
        the frame on screen; else the frame of the caption on screen (what the user is reading);
        else the frame on screen."""
        if self.question_frame is not None:
            return self.question_frame
        if self.paused or self.last_caption is None:
            return self.preview.frame
        return self.last_caption.frame

    def snapshot_content(self) -> tuple[Frame, SnapshotRecord] | None:
        """What S saves: the focus frame, its caption if it has one, and its answered questions."""
        frame = self.focus_frame()
        if frame is None:
            return None
        return frame, self.snapshot_record(frame)

    def snapshot_record(self, frame: Frame) -> SnapshotRecord:
        """The sidecar of a snapshot of ``frame``: its caption if it has one, its answered questions."""
        c = self.captions.get(frame.index)
        answerer = self.models.answerer if self.models else None
        record = SnapshotRecord(
            caption=c.text if c else "",
            prompt=c.options.prompt if c else "",
            model=c.model if c else "",
            precision=c.precision if c else "",
            vqa_model=answerer.name if answerer is not None else "",
            qa=self.history.answered(frame.index),
            timings=c.timings.as_dict() if c else {},
            decoding={k: v for k, v in c.options.kwargs().items() if k != "prompt"} if c else {},
            frame={"index": frame.index, "source": frame.source, "width": frame.size[0], "height": frame.size[1],
                   **({"scene": frame.meta} if frame.meta.get("captions") else {})},
        )
        return record

    def _watch_snapshot(self, frame: Frame, watch: dict):
        """A watch fired on ``frame``: where and what to save, the record tagged with the watch."""
        return self.snapshot_folder(), frame.image, replace(self.snapshot_record(frame), watch=watch)

    def _on_watch_alert(self, line: str) -> None:
        self._watch_alert = (line, time.monotonic() + HIGHLIGHT_MS / 1000)
        self._refresh_overlay()
        QTimer.singleShot(HIGHLIGHT_MS + 50, self, self._refresh_overlay)

    def save_snapshot(self) -> None:
        content = self.snapshot_content()
        if content is None:
            self._snapshot_message("Nothing to save yet: no frame.", error=True)
            return
        frame, record = content
        self._snapshot_message("Saving snapshot…")
        self.saver.save(self.snapshot_folder(), frame.image, record)

    def _snapshot_message(self, text: str, *, error: bool = False) -> None:
        self.snapshot_label.setStyleSheet("color: #c0392b;" if error else "")
        self.snapshot_label.setText(text)
        self.statusBar().showMessage(text, 10_000)

    def _on_snapshot_saved(self, record: SnapshotRecord) -> None:
        self._snapshot_message(f"Saved {record.path}")
        if self.browser is not None and self.browser.isVisible():
            self.browser.reload()
        self.snapshot_saved.emit(record)

    def _on_snapshot_failed(self, message: str) -> None:
        self._snapshot_message(message, error=True)
        self.snapshot_failed.emit(message)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Snapshot folder", str(self.snapshot_folder()))
        if folder:
            self.set_snapshot_folder(Path(folder))

    def set_snapshot_folder(self, folder: Path) -> None:
        self._folder_override = None
        self.settings.set("snapshots/folder", str(folder))
        self._snapshot_message(f"Snapshots go to {folder}")
        if self.browser is not None:
            self.browser.folder = folder
            self.browser.reload()

    def open_browser(self) -> SnapshotBrowser:
        if self.browser is None:
            self.browser = SnapshotBrowser(self.snapshot_folder(), self.snapshot_reader, self)
            self.browser.rank_requested.connect(self.worker.rank)
            self.worker.rank_ready.connect(self._on_rank_ready)
            self.worker.rank_failed.connect(self.browser.show_rank_error)
            self.worker.rank_progress.connect(self.browser.show_rank_progress)
        matcher = self.models.matcher if self.models else None
        self.browser.set_ranker(matcher.name if matcher else None)
        self.browser.folder = self.snapshot_folder()
        self.browser.reload()
        self.browser.show()
        self.browser.raise_()
        return self.browser

    def _on_rank_ready(self, outcome: RankOutcome) -> None:
        if self.browser is not None and outcome.query == self.browser.search.text().strip():
            self.browser.show_ranked(outcome.ranked, outcome.left_out)

    # --- voice -------------------------------------------------------------------------------

    def _on_speak_toggled(self, on: bool) -> None:
        self.settings.set("speech/enabled", on)  # the user's choice; --speak alone is not saved
        self.set_speaking(on)

    def set_speaking(self, on: bool) -> None:
        """Start or stop speaking captions and answers. Without espeak-ng the toggle goes back off
        and says why; the app carries on silently."""
        self.voice.set_checked_quietly(on)
        if not on:
            if self.speech is not None:
                self.speech.shutdown(timeout=None)  # cuts the speech short; the thread ends by itself
                self.speech = None
            self.voice.show_status("")
            return
        if self.speech is not None:
            return
        speaker = speech.default_speaker()
        if speaker is None:
            self.voice.set_checked_quietly(False)
            self.voice.show_status(speech.INSTALL_HINT)
            self.statusBar().showMessage(speech.INSTALL_HINT, 10_000)
            return
        self.voice.show_status("")
        self.speech = speech.SpeechQueue(speaker, on_error=self.speech_failed.emit)

    def _on_speech_failed(self, message: str) -> None:
        self.voice.show_status(message)
        self.statusBar().showMessage(message, 10_000)

    # --- source status and shutdown ----------------------------------------------------------

    def _on_source_status(self, message: str, ok: bool) -> None:
        self.source_label.setText(message)
        self.source_label.setStyleSheet("" if ok else "color: #c0392b;")
        if not ok and self.preview.frame is None:
            self.preview.placeholder = message
            self.preview.update()

    def shutdown(self) -> None:
        """Join every thread: capture first (no new frames), then inference (drops waiting
        captions, finishes the running call), the browser's reader (stops after its current
        file), then snapshots (drained: requested saves finish)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.controls.save(self.settings)
        if self._saved_continuous is not None:
            self.settings.set("captioning/continuous", self._saved_continuous)
        self.settings.set("window/geometry", self.saveGeometry())
        self.settings.sync()
        if self.speech is not None:
            self.speech.shutdown()
        self.watcher.shutdown()
        self.capture.shutdown()
        self.worker.shutdown()
        self.snapshot_reader.shutdown()
        self.saver.shutdown(drain=True)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.statusBar().showMessage("Finishing the current inference…")
        self.shutdown()
        if self.browser is not None:
            self.browser.close()
        super().closeEvent(event)
