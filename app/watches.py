"""Watches: texts the user waits for ("a person at the door"), scored against each captioned frame
with the loaded matching model, and when they fire. No Qt.

Scoring: the model's image-text contrastive cosine (ITC) is the first gate, its image-text
matching probability (ITM) confirms: a watch hits when ITC >= ``itc_gate`` and ITM >= ``fire_itm``.
(blip_core's ``match`` returns both from one call; the gate keeps a text whose embedding is
unrelated from firing on an ITM fluke.)

Firing: threshold with hysteresis and a cool-down. A watch fires on a hit while armed, then stays
disarmed until its ITM falls below ``rearm_itm`` (so one long visit of the cat is one event, not
one per frame), and never fires twice within ``cooldown_s`` seconds.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field

MAX_WATCH_CHARS = 120
MAX_WATCHES = 8  # each one is scored on every captioned frame


@dataclass(frozen=True)
class WatchRules:
    fire_itm: float = 0.5
    rearm_itm: float = 0.3
    itc_gate: float = 0.2
    cooldown_s: float = 10.0


class WatchError(ValueError):
    """A watch text that cannot be used; the message says why, for the user."""


def validate_watch(text: str) -> str:
    """``text`` stripped to one line, or WatchError: empty, too long, or holding control characters."""
    if not isinstance(text, str):
        raise WatchError("a watch is a text")
    text = " ".join(text.split())
    if not text:
        raise WatchError("Type what to watch for, e.g. \"a person at the door\".")
    if len(text) > MAX_WATCH_CHARS:
        raise WatchError(f"A watch is at most {MAX_WATCH_CHARS} characters; this one has {len(text)}.")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in text):
        raise WatchError("The watch contains control or unassigned characters; type plain text.")
    return text


@dataclass
class Watch:
    """One watch and its firing state."""

    text: str
    armed: bool = True
    last_fired: float | None = None  # monotonic seconds
    itm: float = 0.0  # the latest scores, for display
    itc: float = 0.0

    def update(self, itm: float, itc: float, now: float, rules: WatchRules) -> bool:
        """Take a frame's scores; True when the watch fires on it."""
        self.itm, self.itc = itm, itc
        if not self.armed:
            if itm < rules.rearm_itm:
                self.armed = True
            return False
        if itc < rules.itc_gate or itm < rules.fire_itm:
            return False
        if self.last_fired is not None and now - self.last_fired < rules.cooldown_s:
            return False
        self.armed, self.last_fired = False, now
        return True


@dataclass(frozen=True)
class WatchScores:
    """A captioned frame's scores against the watches: ``scores`` is [(text, itm, itc)]."""

    frame: object  # sources.base.Frame
    caption: str
    scores: list


@dataclass
class WatchEvent:
    """A watch that fired: what the JSON line, the HTTP POST and the MQTT message carry."""

    watch: str
    itm: float
    itc: float
    caption: str
    frame: dict
    time: str  # local ISO 8601 with offset
    snapshot: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(data.pop("extra"))
        data["itm"], data["itc"] = round(self.itm, 4), round(self.itc, 4)
        return data

    def to_json(self) -> str:
        """One line, ASCII only (``\\uXXXX`` escapes), so any caption or watch text is safe to print."""
        return json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"))
