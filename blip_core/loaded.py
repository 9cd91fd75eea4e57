"""What every loaded model (``api.Blip``, ``api_blip2.Blip2``) shares: its parts, numpy-to-model
inputs, the image -> pixels step, the features check, and running public methods without
autograd. One home for these, so the two families cannot drift apart.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from typing import Any

import numpy as np

from blip_core.checkpoints import LoadReport
from blip_core.errors import BadInputError, WrongTaskError
from blip_core.results import ImageFeatures, Timings

VERBS = {"caption": "caption", "vqa": "answer questions", "match": "match texts"}


def elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def inference(method):
    """Run a public method without autograd on a torch model (inference tensors must never meet
    parameters that require grad, e.g. a training model wrapped for evaluation)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._torch.inference_mode() if self._torch else contextlib.nullcontext():
            return method(self, *args, **kwargs)

    return wrapper


def checked_texts(texts) -> list[str]:
    """The texts to match: one string or a list of non-empty strings; else a BadInputError."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise BadInputError("give one or more non-empty texts to match")
    return list(texts)


class LoadedModel:
    """A model with its tokenizer. Thread-compatible: one call at a time per object."""

    family = "blip"

    def __init__(self, model: Any, tokenizer: Any, name: str = "", precision: str = "fp32",
                 report: LoadReport | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.precision = precision
        self.report = report
        self.cfg = model.cfg
        # torch for a torch model; None for one that takes numpy arrays (the int8 runtime)
        self._torch = None if getattr(model, "numpy_io", False) else importlib.import_module("torch")

    def _in(self, array: np.ndarray):
        """A numpy input as the model takes it (a torch tensor sharing its memory, or as is)."""
        return self._torch.from_numpy(array) if self._torch else array

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset(self.cfg.tasks)

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    def _require(self, task: str) -> None:
        if task not in self.cfg.tasks:
            raise WrongTaskError(
                f"{self.name or 'this model'} cannot {VERBS[task]}: "
                f"it was loaded for {', '.join(self.cfg.tasks)}; load a {task} checkpoint"
            )

    def _pixels(self, image) -> np.ndarray:
        """PIL image | HxWx3 uint8 RGB array | path -> float32 [1, 3, S, S], through the checked loader."""
        from blip_core.preprocess import frame_to_array, pixel_array

        if hasattr(image, "shape") and hasattr(image, "dtype"):
            return frame_to_array(image, self.image_size)
        return pixel_array(image, self.image_size)

    def _encode(self, pixels: np.ndarray) -> Any:
        """pixels [1, 3, S, S] -> the model's per-image features (``ImageFeatures.embeds``)."""
        return self.model.encode_image(self._in(pixels))

    @inference
    def encode_image(self, image) -> ImageFeatures:
        """PIL image | HxWx3 uint8 RGB array | path -> reusable ``ImageFeatures``."""
        if isinstance(image, ImageFeatures):
            return self._check_features(image)
        t0 = time.perf_counter()
        pixels = self._pixels(image)
        t1 = time.perf_counter()
        embeds = self._encode(pixels)
        pre, vis = (t1 - t0) * 1000, elapsed_ms(t1)
        return ImageFeatures(embeds, id(self), Timings(preprocess_ms=pre, vision_ms=vis, total_ms=pre + vis))

    def _check_features(self, f: ImageFeatures) -> ImageFeatures:
        if f.model_key != id(self):
            raise BadInputError("these image features were encoded by another model; pass the image instead")
        return f

    def _features(self, image) -> tuple[ImageFeatures, Timings]:
        """Features plus the vision timings this call paid (zero when they were reused)."""
        if isinstance(image, ImageFeatures):
            return self._check_features(image), Timings()
        f = self.encode_image(image)
        return f, f.timings
