"""Question validation and the per-frame history of questions and answers (no Qt)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

MAX_QUESTION_CHARS = 200  # BLIP's VQA text encoder truncates at 35 tokens; this is ~30 words
MAX_FRAMES_KEPT = 20


class QuestionError(ValueError):
    """A question that cannot be asked; the message is shown under the question box."""


def validate_question(text: str) -> str:
    """Return the question with collapsed whitespace, or raise QuestionError saying what to fix."""
    question = " ".join(text.split())
    if not question:
        raise QuestionError("Type a question first, e.g. “what colour is the car?”")
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(
            f"That question is {len(question)} characters long; keep it under {MAX_QUESTION_CHARS} "
            "(the model reads only the first ~30 words)."
        )
    return question


@dataclass
class QAEntry:
    """One question and, once known, its answer (or the error that replaced it)."""

    question: str
    answer: str | None = None
    total_ms: float = 0.0
    reused_features: bool = False
    error: str = ""
    model: str = ""  # which model answered (BLIP-2 may answer while BLIP captions)

    @property
    def pending(self) -> bool:
        return self.answer is None and not self.error

    def as_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "total_ms": round(self.total_ms, 1),
                "reused_features": self.reused_features, **({"model": self.model} if self.model else {}),
                **({"error": self.error} if self.error else {})}


@dataclass
class FrameQA:
    """The questions asked about one frozen frame."""

    frame_index: int
    caption: str = ""
    entries: list[QAEntry] = field(default_factory=list)


class QAHistory:
    """Questions grouped by frame, newest frames last, bounded to MAX_FRAMES_KEPT frames."""

    def __init__(self, max_frames: int = MAX_FRAMES_KEPT):
        self.max_frames = max_frames
        self._frames: OrderedDict[int, FrameQA] = OrderedDict()

    def frame(self, index: int, caption: str = "") -> FrameQA:
        """The record for a frame, created (and older frames dropped) if new."""
        record = self._frames.get(index)
        if record is None:
            record = self._frames[index] = FrameQA(index, caption)
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)
        elif caption and not record.caption:
            record.caption = caption
        return record

    def add_question(self, index: int, question: str, caption: str = "") -> QAEntry:
        entry = QAEntry(question)
        self.frame(index, caption).entries.append(entry)
        return entry

    def get(self, index: int) -> FrameQA | None:
        return self._frames.get(index)

    def frames(self) -> list[FrameQA]:
        return list(self._frames.values())

    def answered(self, index: int) -> list[dict]:
        """Finished entries of a frame as dicts (for snapshot sidecars)."""
        record = self._frames.get(index)
        return [e.as_dict() for e in record.entries if not e.pending] if record else []
