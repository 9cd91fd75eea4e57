"""Persistent settings: a QSettings INI file with typed defaults (the MNELAB pattern).

The file is ``<config dir>/blip-cam/blip-cam.ini`` unless ``--settings PATH`` or the
``BLIP_CAM_SETTINGS`` environment variable names another one; tests always pass a temp path,
so they never touch the user's real configuration.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

from app.prompts import MAX_PROMPT_CHARS, MAX_TOKENS, MIN_TOKENS, PROMPT_MODES
from app.widgets.overlay import OVERLAY_POSITIONS
from blip_core.generation import STRATEGIES

log = logging.getLogger(__name__)

ORGANIZATION = "blipcam"
APPLICATION = "blip-cam"
ENV_SETTINGS = "BLIP_CAM_SETTINGS"


def default_settings_path() -> Path:
    env = os.environ.get(ENV_SETTINGS)
    if env:
        return Path(env)
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(base or Path.home() / ".config") / APPLICATION / f"{APPLICATION}.ini"


def default_snapshot_dir() -> Path:
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return Path(pictures or Path.home() / "Pictures") / APPLICATION


@dataclass(frozen=True)
class Rule:
    """What a stored value may be: the default's type, plus a range (ints), a choice list or a
    length limit (str / bytes). Anything else is a hand-edited or damaged file."""

    default: Any
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    max_len: int | None = None


MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_WINDOW_BLOB = 4096  # Qt's saveGeometry is ~66 bytes, saveState a few hundred

# the one table of settings: key -> default and bounds
RULES: dict[str, Rule] = {
    "prompt/mode": Rule("picture", choices=PROMPT_MODES),
    "prompt/custom": Rule("", max_len=MAX_PROMPT_CHARS),
    "decoding/strategy": Rule("greedy", choices=STRATEGIES),
    "decoding/max_tokens": Rule(20, low=MIN_TOKENS, high=MAX_TOKENS),
    "captioning/continuous": Rule(True),
    "overlay/position": Rule(OVERLAY_POSITIONS[0], choices=OVERLAY_POSITIONS),
    "speech/enabled": Rule(False),  # speak captions and answers (espeak-ng); off by default
    "snapshots/folder": Rule("", max_len=MAX_PATH_CHARS),  # empty: default_snapshot_dir()
    "window/geometry": Rule(b"", max_len=MAX_WINDOW_BLOB),
    "window/state": Rule(b"", max_len=MAX_WINDOW_BLOB),
}
DEFAULTS: dict[str, Any] = {key: rule.default for key, rule in RULES.items()}

_BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _typed(value: Any, default: Any) -> Any:
    """``value`` as read from the INI file -> the default's type; ValueError/TypeError if it is not one.

    QSettings hands back strings for INI scalars, a list for comma-separated text and a QByteArray
    (or bytes) for blobs.
    """
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if not isinstance(value, str) or value.strip().lower() not in _BOOL_TEXT:
            raise ValueError("not true/false")
        return _BOOL_TEXT[value.strip().lower()]
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError("not an integer")
        try:
            return int(value)
        except ValueError:  # "twenty", "20.5", or more digits than int() takes
            raise ValueError("not an integer") from None
    if isinstance(default, bytes):
        if not isinstance(value, (bytes, bytearray, QByteArray)):
            raise TypeError("not a byte blob")
        return bytes(value)
    if not isinstance(value, str):
        raise TypeError("not text")
    return value


def _check(value: Any, rule: Rule) -> str | None:
    """Why ``value`` (already of the right type) breaks ``rule``, or None if it is fine."""
    if rule.low is not None and not rule.low <= value <= rule.high:
        return f"outside [{rule.low}, {rule.high}]"
    if rule.choices and value not in rule.choices:
        return f"not one of {', '.join(rule.choices)}"
    if rule.max_len is not None and len(value) > rule.max_len:
        return f"longer than {rule.max_len}"
    if isinstance(value, str) and "\0" in value:
        return "contains a NUL character"
    return None


class Settings:
    """Typed access to the INI file. Unknown keys are a programming error (KeyError).

    The file is outside input (hand-edited, damaged, from another version): ``get`` checks every
    value against its rule in RULES and falls back to the default, with a warning in the log, so
    a bad file never stops the app from starting.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_settings_path()
        self._q = QSettings(str(self.path), QSettings.Format.IniFormat)

    def get(self, key: str) -> Any:
        rule = RULES[key]
        if not self._q.contains(key):
            return rule.default
        raw = self._q.value(key)
        try:
            value = _typed(raw, rule.default)
            problem = _check(value, rule)
        except (TypeError, ValueError) as e:
            problem = str(e)
        if problem is None:
            return value
        log.warning("settings %s: %s = %s is %s; using the default %r", self.path, key, _preview(raw), problem,
                    rule.default)
        return rule.default

    def set(self, key: str, value: Any) -> None:
        if key not in RULES:
            raise KeyError(key)
        self._q.setValue(key, value)

    def snapshot_dir(self) -> Path:
        folder = self.get("snapshots/folder")
        return Path(folder) if folder else default_snapshot_dir()

    def sync(self) -> None:
        self._q.sync()


def _preview(value: Any, limit: int = 60) -> str:
    """A log-sized repr of a stored value (a damaged file may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
