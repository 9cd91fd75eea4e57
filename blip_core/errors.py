"""The one exception hierarchy of blip_core.

Every error a user can cause (a bad image, a missing checkpoint, an empty question) is a
``BlipError`` whose message says what went wrong *and what to do*. The CLI prints it on one
line and exits 2; the GUI shows it and keeps running. Anything else is a bug.
"""


class BlipError(Exception):
    """Base class of every user-facing blip_core error."""


class BadImageError(BlipError):
    """The image cannot be read or is unsafe to decode (corrupt, truncated, not an image, too big)."""


class BadInputError(BlipError):
    """An argument is unusable: an empty question, an empty text list, an unknown option."""


class CheckpointError(BlipError):
    """A checkpoint is missing, unreadable, of an unknown layout, or lacks weights the task needs."""


class WeightsUnavailableError(CheckpointError):
    """The weights are not on disk and cannot be downloaded (offline, or the hub id is unknown)."""


class WrongTaskError(BlipError):
    """The loaded checkpoint cannot do what was asked (e.g. ``answer`` on a captioning model)."""


class StorageError(BlipError):
    """Writing to disk failed (a full disk, a read-only folder); nothing earlier was damaged."""


class MissingTorchError(BlipError):
    """torch is needed (fp32 models, converting to int8, ``.pth``/``.bin`` files) but not installed.
    Running an int8 model that is already converted never needs it."""

    def __init__(self, what: str):
        super().__init__(
            f"{what} needs torch, which is not installed: pip install torch (on a Raspberry Pi, the CPU "
            "build: pip install torch --index-url https://download.pytorch.org/whl/cpu), or convert on "
            "another machine with blip convert and load that folder with precision='int8'")


def import_torch(what: str):
    """``import torch``, or a MissingTorchError saying what needed it."""
    try:
        import torch
    except ImportError as e:
        if e.name not in (None, "torch") and not (e.name or "").startswith("torch."):
            raise  # torch is there but broken: not a user's missing install
        raise MissingTorchError(what) from e
    return torch


class InsufficientMemoryError(BlipError):
    """Loading a model would need more memory than the machine has available; refused up front
    (with what would fit) instead of being killed by the kernel's OOM killer halfway."""
