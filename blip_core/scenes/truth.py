"""Is a text true of a scene? The judge behind the CapFilt experiment's noise rates.

A text is true when it describes at least one object and everything it says holds: every noun
phrase ("two red circles", "a large blue star", "a white cross at the top left") matches the
scene's objects (a counted group holds every object of its kind, as the scene captions and web
texts count), and a named background is the scene's. Decorations ("photo of", "hd") are ignored.
Fragments and unrelated alt-text describe no object and are therefore false.
"""

from __future__ import annotations

import re

from blip_core import scenes

_COUNTS = {"a": 1, "an": 1, **{w: i for i, w in enumerate(scenes.NUMBER_WORDS)}}
_SHAPE_OF = {**{s: s for s in scenes.SHAPES}, **{scenes.plural(s): s for s in scenes.SHAPES}}
_POSITION_OF = {scenes.position_phrase(p): p for p in scenes.POSITIONS}
_PHRASE = re.compile(
    r"\b(?P<count>{counts})\s+(?:(?P<size>{sizes})\s+)?(?P<colour>{colours})\s+(?P<shape>{shapes})\b"
    r"(?:\s+(?P<where>{wheres}))?".format(
        counts="|".join(_COUNTS),
        sizes="|".join(scenes.SIZES),
        colours="|".join(scenes.COLOURS),
        shapes="|".join(sorted(_SHAPE_OF, key=len, reverse=True)),
        wheres="|".join(sorted(map(re.escape, _POSITION_OF), key=len, reverse=True)),
    )
)
_BACKGROUND = re.compile(r"\b(\w+) background\b")


def is_true(text: str, scene: scenes.Scene) -> bool:
    """True when ``text`` names at least one object and nothing false about ``scene``."""
    text = text.lower()
    phrases = list(_PHRASE.finditer(text))
    if not phrases:
        return False
    for m in phrases:
        count, shape = _COUNTS[m["count"]], _SHAPE_OF[m["shape"]]
        same = [
            o
            for o in scene.objects
            if o.shape == shape and o.colour == m["colour"] and (m["size"] is None or o.size == m["size"])
        ]
        if m["where"]:  # "a red circle at the top left": that object, at that place
            if not any(o.position == _POSITION_OF[m["where"]] for o in same):
                return False
        elif len(same) != count:
            return False
    return all(b == scene.background for b in _BACKGROUND.findall(text))
