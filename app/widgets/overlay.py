"""What the overlay on the preview says (pure ``overlay_lines``) and how it is drawn.

The overlay is painted by the preview widget itself, over the frame, rather than as a stacked
child widget: stacking widgets over a native/GL video surface is fragile (picamera2 #437), and
one paint pass keeps caption and frame in sync.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainter, QTextOption

WAITING = "waiting for the first caption…"
STREAMING_MARK = " …"  # after a caption or answer still being decoded
OVERLAY_POSITIONS = ("bottom", "top")  # where the overlay sits on the picture; the first is the default


@dataclass(frozen=True)
class OverlayState:
    """Everything the overlay shows. ``None`` timings mean "no caption yet"."""

    caption: str = ""
    vision_ms: float | None = None
    decode_ms: float | None = None
    total_ms: float | None = None
    tokens_per_s: float | None = None
    camera_fps: float = 0.0
    model: str = ""
    precision: str = ""
    status: str = ""  # e.g. "paused", "loading caption model 40%"
    answer: str = ""  # the latest answer: which model gave it and how long it took
    first_word_ms: float | None = None  # time to the caption's first word (None: not streamed)
    streaming: bool = False  # ``caption`` is still being decoded (timings then hold only first_word_ms)


def answer_line(question: str, answer: str, model: str, total_ms: float | None,
                first_word_ms: float | None = None) -> str:
    """The overlay's answer line: the question, the answer, the model that answered and its time
    (a BLIP-2 answer takes seconds while BLIP captions every fraction of one: say which is which).
    ``total_ms`` None: the answer is still being decoded, so it gets the streaming mark."""
    times = [f"first word {first_word_ms / 1000:.1f} s"] if first_word_ms is not None else []
    if total_ms is None:
        answer += STREAMING_MARK
    else:
        times.append(f"{total_ms / 1000:.1f} s")
    return f"Q: {question} → {answer} · {', '.join([model, *times])}"


def timings_line(state: OverlayState) -> str | None:
    """The caption's timings: per stage and in total, with the time to its first word when it was
    streamed; only that while it is still being decoded; None before the first caption."""
    first = f"first word {state.first_word_ms:.0f} ms" if state.first_word_ms is not None else ""
    if state.streaming:
        return " · ".join(filter(None, [first, "writing…"]))
    if state.total_ms is None:
        return None
    return " · ".join(filter(None, [f"vision {state.vision_ms or 0:.0f} ms", f"decode {state.decode_ms or 0:.0f} ms",
                                    first, f"total {state.total_ms:.0f} ms", f"{state.tokens_per_s or 0:.1f} tok/s"]))


def overlay_lines(state: OverlayState) -> list[str]:
    """The overlay's text, top to bottom: caption, timings, camera + model, status."""
    caption = state.caption + STREAMING_MARK if state.caption and state.streaming else state.caption
    lines = [caption or WAITING]
    if state.answer:
        lines.append(state.answer)
    timings = timings_line(state)
    if timings is not None:
        lines.append(timings)
    model = f"{state.model} ({state.precision})" if state.model else "no model yet"
    lines.append(f"camera {state.camera_fps:.1f} fps · {model}")
    if state.status:
        lines.append(state.status)
    return lines


def overlay_box(area: QRectF, box_height: float, position: str, pad: float = 8.0) -> QRectF:
    """The overlay's rectangle: full width of ``area`` less ``pad``, at its top or its bottom."""
    width = max(area.width() - 2 * pad, 50.0)
    top = area.top() + pad if position == "top" else area.bottom() - box_height - pad
    return QRectF(area.left() + pad, top, width, box_height)


def paint_overlay(painter: QPainter, area: QRectF, lines: list[str], position: str = "bottom") -> QRectF:
    """Draw ``lines`` in a translucent box along the bottom (or top) of ``area``, caption first and
    larger; return the box drawn (an empty rectangle when there is nothing to draw)."""
    if not lines:
        return QRectF()
    pad = 8.0
    width = max(area.width() - 2 * pad, 50.0)
    caption_font = QFont(painter.font())
    caption_font.setPointSizeF(max(11.0, area.height() / 32))
    caption_font.setBold(True)
    small_font = QFont(painter.font())
    small_font.setPointSizeF(max(8.0, area.height() / 48))
    option = QTextOption()
    option.setWrapMode(QTextOption.WrapMode.WordWrap)

    blocks = []
    for i, line in enumerate(lines):
        font = caption_font if i == 0 else small_font
        rect = QFontMetricsF(font).boundingRect(QRectF(0, 0, width - 2 * pad, 10_000), Qt.TextFlag.TextWordWrap, line)
        blocks.append((font, line, rect.height()))
    box_h = sum(h for _, _, h in blocks) + 2 * pad + 2 * (len(blocks) - 1)
    box = overlay_box(area, box_h, position, pad)

    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(0, 0, 0, 150))  # ~60 % black: readable over any frame, frame still visible
    painter.drawRoundedRect(box, 6, 6)
    y = box.top() + pad
    for i, (font, line, h) in enumerate(blocks):
        painter.setFont(font)
        painter.setPen(QColor(255, 255, 255) if i == 0 else QColor(220, 220, 220))
        painter.drawText(QRectF(box.left() + pad, y, box.width() - 2 * pad, h), line, option)
        y += h + 2
    painter.restore()
    return box
