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
