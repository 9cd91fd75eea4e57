"""Browser of past snapshots: thumbnails, details, and text search.

The folder is read by the window's ``SnapshotReader`` thread (app.worker): the listing first,
then the thumbnails in batches, each arriving by signal. The GUI thread never opens a snapshot
file: a FIFO named like a snapshot, a slow SD card or hundreds of JPEG decodes cannot freeze the
window. Snapshots that cannot be read are left out, counted and named (hover the count).

Search ranks with the model's image-text matching (ITM, ties by ITC) when a loaded model can
match; the window runs that on the inference thread, passes its progress to
``show_rank_progress`` and hands the ranking back through ``show_ranked``. Without such a model,
it is a word search over captions and Q&A, done here: over the listing's records in memory (the
reader thread read the sidecars), so it never opens a file on the GUI thread.
Everything shown comes from files, so it is all plain text (``app.widgets.plain_text``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
)

from app.snapshots import SnapshotListing, SnapshotRecord, shorten, word_search
from app.widgets.plain_text import plain_label, plain_tooltip
from app.widgets.preview import rgb_qimage
from app.worker import SnapshotReader

THUMB = QSize(160, 120)
MAX_LISTED = 500  # newest snapshots listed: bounds the reading time and the memory of one listing
ITEM_CHARS = 60  # caption characters under a thumbnail
DETAIL_CHARS = 5_000  # characters of one field in the details pane (the sidecar has them all)
SKIPPED_NAMED = 20  # unreadable snapshots named in the count's tooltip


class SnapshotBrowser(QDialog):
    """``rank_requested(query, records)`` asks the owner for model ranking (see ``can_rank``)."""

    rank_requested = Signal(str, list)

    def __init__(self, folder: Path, reader: SnapshotReader, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Snapshots")
        self.resize(900, 600)
        self.folder = folder
        self.reader = reader
        self.records: list[SnapshotRecord] = []
        self.skipped: list[tuple[str, str]] = []  # (file name, why) of snapshots that could not be read
        self.can_rank = False
        self.ranker_name = ""
        self.ranking = False  # a model ranking was requested and its result (or failure) has not come
        self._read_id = self._shown_id = 0  # the reader's ids of the read wanted and of the one shown
        self._icons: dict[Path, QIcon] = {}
        self._items: dict[Path, QListWidgetItem] = {}

        self.search = QLineEdit()
        self.search.setObjectName("snapshot_search")
        self.search.setPlaceholderText("Search captions and answers (Enter)")
        self.search.setClearButtonEnabled(True)
        self.mode = plain_label()
        self.skipped_label = plain_label()
        self.skipped_label.setObjectName("snapshots_skipped")
        self.skipped_label.setStyleSheet("color: #c0392b;")
        self.skipped_label.hide()
        self.rank_bar = QProgressBar()
        self.rank_bar.setObjectName("rank_progress")
        self.rank_bar.setTextVisible(False)  # the mode line says "Ranking 120 of 3000 snapshots…"
        self.rank_bar.hide()
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
        self.details = plain_label("Select a snapshot")
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
        layout.addWidget(self.rank_bar)
        layout.addWidget(self.skipped_label)
        layout.addWidget(split, 1)

        # word search is instant, so it follows typing (debounced); model ranking waits for Enter
        self._debounce = QTimer(self, singleShot=True, interval=250)
        self._debounce.timeout.connect(self._word_search_if_typing)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.search.returnPressed.connect(self.run_search)
        refresh.clicked.connect(self.reload)
        self.grid.currentItemChanged.connect(self._show_details)
        reader.listed.connect(self._on_listed)
        reader.thumbnails_ready.connect(self._on_thumbnails)

    # --- data --------------------------------------------------------------------------------

    def set_ranker(self, name: str | None) -> None:
        self.can_rank, self.ranker_name = bool(name), name or ""
        self._update_mode()

    @property
    def loading(self) -> bool:
        """True from ``reload`` until its listing is shown (thumbnails may still be on their way)."""
        return self._shown_id != self._read_id

    def reload(self) -> None:
        """Read the folder again, on the reader thread (see ``loading``)."""
        self.mode.setText(f"Reading {self.folder}…")
        self._read_id = self.reader.read(self.folder, limit=MAX_LISTED, thumb_size=(THUMB.width(), THUMB.height()),
                                         known=self._icons.keys())

    def _on_listed(self, read_id: int, listing: SnapshotListing) -> None:
        if read_id != self._read_id:
            return  # an older read, or another browser's
        self.records, self.skipped = listing.records, listing.skipped
        listed = {r.path for r in self.records}
        self._icons = {path: icon for path, icon in self._icons.items() if path in listed}
        self._show([(r, None) for r in self.records])
        self._update_mode()
        self._update_skipped()
        self._shown_id = read_id

    def _on_thumbnails(self, read_id: int, batch: list[tuple[Path, np.ndarray]]) -> None:
        if read_id != self._read_id:
            return
        for path, thumbnail in batch:
            self._icons[path] = QIcon(QPixmap.fromImage(rgb_qimage(thumbnail)))  # fromImage copies the pixels
            item = self._items.get(path)
            if item is not None:
                item.setIcon(self._icons[path])

    def run_search(self) -> None:
        query = self.search.text().strip()
        self._set_ranking(bool(query) and self.can_rank)
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

    def show_rank_progress(self, done: int, total: int) -> None:
        """The running ranking's count (the worker's ``rank_progress``); ignored once it is over."""
        if not self.ranking:
            return
        self.mode.setText(f"Ranking {done} of {total} snapshots by image–text match with {self.ranker_name}…")
        self.rank_bar.setRange(0, max(total, 1))
        self.rank_bar.setValue(min(done, total))

    def _set_ranking(self, ranking: bool) -> None:
        self.ranking = ranking
        self.rank_bar.setRange(0, 0)  # busy until the first count arrives
        self.rank_bar.setVisible(ranking)

    def show_ranked(self, ranked: list[tuple[SnapshotRecord, float, float]], left_out: int = 0) -> None:
        self._set_ranking(False)
        self._show([(r, itm) for r, itm, _itc in ranked])
        unreadable = f" · {left_out} image(s) left out: unreadable" if left_out else ""
        self.mode.setText(f"Ranked by image–text match (ITM, then ITC) with {self.ranker_name}{unreadable}")

    def show_rank_error(self, message: str) -> None:
        self._set_ranking(False)
        self._show(word_search(self.records, self.search.text()))
        self.mode.setText(f"Model ranking failed ({message}); showing word search")

    def _update_mode(self) -> None:
        how = (f"Enter ranks by image–text match with {self.ranker_name}" if self.can_rank
               else "word search over captions and Q&A")
        self.mode.setText(f"{len(self.records)} snapshot(s) in {self.folder} · {how}")

    def _update_skipped(self) -> None:
        self.skipped_label.setText(f"{len(self.skipped)} snapshot(s) skipped: unreadable")
        named = [f"{name}: {why}" for name, why in self.skipped[:SKIPPED_NAMED]]
        if len(self.skipped) > SKIPPED_NAMED:
            named.append(f"… and {len(self.skipped) - SKIPPED_NAMED} more")
        self.skipped_label.setToolTip(plain_tooltip("\n".join(named)))
        self.skipped_label.setVisible(bool(self.skipped))

    # --- view --------------------------------------------------------------------------------

    def shown_records(self) -> list[SnapshotRecord]:
        return [self.grid.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.grid.count())]

    def _show(self, scored: list[tuple[SnapshotRecord, float | None]]) -> None:
        self.grid.clear()
        self._items = {}
        for record, score in scored:
            label = shorten(record.caption, ITEM_CHARS)
            if score is not None:
                label = f"{score:.2f} · {label}"
            item = QListWidgetItem(self._icons.get(record.path, QIcon()), label)
            item.setData(Qt.ItemDataRole.UserRole, record)
            item.setToolTip(plain_tooltip(record.caption))
            self.grid.addItem(item)
            self._items[record.path] = item

    def _show_details(self, item: QListWidgetItem | None, _previous=None) -> None:
        if item is None:
            self.details.setText("Select a snapshot")
            return
        r: SnapshotRecord = item.data(Qt.ItemDataRole.UserRole)
        lines = [r.caption, r.time, r.image]
        if r.model:
            lines.append(f"model: {r.model} ({r.precision}); prompt: “{r.prompt.strip()}”")
        if r.timings:
            lines.append(f"total {r.timings.get('total_ms', 0):.0f} ms")
        for qa in r.qa:
            lines.append(f"Q: {qa.get('question', '')}\nA: {qa.get('answer') or qa.get('error', '')}")
        self.details.setText("\n".join(shorten(line, DETAIL_CHARS) for line in lines))
