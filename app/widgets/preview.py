"""The live preview: the newest frame, letterboxed, with the caption overlay painted on top."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.sources.base import Frame
from app.widgets.overlay import OVERLAY_POSITIONS, OverlayState, overlay_lines, paint_overlay


def rgb_qimage(image: np.ndarray) -> QImage:
    """Wrap an ``H x W x 3`` uint8 RGB array (rows contiguous) without copying: the caller keeps
    the array alive as long as the image (``QPixmap.fromImage`` copies, so it may drop it after)."""
    h, w = image.shape[:2]
    return QImage(image.data, w, h, image.strides[0], QImage.Format.Format_RGB888)


def frame_to_qimage(frame: Frame) -> QImage:
    """The frame as a QImage, not copied (the array is read-only and outlives the image because
    the widget keeps the frame)."""
    return rgb_qimage(frame.image)


class PreviewWidget(QWidget):
    """Paints the current frame scaled to fit (aspect kept) and the overlay lines over it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)  # we paint every pixel: skip the erase
        self._frame: Frame | None = None
        self._qimage: QImage | None = None
        self.overlay = OverlayState()
        self.overlay_position = OVERLAY_POSITIONS[0]
        self.overlay_rect = QRectF()  # where the overlay was last painted (widget coordinates)
        self.placeholder = "starting camera…"
        self.frames_shown = 0

    @property
    def frame(self) -> Frame | None:
        return self._frame

    def set_frame(self, frame: Frame) -> None:
        self._frame, self._qimage = frame, frame_to_qimage(frame)
        self.frames_shown += 1
        self.update()

    def set_overlay(self, state: OverlayState) -> None:
        self.overlay = state
        self.update()

    def set_overlay_position(self, position: str) -> None:
        """Move the overlay to the top or bottom of the picture (so it need not hide either)."""
        self.overlay_position = position if position in OVERLAY_POSITIONS else OVERLAY_POSITIONS[0]
        self.update()

    def overlay_text(self) -> list[str]:
        return overlay_lines(self.overlay)

    def sizeHint(self) -> QSize:
        return QSize(640, 480)

    def minimumSizeHint(self) -> QSize:
        return QSize(240, 180)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(24, 24, 24))
        area = QRectF(self.rect())
        if self._qimage is not None:
            size = self._qimage.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
            area = QRectF((self.width() - size.width()) / 2, (self.height() - size.height()) / 2,
                          size.width(), size.height())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(area, self._qimage)
        else:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
        self.overlay_rect = paint_overlay(painter, area, self.overlay_text(), self.overlay_position)
        painter.end()
