"""Text from outside (files, models, the camera, the user) is shown as plain text, never as rich
text. A QLabel's default format guesses (``Qt::mightBeRichText``), so a caption such as
``<img src="/big.png" width=6000>`` would load and scale a local image; tooltips always guess.
Every QLabel the app creates comes from ``plain_label``, and every tooltip that carries outside
text goes through ``plain_tooltip``. (Item views, buttons, the status bar, the window title and
QPainter.drawText already draw plain text.)
"""

from __future__ import annotations

from PySide6 import QtGui
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

from app.snapshots import shorten

MAX_TOOLTIP_CHARS = 2_000  # a tooltip is a glance, and a 100k-character one takes the screen


def plain_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    """A QLabel that shows its text literally, whatever the text looks like."""
    label = QLabel(parent)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    return label


def plain_tooltip(text: str) -> str:
    """A tooltip showing ``text`` literally (cut to MAX_TOOLTIP_CHARS): escaped and wrapped in a
    paragraph, so Qt takes it as rich text whose only content is the text itself."""
    return QtGui.Qt.convertFromPlainText(shorten(text, MAX_TOOLTIP_CHARS), Qt.WhiteSpaceMode.WhiteSpaceNormal)
