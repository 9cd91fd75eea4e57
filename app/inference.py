"""The inference engine the worker thread drives: models, encoded-image cache, caption / answer /
rank calls, and the timings shown in the overlay. Pure Python (no Qt), one thread at a time.

Captions and answers stream when the model can (``streams_text``): the text so far goes to an
``on_text(text, first_word_ms)`` callback after each decoded token, and the outcome records the
time to the first word. A callback that raises abandons the call (a newer caption replaced it).

Every call encodes the image explicitly (``m.encode_image``) and passes the features on, so one
frame is encoded once per model however many captions, questions and follow-ups use it.
blip_core is imported in the functions that need it (see ``app.model_choice`` for why).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Hashable

from app.model_choice import LoadedModels, Loader, ModelRequest, Progress, load_answerer, load_captioner
from app.prompts import CaptionOptions
from app.sources.base import Frame

if TYPE_CHECKING:
    from blip_core.results import AnswerResult, CaptionResult, Timings

MAX_RANKED_SNAPSHOTS = 50  # ITM ranking encodes every snapshot once (~0.3 s each on a Pi 5)

OnText = Callable[[str, "float | None"], None]  # (text so far, ms from the call's start to its first word)


def caption_text(prompt: str, continuation: str) -> str:
    """The caption as shown: the prompt and its continuation as one sentence. blip_core returns
    only the continuation (like Salesforce's BLIP); with a custom prompt such as "a close-up of"
    the continuation alone would not say what it describes."""
    return " ".join(f"{prompt} {continuation}".split())


class TextStream:
    """Hands a streamed decode's text so far to ``sink`` and times its first word (from creation,
    so the image encoding counts: it is what the user waits through first)."""

    def __init__(self, model: Any, sink: OnText | None, shape: Callable[[str], str] = str):
        self.t0 = time.perf_counter()
        self.sink, self.shape = sink, shape
        self.first_word_ms: float | None = None
        # a model without streaming (a test double, a future family) still captions, in one piece
        self.enabled = sink is not None and bool(getattr(model, "streams_text", False))

    def kwargs(self) -> dict:
        return {"on_text": self._on_text} if self.enabled else {}

    def _on_text(self, text: str) -> None:
        if self.first_word_ms is None and text.strip():
            self.first_word_ms = (time.perf_counter() - self.t0) * 1000
        self.sink(self.shape(text), self.first_word_ms)


class FeatureCache:
    """Encoded images keyed by (model, key), least recently used evicted first.

    ``pin(key)`` protects one key (the frame questions are being asked about) from eviction, so
    continuous captioning of new frames cannot push out the frozen frame's features.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[tuple[int, Hashable], Any] = OrderedDict()
        self._pinned: Hashable | None = None

    def get(self, model: Any, key: Hashable) -> Any | None:
        item = self._items.get((id(model), key))
        if item is not None:
            self._items.move_to_end((id(model), key))
        return item

    def put(self, model: Any, key: Hashable, features: Any) -> None:
        self._items[(id(model), key)] = features
        self._items.move_to_end((id(model), key))
        for k in list(self._items):
            if len(self._items) <= self.size:
                break
            if k[1] != self._pinned:
                del self._items[k]

    def pin(self, key: Hashable | None) -> None:
        self._pinned = key

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True)
class CaptionOutcome:
    """A caption of one frame plus what the overlay and snapshot need to describe it.

    ``timings`` covers the whole job: the image encoding (0 when the features were reused) and
    the decoding, whereas ``result.timings`` is only the ``caption`` call.
    """

    frame: Frame
    result: CaptionResult
    options: CaptionOptions
    model: str
    precision: str
    timings: Timings
    reused_features: bool
    first_word_ms: float | None = None  # None: the model did not stream

    @property
    def text(self) -> str:
        """The caption as shown (``caption_text``)."""
        return caption_text(self.options.prompt, self.result.text)

    @property
    def tokens_per_s(self) -> float:
        return self.result.tokens_per_s


@dataclass(frozen=True)
class AnswerOutcome:
    """An answer (or the error message that replaced it) to one question about one frame."""

    frame_index: int
    question: str
    result: AnswerResult | None
    timings: Timings
    reused_features: bool
    model: str = ""
    error: str = ""
    tag: Any = None  # the caller's handle for the question (e.g. its history entry)
    first_word_ms: float | None = None  # None: the model did not stream


@dataclass(frozen=True)
class PartialText:
    """A caption or answer as decoded so far (``first_word_ms`` None until a word came)."""

    frame_index: int
    text: str
    first_word_ms: float | None
    model: str = ""
    question: str = ""  # answers only
    tag: Any = None  # answers only: the question's handle


def merge_timings(encode: Timings | None, call: Timings) -> Timings:
    """Timings of encode + call, where ``call`` ran on already-encoded features."""
    from blip_core.results import Timings

    if encode is None:
        return call
    return Timings(
        preprocess_ms=encode.preprocess_ms + call.preprocess_ms,
        vision_ms=encode.vision_ms + call.vision_ms,
        text_ms=call.text_ms,
        decode_ms=call.decode_ms,
        total_ms=encode.total_ms + call.total_ms,
    )


class InferenceEngine:
    """Holds the loaded models and runs them. Not thread-safe: only the worker thread calls it."""

    def __init__(self, loader: Loader):
        self.loader = loader
        self.models = LoadedModels()
        # Encoded frames carry the decoders' cross-attention keys/values (tens of MB each at
        # base size), so keep few: the newest frame and the pinned question frame.
        self.frames = FeatureCache(size=2)
        self.snapshots = FeatureCache(size=MAX_RANKED_SNAPSHOTS)

    # --- models ------------------------------------------------------------------------------

    def load_captioner(self, req: ModelRequest, progress: Progress | None = None) -> LoadedModels:
        self.models = load_captioner(req, self.loader, progress)
        self.frames.clear()
        self.snapshots.clear()
        return self.models

    def load_answerer(self, req: ModelRequest, progress: Progress | None = None) -> LoadedModels:
        return load_answerer(req, self.models, self.loader, progress)

    # --- calls -------------------------------------------------------------------------------

    def _features(self, cache: FeatureCache, model: Any, key: Hashable, image: Any) -> tuple[Any, Timings | None]:
        """Features for ``image`` on ``model`` and the encode timings (None when reused)."""
        from blip_core.results import Timings

        features = cache.get(model, key)
        if features is not None:
            return features, None
        t0 = time.perf_counter()
        features = model.encode_image(image)
        cache.put(model, key, features)
        encode = getattr(features, "timings", None) or Timings()
        if encode.total_ms <= 0:  # the library leaves total to the caller; measure it ourselves
            encode = Timings(encode.preprocess_ms, encode.vision_ms, total_ms=(time.perf_counter() - t0) * 1000)
        return features, encode

    def caption(self, frame: Frame, options: CaptionOptions, on_text: OnText | None = None) -> CaptionOutcome:
        """Caption ``frame``; ``on_text`` gets the caption so far (prompt included) as it is decoded."""
        from blip_core.errors import WrongTaskError

        model = self.models.captioner
        if model is None:
            raise WrongTaskError("no caption model is loaded yet")
        stream = TextStream(model, on_text, lambda text: caption_text(options.prompt, text))
        features, encode = self._features(self.frames, model, frame.index, frame.image)
        result = model.caption(features, **options.kwargs(), **stream.kwargs())
        return CaptionOutcome(frame, result, options, model.name, model.precision,
                              merge_timings(encode, result.timings), reused_features=encode is None,
                              first_word_ms=stream.first_word_ms)

    def answer(self, frame: Frame, question: str, tag: Any = None, on_text: OnText | None = None) -> AnswerOutcome:
        """Answer ``question`` about ``frame``; ``on_text`` gets the answer so far as it is decoded."""
        from blip_core.errors import WrongTaskError

        model = self.models.answerer
        if model is None:
            raise WrongTaskError("no question-answering model is loaded")
        stream = TextStream(model, on_text)
        self.frames.pin(frame.index)  # follow-up questions on this frame must not re-encode it
        features, encode = self._features(self.frames, model, frame.index, frame.image)
        result = model.answer(features, question, **stream.kwargs())
        return AnswerOutcome(frame.index, question, result, merge_timings(encode, result.timings),
                             reused_features=encode is None, model=model.name, tag=tag,
                             first_word_ms=stream.first_word_ms)

    def match_texts(self, frame: Frame, texts: list[str]) -> list[tuple[str, float, float]]:
        """(text, itm, itc) of ``frame`` against each of ``texts`` with the matching model; the
        frame's features are shared with the caption when one model does both."""
        from blip_core.errors import WrongTaskError

        model = self.models.matcher
        if model is None:
            raise WrongTaskError("no loaded model can match images to text")
        features, _ = self._features(self.frames, model, frame.index, frame.image)
        return [(text, float(m.itm), float(m.itc)) for text, m in zip(texts, model.match(features, texts))]

    def rank_snapshots(self, query: str, records: list,
                       progress: Callable[[int, int], None] | None = None) -> list[tuple[Any, float, float]]:
        """(record, itm, itc) for the newest MAX_RANKED_SNAPSHOTS records, best match first.

        Snapshot files are untrusted: each is decoded by the library's checked loader, and one it
        refuses (or one deleted since listing) is left out of the ranking. ``progress(done, total)``
        is called before the first snapshot and after each one (left out or not); an exception it
        raises abandons the ranking (the worker's way of letting a newer search replace this one).
        """
        from blip_core.errors import WrongTaskError

        model = self.models.matcher
        if model is None:
            raise WrongTaskError("no loaded model can match images to text")

        ranked = []
        asked = records[:MAX_RANKED_SNAPSHOTS]
        report = progress or (lambda _done, _total: None)
        report(0, len(asked))
        for done, record in enumerate(asked, 1):
            features = self._snapshot_features(model, record.path)
            if features is not None:
                match = model.match(replace(features, cache={}), [query])[0]  # its caches die with the copy
                ranked.append((record, float(match.itm), float(match.itc)))
            report(done, len(asked))
        ranked.sort(key=lambda r: (-r[1], -r[2]))
        return ranked

    def _snapshot_features(self, model, path) -> Any | None:
        """The ViT output of the snapshot at ``path`` (cached), or None when it is gone or refused."""
        from blip_core.errors import BadImageError
        from blip_core.preprocess import load_image
        from blip_core.results import ImageFeatures

        try:
            key = (str(path), path.stat().st_mtime_ns)
            features = self.snapshots.get(model, key)
            if features is None:
                features = model.encode_image(load_image(path))
                # keep only the ViT output: the ViT is the expensive part, while the
                # per-image caches match() fills would cost ~40 MB per snapshot
                features = ImageFeatures(features.embeds, features.model_key, features.timings)
                self.snapshots.put(model, key, features)
        except (OSError, BadImageError):  # deleted since listing, or not an image we decode
            return None
        return features
