"""Noun phrases shared by captions and web texts: articles, counts, lists, groups of look-alike objects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from blip_core.scenes.world import COLOURS, NUMBER_WORDS, SHAPES, SIZES, SceneObject, plural

# "an" only enters the vocabulary if some attribute word starts with a vowel.
_ARTICLES = ("a",) + (("an",) if any(w[0] in "aeiou" for w in (*SHAPES, *COLOURS, *SIZES)) else ())
_JOINERS = (" and ", ", ")
# Every fixed text written here (VOCABULARY is built from the TEXTS of each module).
TEXTS: tuple[str, ...] = _ARTICLES + _JOINERS


def article(next_word: str) -> str:
    """The article ("a" or "an") that goes before ``next_word``."""
    return "an" if next_word[0] in "aeiou" else "a"


def count_word(count: int, next_word: str) -> str:
    """``1`` -> "a"/"an" (as a caption says it), else the number word."""
    return article(next_word) if count == 1 else NUMBER_WORDS[count]


def join(phrases: list[str]) -> str:
    """``[x]`` -> x; ``[x, y]`` -> "x and y"; ``[x, y, z]`` -> "x, y and z"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --------------------------------------------------------------------------------------------
# Groups: "two red circles" is one group of identical-looking objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """``count`` objects of one ``colour`` and ``shape`` (and ``size`` when not ``None``)."""

    count: int
    colour: str
    shape: str
    size: str | None = None

    def phrase(self) -> str:
        """The noun phrase: "a large red circle", "two red circles"."""
        descr = ([self.size] if self.size else []) + [self.colour]
        noun = self.shape if self.count == 1 else plural(self.shape)
        return " ".join([count_word(self.count, descr[0])] + descr + [noun])


def group_objects(objects: tuple[SceneObject, ...], with_size: bool) -> list[Group]:
    """Group objects by (size,) colour and shape, in order of first appearance (reading order)."""
    keys = [((o.size if with_size else None), o.colour, o.shape) for o in objects]
    counts = Counter(keys)
    ordered = list(dict.fromkeys(keys))
    return [Group(counts[k], k[1], k[2], k[0]) for k in ordered]


def list_phrase(groups: list[Group]) -> str:
    return join([g.phrase() for g in groups])
