"""Result types returned by the public API (``blip_core.load(...).caption/answer/match``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timings:
    """Wall-clock milliseconds of each stage of one call.

    ``preprocess_ms`` and ``vision_ms`` are 0 when the call reused already-encoded features;
    ``text_ms`` is the question (VQA) or text (matching) encoder.
    """

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    text_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CaptionResult:
    """One caption. ``token_ids`` are the generated ids after the prompt (``[SEP]`` included when
    the model ended the sentence); ``texts`` holds every returned sequence, best first."""

    text: str
    token_ids: tuple[int, ...]
    timings: Timings
    prompt: str = ""
    texts: tuple[str, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / (self.timings.decode_ms / 1000) if self.timings.decode_ms > 0 else 0.0


@dataclass(frozen=True)
class AnswerResult:
    """One answer to a question. ``ranked`` is ``((answer, log_likelihood), ...)`` best first when
    the answer was chosen from a given list, else empty."""

    text: str
    question: str
    token_ids: tuple[int, ...]
    timings: Timings
    ranked: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class MatchResult:
    """How well one text matches the image: ``itm`` is the match probability of the image-text
    matching head (uses ``[ENC]``), ``itc`` the cosine of the 256-d contrastive features."""

    text: str
    itm: float
    itc: float


@dataclass(eq=False)
class ImageFeatures:
    """An encoded image, reusable across captions, questions and matches on the same model.

    ``embeds``: float32 [1, 1 + N, D] (CLS first): a torch tensor from an fp32 model, a numpy
    array from an int8 one. ``cache`` holds per-image work derived
    from it (cross-attention keys/values of each decoder), filled lazily and owned by the model.
    """

    embeds: Any
    model_key: int
    timings: Timings = field(default_factory=Timings)
    cache: dict = field(default_factory=dict, repr=False)
