"""Every token any scene text can contain, and the word splitting that defines a token."""

from __future__ import annotations

import re
from itertools import chain

from blip_core.scenes import language, phrases, web
from blip_core.scenes.world import BACKGROUNDS, COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES, plural, position_phrase

_WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Split ``text`` into the tokens ``VOCABULARY`` is made of: letter runs, single digits,
    single punctuation characters (``"img_02.jpg"`` -> ``img _ 0 2 . jpg``)."""
    return _WORD_RE.findall(text.lower())


def _template_words(template: str) -> list[str]:
    return split_words(re.sub(r"\{\w+\}", " ", template))


def _build_vocabulary() -> tuple[str, ...]:
    fixed = chain(
        language.TEXTS,
        phrases.TEXTS,
        web.TEXTS,
        SHAPES,
        (plural(s) for s in SHAPES),
        COLOURS,
        BACKGROUNDS,
        SIZES,
        POSITIONS,
        (position_phrase(p) for p in POSITIONS),
        NUMBER_WORDS,
        "0123456789",  # every digit, so any file-name number tokenizes
    )
    return tuple(sorted({w for text in fixed for w in _template_words(text)}))


VOCABULARY: tuple[str, ...] = _build_vocabulary()
