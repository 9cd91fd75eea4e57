"""The drawer's voice box: the toggle that speaks captions and answers aloud, and a line saying
why it cannot (espeak-ng missing, speech failing)."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QGroupBox, QVBoxLayout

from app.widgets.plain_text import plain_label


class SpeechControls(QGroupBox):
    """``speak`` is the toggle (off by default); ``show_status`` explains a problem."""

    def __init__(self, parent=None):
        super().__init__("Voice", parent)
        layout = QVBoxLayout(self)
        self.speak = QCheckBox("Speak captions (when they change) and answers")
        self.speak.setObjectName("speak")
        self.status = plain_label()
        self.status.setObjectName("speech_status")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #c0392b;")
        self.status.hide()
        layout.addWidget(self.speak)
        layout.addWidget(self.status)

    def set_checked_quietly(self, on: bool) -> None:
        """Set the toggle without emitting ``toggled`` (a choice made for the user, not by them)."""
        self.speak.blockSignals(True)
        self.speak.setChecked(on)
        self.speak.blockSignals(False)

    def show_status(self, message: str) -> None:
        self.status.setText(message)
        self.status.setVisible(bool(message))
