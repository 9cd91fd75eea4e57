"""Test doubles for the app: a BLIP-like model honouring blip_core's public contract, a loader
with ``blip_core.load``'s signature, and a scriptable frame source.

The fake model's text is a pure function of the frame's mean colour ("a red scene"), so tests can
predict captions and answers, and it counts calls, so tests can check what reached the model.
``CountingModel`` wraps *any* model (fake or real) with the same counters, which is what lets
the lead swap in a real small model with one fixture change.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.sources.base import FrameSource, SourceError
from blip_core.errors import BadInputError, WeightsUnavailableError, WrongTaskError
from blip_core.results import AnswerResult, CaptionResult, ImageFeatures, MatchResult, Timings

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 40),
    "white": (245, 245, 245), "black": (10, 10, 10),
}


def solid(colour: str, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """An HxWx3 RGB frame of one named colour."""
    w, h = size
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = COLOURS[colour]
    return frame


def colour_name(rgb) -> str:
    rgb = np.asarray(rgb, float)
    return min(COLOURS, key=lambda c: float(((np.asarray(COLOURS[c]) - rgb) ** 2).sum()))


def _as_array(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)


class FakeModel:
    """Implements the model half of the blip_core contract with predictable outputs.

    Delays (seconds) make calls slow, to test responsiveness and frame dropping; they use
    ``time.sleep``, which releases the GIL like torch's kernels do.
    """

    def __init__(self, name: str = "fake-blip", precision: str = "int8", tasks=("caption", "vqa", "match"),
                 caption_delay: float = 0.0, encode_delay: float = 0.0, answer_delay: float = 0.0):
        self.name, self.precision, self.image_size = name, precision, 384
        self.tasks = frozenset(tasks)
        self.caption_delay, self.encode_delay, self.answer_delay = caption_delay, encode_delay, answer_delay
        self._lock = threading.Lock()
        self.encode_calls = 0
        self.caption_calls: list[dict] = []
        self.answer_calls: list[str] = []
        self.match_calls: list[list[str]] = []

    # the contract ------------------------------------------------------------------------------

    def encode_image(self, image) -> ImageFeatures:
        t0 = time.perf_counter()
        array = _as_array(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise BadInputError(f"expected an RGB image, got shape {array.shape}")
        time.sleep(self.encode_delay)
        with self._lock:
            self.encode_calls += 1
        ms = (time.perf_counter() - t0) * 1000
        return ImageFeatures(embeds=array.reshape(-1, 3).mean(0), model_key=id(self),
                             timings=Timings(preprocess_ms=ms * 0.2, vision_ms=ms * 0.8))

    def _features(self, image_or_f) -> tuple[ImageFeatures, Timings]:
        if isinstance(image_or_f, ImageFeatures):
            if image_or_f.model_key != id(self):
                raise BadInputError("these features were encoded by another model")
            return image_or_f, Timings()
        f = self.encode_image(image_or_f)
        return f, f.timings

    def caption(self, image_or_f, prompt="a picture of ", max_new_tokens=20, min_new_tokens=5, num_beams=1,
                strategy="greedy", top_p=0.9, repetition_penalty=1.0, seed=None) -> CaptionResult:
        if strategy not in ("greedy", "beam", "nucleus"):
            raise BadInputError(f"unknown strategy {strategy!r}")
        if "caption" not in self.tasks:
            raise WrongTaskError(f"{self.name} cannot caption")
        f, enc = self._features(image_or_f)
        with self._lock:
            self.caption_calls.append(dict(prompt=prompt, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                           num_beams=num_beams, strategy=strategy, top_p=top_p))
        t0 = time.perf_counter()
        time.sleep(self.caption_delay)
        generated = f"a {colour_name(f.embeds)} scene".split()[:max_new_tokens]
        decode_ms = max((time.perf_counter() - t0) * 1000, 0.5)
        timings = Timings(enc.preprocess_ms, enc.vision_ms, 0.0, decode_ms, enc.total_ms + decode_ms)
        text = " ".join(generated)  # like blip_core: the continuation, without the prompt
        return CaptionResult(text, tuple(range(1, len(generated) + 1)), timings, prompt, (text,))

    def answer(self, image_or_f, question, answers=None, max_new_tokens=10) -> AnswerResult:
        if "vqa" not in self.tasks:
            raise WrongTaskError(f"{self.name} cannot answer questions")
        if not question.strip():
            raise BadInputError("the question is empty")
        f, enc = self._features(image_or_f)
        with self._lock:
            self.answer_calls.append(question)
        time.sleep(self.answer_delay)
        q = question.lower()
        text = colour_name(f.embeds) if ("colour" in q or "color" in q) else ("1" if "how many" in q else "yes")
        total = enc.total_ms + max(self.answer_delay * 1000, 0.5)
        return AnswerResult(text, question, (1,),
                            Timings(enc.preprocess_ms, enc.vision_ms, 0.1, total - enc.total_ms, total))

    def match(self, image_or_f, texts) -> list[MatchResult]:
        if "match" not in self.tasks:
            raise WrongTaskError(f"{self.name} cannot match")
        f, _ = self._features(image_or_f)
        colour = colour_name(f.embeds)
        with self._lock:
            self.match_calls.append(list(texts))
        return [MatchResult(t, 0.9 if colour in t.lower() else 0.1, 0.5 if colour in t.lower() else 0.0) for t in texts]


class CountingModel:
    """Wraps any model with the blip_core contract and counts/records what reaches it."""

    def __init__(self, model):
        self.model = model
        self.encode_calls = 0
        self.prompts: list[str] = []
        self.caption_kwargs: list[dict] = []
        self.questions: list[str] = []

    def __getattr__(self, name):  # name, precision, tasks, image_size, ...
        return getattr(self.model, name)

    def encode_image(self, image):
        self.encode_calls += 1
        return self.model.encode_image(image)

    def caption(self, image_or_f, **kwargs):
        self.prompts.append(kwargs.get("prompt", "a picture of "))
        self.caption_kwargs.append(kwargs)
        return self.model.caption(image_or_f, **kwargs)

    def answer(self, image_or_f, question, **kwargs):
        self.questions.append(question)
        return self.model.answer(image_or_f, question, **kwargs)

    def match(self, image_or_f, texts):
        return self.model.match(image_or_f, texts)


class CountingLoader:
    """Wraps a real loader (``blip_core.load``) so the window tests can count what reaches the
    model: ``model_loader`` can return ``CountingLoader(blip_core.load)``."""

    def __init__(self, load):
        self.load = load
        self.calls: list[str] = []

    def __call__(self, source, **kwargs):
        self.calls.append(str(source))
        return CountingModel(self.load(source, **kwargs))


class FakeLoader:
    """``blip_core.load``'s signature. ``models`` maps a source to its model (``default`` for the
    rest); sources in ``unavailable`` raise WeightsUnavailableError as offline would."""

    def __init__(self, default=None, models: dict | None = None, unavailable=(), delay: float = 0.0, wrap: bool = True):
        self.default = default if default is not None else FakeModel()
        self.models = dict(models or {})
        self.unavailable = set(unavailable)
        self.delay = delay
        self.wrap = wrap
        self.calls: list[str] = []
        self.options: list[dict] = []
        self.loaded: dict[str, CountingModel] = {}

    def __call__(self, source, precision="fp32", threads=None, task=None, progress=None):
        source = str(source)
        self.calls.append(source)
        self.options.append({"precision": precision, "threads": threads, "task": task})
        if progress:
            progress(0.5, f"reading {source}")
        steps = 50
        for step in range(steps):  # a "download": progress reports along the way, like the hub's
            time.sleep(self.delay / steps)
            if progress and step < steps - 1:
                progress(0.5 + 0.5 * step / steps, f"reading {source}")
        if source in self.unavailable:
            raise WeightsUnavailableError(f"{source} is not in the cache and the hub is unreachable.")
        model = self.models.get(source, self.default)
        wrapped = CountingModel(model) if self.wrap else model
        self.loaded[source] = wrapped
        return wrapped


class FakeSource(FrameSource):
    """Solid-colour frames every ``interval`` s, following ``colours`` (cycled).

    ``script`` maps a read number (1-based) to ``"none"`` (no frame: camera lost / video ended)
    or ``"raise"``; ``open_failures`` makes the first N opens fail. Counts opens and closes.
    """

    def __init__(self, colours=("red",), interval: float = 0.02, script: dict | None = None,
                 open_failures: int = 0, size=(64, 48), name: str = "fake camera"):
        self.colours = list(colours)
        self.interval = interval
        self.script = dict(script or {})
        self.open_failures = open_failures
        self.size = size
        self.name = name
        self.reads = self.opens = self.closes = 0
        self.colour_index = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.open_failures:
            raise SourceError("fake camera not connected")

    def read(self):
        self.reads += 1
        action = self.script.get(self.reads)
        if action == "none":
            return None
        if action == "raise":
            raise OSError("fake camera unplugged")
        colour = self.colours[self.colour_index % len(self.colours)]
        return solid(colour, self.size)

    def next_colour(self) -> None:
        self.colour_index += 1

    def close(self) -> None:
        self.closes += 1
