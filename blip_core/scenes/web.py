"""Noisy "web alt-texts" for scenes, true or false at a controlled rate (CapFilt in miniature)."""

from __future__ import annotations

import random
from collections import Counter

from blip_core.scenes.phrases import Group, group_objects, list_phrase
from blip_core.scenes.world import BACKGROUNDS, COLOURS, NUMBER_WORDS, SHAPES, Scene, plural

NOISE_KINDS: tuple[str, ...] = ("clean", "wrong_colour", "wrong_count", "wrong_shape", "unrelated", "fragment")
_NOISY_KINDS = NOISE_KINDS[1:]

# Web style: the same decorations are used for clean and noisy web captions, so that style
# never gives away whether a text is true; only its content does.
_WEB_PREFIXES = ("", "", "", "photo of ", "image: ", "picture of ", "close up of ", "illustration of ", "new photo: ")
_WEB_SUFFIXES = ("", "", "", " hd", " - free image", " | photo", " (image)")
_WEB_BACKGROUND = "{things} on a {background} background"

# Plausible alt-text junk. None names a colour, a shape or a position of this world, so none
# can accidentally be true for a scene (a test checks this).
_UNRELATED = (
    "click to enlarge",
    "img_0231.jpg",
    "dsc_1045.jpg",
    "screenshot_2019.png",
    "avatar.png",
    "image 1 of 12",
    "page 2 of 5",
    "best price furniture sale",
    "stock photo",
    "free shipping on all orders",
    "untitled",
    "image not found",
    "view full size",
    "download now",
    "share this post",
    "thumbnail",
    "banner ad",
    "company logo",
    "copyright all rights reserved",
    "buy now and save",
    "profile picture",
    "wedding dress collection",
    "new car deals near you",
    "our summer vacation",
    "my cat sleeping on the sofa",
    "delicious pasta recipe",
    "team meeting at the office",
    "sunset over the ocean",
    "loading",
    "advertisement",
    "photo by john smith",
    "summer sale now on",
    "follow us on social media",
    "hotel room with sea view",
    "birthday party 2016",
    "product image",
    "cheap flights to paris",
    "kitchen design ideas",
    "read more",
    "placeholder",
)

# Every fixed text written here (VOCABULARY is built from the TEXTS of each module).
TEXTS: tuple[str, ...] = (*_WEB_PREFIXES, *_WEB_SUFFIXES, _WEB_BACKGROUND, *_UNRELATED)


def _decorate(text: str, rng: random.Random) -> str:
    return rng.choice(_WEB_PREFIXES) + text + rng.choice(_WEB_SUFFIXES)


def _corrupt(kind: str, group: Group, scene: Scene, rng: random.Random) -> Group | None:
    """``group`` with one attribute changed so the phrase is false for ``scene``; None if the
    scene leaves no false value for that attribute."""
    pairs = Counter((o.colour, o.shape) for o in scene.objects)
    if kind == "wrong_colour":
        options = [c for c in COLOURS if (c, group.shape) not in pairs]
        return Group(group.count, rng.choice(options), group.shape, group.size) if options else None
    if kind == "wrong_shape":
        options = [s for s in SHAPES if (group.colour, s) not in pairs]
        return Group(group.count, group.colour, rng.choice(options), group.size) if options else None
    if kind == "wrong_count":
        # Groups hold every object of their key, so any other count is false.
        top = min(len(NUMBER_WORDS) - 1, max(4, group.count + 2))
        options = [n for n in range(1, top + 1) if n != group.count]
        return Group(rng.choice(options), group.colour, group.shape, group.size)
    raise ValueError(kind)


def _attribute_noise(kind: str, scene: Scene, rng: random.Random) -> str | None:
    """A decorated description with one false attribute, or None if ``kind`` is impossible."""
    groups = group_objects(scene.objects, with_size=rng.random() < 0.5)
    with_background = rng.random() < 0.5
    background = scene.background
    if kind == "wrong_colour" and with_background and rng.random() < 0.3:
        # A false background is a wrong colour too.
        background = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        target = None
    else:
        corrupted = [(i, _corrupt(kind, g, scene, rng)) for i, g in enumerate(groups)]
        corrupted = [(i, g) for i, g in corrupted if g is not None]
        if not corrupted:
            return None
        target = rng.choice(corrupted)
    if target is not None:
        i, bad = target
        # Like clean web captions, sometimes only the (false) part is said.
        groups = [bad] if rng.random() < 0.3 else groups[:i] + [bad] + groups[i + 1 :]
    return _decorate(_web_text(groups, background if with_background else None), rng)


def _web_text(groups: list[Group], background: str | None) -> str:
    things = list_phrase(groups)
    return _WEB_BACKGROUND.format(things=things, background=background) if background else things


def _clean_web_text(scene: Scene, rng: random.Random) -> str:
    """A true text: one of the references, or a (possibly partial) group list, decorated."""
    r = rng.random()
    if r < 0.4:
        caption = rng.choice(scene.captions)
        # "photo of there is ..." would be a style no real alt-text has.
        return caption if caption.startswith("there ") else _decorate(caption, rng)
    groups = group_objects(scene.objects, with_size=rng.random() < 0.5)
    if r < 0.7:  # "sometimes shorter": one group, still exactly counted
        groups = [rng.choice(groups)]
    return _decorate(_web_text(groups, scene.background if rng.random() < 0.5 else None), rng)


_FUNCTION_WORDS = frozenset({"a", "an", "and", "the", "at", "on", "in", "with", "there", "is", "are"})


def _fragment(scene: Scene, rng: random.Random) -> str:
    """1-3 consecutive words of a reference caption that name no shape: a truncated piece,
    never a description of the scene. At least one word is a content word, so that fragments
    are not just "a" or "and"."""
    shape_words = set(SHAPES) | {plural(s) for s in SHAPES}
    pieces = []
    for caption in scene.captions:
        words = caption.replace(",", "").split()
        for n in (1, 2, 3):
            for i in range(len(words) - n + 1):
                piece = words[i : i + n]
                if not shape_words.intersection(piece) and not _FUNCTION_WORDS.issuperset(piece):
                    pieces.append(" ".join(piece))
    return rng.choice(sorted(set(pieces)))


def web_caption(scene: Scene, noise_rate: float, rng: random.Random) -> tuple[str, str]:
    """A web-style alt-text for ``scene`` and its kind (one of ``NOISE_KINDS``).

    With probability ``1 - noise_rate`` the text is true (kind ``"clean"``), possibly shorter
    than a reference and decorated ("photo of ...", "image: ...", "... hd"). Otherwise it is
    noise of a uniformly chosen kind: ``wrong_colour`` / ``wrong_shape`` (a colour-shape pair,
    or the background, that is not in the scene), ``wrong_count`` (a group with a wrong
    number), ``unrelated`` (alt-text junk) or ``fragment`` (1-3 words, no shape). When a scene
    admits no false value for the drawn kind, another noisy kind is used.
    """
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate!r}")
    if rng.random() >= noise_rate:
        return _clean_web_text(scene, rng), "clean"
    kinds = list(_NOISY_KINDS)
    kind = rng.choice(kinds)
    while True:
        if kind == "unrelated":
            return rng.choice(_UNRELATED), kind
        if kind == "fragment":
            return _fragment(scene, rng), kind
        text = _attribute_noise(kind, scene, rng)
        if text is not None:
            return text, kind
        kinds.remove(kind)
        kind = rng.choice(kinds)
