"""Browser of past snapshots: thumbnails, details, and text search.

Search ranks with the model's image-text matching (ITM, ties by ITC) when a loaded model can
match; the window runs that on the inference thread and hands the ranking back through
``show_ranked``. Without such a model, it is a word search over captions and Q&A, done here.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QIcon, QImageReader, QPixmap
from PySide6.QtWidgets import (
    QDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton, QSplitter, QVBoxLayout,
)

from app.snapshots import SnapshotRecord, list_snapshots, word_search

THUMB = QSize(160, 120)
MAX_LISTED = 500  # thumbnails are decoded on the GUI thread; keep the worst case bounded


def load_thumbnail(path: Path, size: QSize = THUMB) -> QPixmap:
    """A small pixmap, decoded at reduced size (JPEG DCT scaling), so large photos stay cheap."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    original = reader.size()
    if original.isValid():
        reader.setScaledSize(original.scaled(size, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    return QPixmap.fromImage(image) if not image.isNull() else QPixmap()


class SnapshotBrowser(QDialog):
    """``rank_requested(query, records)`` asks the owner for model ranking (see ``can_rank``)."""

    rank_requested = Signal(str, list)

    def __init__(self, folder: Path, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Snapshots")
        self.resize(900, 600)
        self.folder = folder
        self.records: list[SnapshotRecord] = []
        self.can_rank = False
        self.ranker_name = ""

        self.search = QLineEdit()
        self.search.setObjectName("snapshot_search")
        self.search.setPlaceholderText("Search captions and answers (Enter)")
        self.search.setClearButtonEnabled(True)
        self.mode = QLabel()
        refresh = QPushButton("Refresh")
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(refresh)

        self.grid = QListWidget()
        self.grid.setViewMode(QListWidget.ViewMode.IconMode)
        self.grid.setIconSize(THUMB)
        self.grid.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.grid.setWordWrap(True)
        self.grid.setGridSize(QSize(THUMB.width() + 24, THUMB.height() + 56))
        self.details = QLabel("Select a snapshot")
        self.details.setWordWrap(True)
        self.details.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setMinimumWidth(240)
        split = QSplitter()
        split.addWidget(self.grid)
        split.addWidget(self.details)
        split.setStretchFactor(0, 3)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.mode)
        layout.addWidget(split, 1)

        # word search is instant, so it follows typing (debounced); model ranking waits for Enter
        self._debounce = QTimer(self, singleShot=True, interval=250)
        self._debounce.timeout.connect(self._word_search_if_typing)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.search.returnPressed.connect(self.run_search)
        refresh.clicked.connect(self.reload)
        self.grid.currentItemChanged.connect(self._show_details)

    # --- data --------------------------------------------------------------------------------

    def set_ranker(self, name: str | None) -> None:
        self.can_rank, self.ranker_name = bool(name), name or ""
        self._update_mode()

    def reload(self) -> None:
        self.records = list_snapshots(self.folder, limit=MAX_LISTED)
        self._show([(r, None) for r in self.records])
        self._update_mode()

    def run_search(self) -> None:
        query = self.search.text().strip()
        if not query:
            self._show([(r, None) for r in self.records])
        elif self.can_rank:
            self.mode.setText(f"Ranking by image–text match with {self.ranker_name}…")
            self.rank_requested.emit(query, list(self.records))
        else:
            self._show(word_search(self.records, query))
            self._update_mode()

    def _word_search_if_typing(self) -> None:
        if not self.can_rank or not self.search.text().strip():
            self.run_search()

    def show_ranked(self, ranked: list[tuple[SnapshotRecord, float, float]]) -> None:
        self._show([(r, itm) for r, itm, _itc in ranked])
        self.mode.setText(f"Ranked by image–text match (ITM, then ITC) with {self.ranker_name}")

    def show_rank_error(self, message: str) -> None:
        self._show(word_search(self.records, self.search.text()))
        self.mode.setText(f"Model ranking failed ({message}); showing word search")

    def _update_mode(self) -> None:
        how = f"Enter ranks by image–text match with {self.ranker_name}" if self.can_rank else "word search over captions and Q&A"
        self.mode.setText(f"{len(self.records)} snapshot(s) in {self.folder} · {how}")

    # --- view --------------------------------------------------------------------------------

    def shown_records(self) -> list[SnapshotRecord]:
        return [self.grid.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.grid.count())]

    def _show(self, scored: list[tuple[SnapshotRecord, float | None]]) -> None:
        self.grid.clear()
        for record, score in scored:
            label = record.caption if len(record.caption) <= 60 else record.caption[:57] + "…"
            if score is not None:
                label = f"{score:.2f} · {label}"
            item = QListWidgetItem(QIcon(load_thumbnail(record.path)) if record.path else QIcon(), label)
            item.setData(Qt.ItemDataRole.UserRole, record)
            item.setToolTip(record.caption)
            self.grid.addItem(item)

    def _show_details(self, item: QListWidgetItem | None, _previous=None) -> None:
        if item is None:
            self.details.setText("Select a snapshot")
            return
        r: SnapshotRecord = item.data(Qt.ItemDataRole.UserRole)
        lines = [f"<b>{_esc(r.caption)}</b>", f"{_esc(r.time)}", f"{_esc(r.image)}"]
        if r.model:
            lines.append(f"model: {_esc(r.model)} ({_esc(r.precision)}); prompt: “{_esc(r.prompt.strip())}”")
        if r.timings:
            lines.append(f"total {r.timings.get('total_ms', 0):.0f} ms")
        for qa in r.qa:
            lines.append(f"Q: {_esc(qa.get('question', ''))}<br>A: {_esc(str(qa.get('answer') or qa.get('error', '')))}")
        self.details.setText("<br>".join(lines))


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
