"""blip_core: BLIP (the MED model) for captioning, VQA and image-text matching, fast on a CPU.

>>> import blip_core
>>> m = blip_core.load("Salesforce/blip-image-captioning-base", precision="int8")
>>> m.caption("photo.jpg").text
"""

from pathlib import Path

from blip_core.errors import (
    BadImageError,
    BadInputError,
    BlipError,
    CheckpointError,
    MissingTorchError,
    StorageError,
    WeightsUnavailableError,
    WrongTaskError,
)
from blip_core.results import AnswerResult, CaptionResult, ImageFeatures, MatchResult, Timings

__version__ = "0.1.0"


def demo_model_path() -> Path:
    """The bundled offline demo model (trained on generated scenes only; see its README)."""
    return Path(__file__).resolve().parent.parent / "assets" / "blip-scenes-demo"


def __getattr__(name: str):
    # torch is imported on first use of the model API, so ``import blip_core.errors`` (or the
    # results) stays instant for GUIs and command-line argument checking
    if name in ("load", "Blip", "physical_cores", "max_threads"):
        from blip_core import api

        return getattr(api, name)
    raise AttributeError(f"module 'blip_core' has no attribute {name!r}")


__all__ = [
    "load", "Blip", "demo_model_path", "physical_cores", "max_threads",
    "BlipError", "BadImageError", "BadInputError", "CheckpointError", "MissingTorchError", "StorageError",
    "WeightsUnavailableError", "WrongTaskError",
    "CaptionResult", "AnswerResult", "MatchResult", "ImageFeatures", "Timings",
]
