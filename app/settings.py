"""Persistent settings: a QSettings INI file with typed defaults (the MNELAB pattern).

The file is ``<config dir>/blip-cam/blip-cam.ini`` unless ``--settings PATH`` or the
``BLIP_CAM_SETTINGS`` environment variable names another one; tests always pass a temp path,
so they never touch the user's real configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, QStandardPaths

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


# key -> default; the default's type is the stored type
DEFAULTS: dict[str, Any] = {
    "prompt/mode": "picture",
    "prompt/custom": "",
    "decoding/strategy": "greedy",
    "decoding/max_tokens": 20,
    "captioning/continuous": True,
    "snapshots/folder": "",  # empty: default_snapshot_dir()
    "window/geometry": b"",
    "window/state": b"",
}


class Settings:
    """Typed access to the INI file. Unknown keys are a programming error (KeyError)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_settings_path()
        self._q = QSettings(str(self.path), QSettings.Format.IniFormat)

    def get(self, key: str) -> Any:
        default = DEFAULTS[key]
        value = self._q.value(key, default)
        try:
            if isinstance(default, bool):
                # INI stores "true"/"false" strings
                return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            if isinstance(default, int):
                return int(value)
            if isinstance(default, bytes):
                return bytes(value) if value else b""
            return str(value)
        except (TypeError, ValueError):  # a hand-edited file with junk: fall back, don't crash
            return default

    def set(self, key: str, value: Any) -> None:
        if key not in DEFAULTS:
            raise KeyError(key)
        self._q.setValue(key, value)

    def snapshot_dir(self) -> Path:
        folder = self.get("snapshots/folder")
        return Path(folder) if folder else default_snapshot_dir()

    def sync(self) -> None:
        self._q.sync()
