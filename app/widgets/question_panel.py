"""Questions: the box (Enter asks), the frozen frame they are about, the latest answer with its
time, and the per-frame history (a tree: frame -> question -> answer)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from app.questions import MAX_QUESTION_CHARS, QAEntry, QAHistory
from app.sources.base import Frame
from app.widgets.plain_text import plain_label
from app.widgets.preview import frame_to_qimage
from app.widgets.touch import touch_sized

THUMB = 96


def format_answer(entry: QAEntry) -> str:
    if entry.error:
        return f"⚠ {entry.error}"
    if entry.pending:
        return "…thinking"
    reuse = ", features reused" if entry.reused_features else ""
    model = f"{entry.model}, " if entry.model else ""
    return f"{entry.answer}  ({model}{entry.total_ms:.0f} ms{reuse})"


class QuestionPanel(QGroupBox):
    """``ask_requested(text)`` on Enter/Ask (the window validates); ``new_frame_requested`` to
    stop asking about the frozen frame."""

    ask_requested = Signal(str)
    new_frame_requested = Signal()

    def __init__(self, parent=None):
        super().__init__("Questions", parent)
        layout = QVBoxLayout(self)

        row = QHBoxLayout()
        self.box = QLineEdit()
        self.box.setObjectName("question_box")
        self.box.setPlaceholderText("Ask about the frame, e.g. what colour is the car?  (Enter)")
        # a little slack over the limit so an overlong paste gets a message instead of a silent cut
        self.box.setMaxLength(MAX_QUESTION_CHARS * 5)
        self.ask_button = QPushButton("Ask")
        touch_sized(self.box, self.ask_button)
        row.addWidget(self.box, 1)
        row.addWidget(self.ask_button)
        layout.addLayout(row)

        frame_row = QHBoxLayout()
        self.thumb = plain_label("live")
        self.thumb.setFixedSize(THUMB, THUMB * 3 // 4)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setStyleSheet("background: #222; color: #aaa;")
        self.frame_label = plain_label("Questions are about the frame shown when you ask.")
        self.frame_label.setWordWrap(True)
        self.new_frame_button = QPushButton("New frame")
        self.new_frame_button.setToolTip("Ask the next question about the current frame instead")
        self.new_frame_button.setEnabled(False)
        touch_sized(self.new_frame_button)
        frame_row.addWidget(self.thumb)
        frame_row.addWidget(self.frame_label, 1)
        frame_row.addWidget(self.new_frame_button)
        layout.addLayout(frame_row)

        self.message = plain_label()
        self.message.setObjectName("question_message")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #c0392b;")
        self.message.hide()
        self.answer = plain_label()
        self.answer.setObjectName("answer")
        self.answer.setWordWrap(True)
        self.answer.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.message)
        layout.addWidget(self.answer)

        self.history = QTreeWidget()
        self.history.setHeaderLabels(["Question", "Answer"])
        self.history.setRootIsDecorated(True)
        self.history.setColumnWidth(0, 180)
        layout.addWidget(self.history, 1)

        # Enter in the box is handled by the window's Enter shortcut, which sees it first
        self.ask_button.clicked.connect(self._ask)
        self.new_frame_button.clicked.connect(self.new_frame_requested)

    def _ask(self) -> None:
        self.ask_requested.emit(self.box.text())

    def show_error(self, message: str) -> None:
        self.message.setText(message)
        self.message.setVisible(bool(message))

    def clear_question(self) -> None:
        self.box.clear()
        self.show_error("")

    def set_frozen_frame(self, frame: Frame | None) -> None:
        if frame is None:
            self.thumb.clear()
            self.thumb.setText("live")
            self.frame_label.setText("Questions are about the frame shown when you ask.")
            self.new_frame_button.setEnabled(False)
            return
        pixmap = QPixmap.fromImage(frame_to_qimage(frame)).scaled(
            self.thumb.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self.thumb.setPixmap(pixmap)
        self.frame_label.setText(f"Frame #{frame.index} is frozen: follow-up questions reuse its encoded image.")
        self.new_frame_button.setEnabled(True)

    def show_history(self, history: QAHistory, latest: QAEntry | None = None) -> None:
        """Rebuild the tree (newest frame first, expanded) and the latest-answer line."""
        self.history.clear()
        for i, record in enumerate(reversed(history.frames())):
            title = f"Frame #{record.frame_index}" + (f" — {record.caption}" if record.caption else "")
            top = QTreeWidgetItem([title, f"{len(record.entries)} question(s)"])
            for entry in record.entries:
                top.addChild(QTreeWidgetItem([entry.question, format_answer(entry)]))
            self.history.addTopLevelItem(top)
            top.setExpanded(i == 0)
        if latest is not None:
            self.answer.setText(f"Q: {latest.question}\nA: {format_answer(latest)}")
