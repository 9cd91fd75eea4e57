"""The drawer's watch box: type what to watch for, the list of watches with their latest scores
(the one that fired highlighted), an optional notify URL and MQTT broker, and a line for problems."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QLineEdit, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout

from app.watches import MAX_WATCH_CHARS
from app.widgets.plain_text import plain_label
from app.widgets.touch import touch_sized

HIGHLIGHT_MS = 5000  # how long a fired watch stays highlighted


class WatchPanel(QGroupBox):
    """``add_requested(text)`` / ``remove_requested(text)`` on the buttons (the controller validates),
    ``url_entered(text)`` when the notify URL is edited and confirmed."""

    add_requested = Signal(str)
    remove_requested = Signal(str)
    url_entered = Signal(str)
    mqtt_entered = Signal(str)

    def __init__(self, parent=None):
        super().__init__("Watches", parent)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.entry = QLineEdit()
        self.entry.setObjectName("watch_entry")
        self.entry.setPlaceholderText("watch for… e.g. a person at the door")
        self.entry.setMaxLength(MAX_WATCH_CHARS)
        self.add_button = QPushButton("Watch")
        self.remove_button = QPushButton("Remove")
        touch_sized(self.add_button, self.remove_button)
        row.addWidget(self.entry, 1)
        row.addWidget(self.add_button)
        self.list = QListWidget()
        self.list.setObjectName("watch_list")
        self.list.setMaximumHeight(120)
        self.url = QLineEdit()
        self.url.setObjectName("watch_url")
        self.url.setPlaceholderText("notify URL (optional): http://host:port/path")
        self.mqtt = QLineEdit()
        self.mqtt.setObjectName("watch_mqtt")
        self.mqtt.setPlaceholderText("MQTT broker (optional, Home Assistant): host[:port]")
        self.status = plain_label()
        self.status.setObjectName("watch_status")
        self.status.setWordWrap(True)
        self.status.hide()
        layout.addLayout(row)
        layout.addWidget(self.list)
        layout.addWidget(self.remove_button)
        layout.addWidget(self.url)
        layout.addWidget(self.mqtt)
        layout.addWidget(self.status)

        self.add_button.clicked.connect(lambda: self.add_requested.emit(self.entry.text()))
        self.entry.returnPressed.connect(lambda: self.add_requested.emit(self.entry.text()))
        self.remove_button.clicked.connect(self._remove_selected)
        self.url.editingFinished.connect(lambda: self.url_entered.emit(self.url.text()))
        self.mqtt.editingFinished.connect(lambda: self.mqtt_entered.emit(self.mqtt.text()))

    def _item(self, text: str) -> QListWidgetItem | None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == text:
                return item
        return None

    def _remove_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.remove_requested.emit(item.data(Qt.ItemDataRole.UserRole))

    def set_watches(self, texts: list[str]) -> None:
        self.list.clear()
        for text in texts:
            item = QListWidgetItem(text)  # item text is plain: never interpreted as markup
            item.setData(Qt.ItemDataRole.UserRole, text)
            self.list.addItem(item)

    def show_scores(self, text: str, itm: float, itc: float) -> None:
        item = self._item(text)
        if item is not None:
            item.setText(f"{text} · ITM {itm:.2f} · ITC {itc:.2f}")

    def highlight(self, text: str) -> None:
        item = self._item(text)
        if item is None:
            return
        item.setBackground(QBrush(QColor("#f5b7b1")))
        QTimer.singleShot(HIGHLIGHT_MS, self, lambda: self._unhighlight(text))

    def _unhighlight(self, text: str) -> None:
        item = self._item(text)
        if item is not None:
            item.setBackground(QBrush())

    def is_highlighted(self, text: str) -> bool:
        item = self._item(text)
        return item is not None and item.background().style() != Qt.BrushStyle.NoBrush

    def show_status(self, message: str, *, error: bool = False) -> None:
        self.status.setStyleSheet("color: #c0392b;" if error else "")
        self.status.setText(message)
        self.status.setVisible(bool(message))
