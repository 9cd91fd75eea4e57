"""A procedural world of coloured shapes, deterministic per seed.

Every scene is a small grid picture (3 x 3 cells, at most one object per cell) with 1..N
objects on a plain, lightly textured background, plus texts that are *true* for it:

* ``captions`` -- 3-5 clean reference captions ("human annotations"), varied in phrasing;
* ``qa`` -- 5-10 question/answer pairs whose answers are unique given the pixels;
* ``web_caption(...)`` -- a "web alt-text" for the scene that is noisy at a controlled rate
  (for reproducing BLIP's CapFilt effect in miniature).

The world is designed to be learnable by a small ViT at 96-128 px on a CPU, yet impossible to
caption from priors: shape, colour, size and cell of every object are sampled independently
(with deliberate repeats, so counting and "which one?" questions arise).

The world
---------
* shapes: ``SHAPES`` = circle, square, triangle, star, cross, diamond;
* object colours: ``COLOURS`` = red, green, blue, yellow, purple, white;
* backgrounds: ``BACKGROUNDS`` = grey, black, brown (never an object colour);
* sizes: small (0.36-0.42 of a cell) and large (0.74-0.80 of a cell);
* positions: ``POSITIONS`` = the nine cells "top left", "top", "top right", "left", "middle",
  "right", "bottom left", "bottom", "bottom right". An object's centre stays within 10 % of a
  cell of its cell's centre and objects never overlap, so position names are unambiguous.

Determinism
-----------
``render(seed, size, max_objects)`` is a pure function. The scene *content* (objects, texts)
depends only on ``seed`` and ``max_objects``, so ``render(s, 96)`` and ``render(s, 384)`` show
the same scene; only pixels, boxes and the texture noise depend on ``size``.

Tokenization
------------
``VOCABULARY`` lists every token that any text can contain, as produced by ``split_words``:
runs of letters are words, every digit is its own token and every punctuation character is
its own token ("img_0231.jpg" -> img _ 0 2 3 1 . jpg). A WordPiece vocabulary built from it
should also contain "##0" .. "##9", because BERT's basic tokenizer keeps "0231" as one word
and WordPiece then needs continuation pieces to split it into single digits.
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
import re
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "MAX_CAPTION_WORDS",
    "NOISE_KINDS",
    "NUMBER_WORDS",
    "POSITIONS",
    "QUESTION_KINDS",
    "SHAPES",
    "SIZES",
    "VOCABULARY",
    "Scene",
    "SceneObject",
    "plural",
    "position_phrase",
    "question_kind",
    "render",
    "scene_stream",
    "split_words",
    "stream_seed",
    "web_caption",
]

# --------------------------------------------------------------------------------------------
# The world's attributes
# --------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}

# Saturated, mutually distant colours (>= ~110 apart in RGB, also from every background), so
# the colour jitter and texture below can never move one into another's neighbourhood.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 95, 225),
    "yellow": (240, 215, 45),
    "purple": (145, 60, 190),
    "white": (240, 240, 240),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (120, 120, 120),
    "black": (25, 25, 30),
    "brown": (105, 72, 45),
}

SIZES: tuple[str, ...] = ("small", "large")

# Cell index = row * 3 + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "middle", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

_POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "middle": "in the middle",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip

NOISE_KINDS: tuple[str, ...] = ("clean", "wrong_colour", "wrong_count", "wrong_shape", "unrelated", "fragment")
_NOISY_KINDS = NOISE_KINDS[1:]

# Reference captions longer than this are avoided (always possible for max_objects <= 3).
MAX_CAPTION_WORDS = 20

_GRID = 3
# Object extent as a fraction of a cell side; the gap between the ranges keeps "small" and
# "large" obvious even for shapes whose area is a fraction of their box (diamond, star).
_EXTENT = {"small": (0.36, 0.42), "large": (0.74, 0.80)}
_MAX_OFFSET = 0.10  # max centre offset from the cell centre, in cells
_MARGIN = 0.04  # min gap between an object and its cell border, in cells
_COLOUR_JITTER = 12  # per channel, so colour is a category rather than one exact RGB value
_GRADIENT_MAX = 8.0  # brightness gradient amplitude (levels), "lighting"
_NOISE_MAX = 4  # per-pixel texture noise (levels)

# Probabilities that a further object repeats earlier attributes. Without them, two objects
# with the same shape (or colour) would be rare and counting / disambiguation questions
# would hardly ever arise; marginals stay uniform because the copied values are uniform.
_P_REPEAT_BOTH = 0.25
_P_REPEAT_SHAPE = 0.20
_P_REPEAT_COLOUR = 0.15

# --------------------------------------------------------------------------------------------
# Text templates. VOCABULARY is derived from these, so keep every fixed word in a constant.
# --------------------------------------------------------------------------------------------

_CAPTION_TEMPLATES = (
    "{sized} on a {background} background",
    "{plain}",
    "a {background} background with {plain}",
    "{positional}",
    "there {verb} {sized}",
)
_VERBS = ("is", "are")
# "an" only enters the vocabulary if some attribute word starts with a vowel.
_ARTICLES = ("a",) + (("an",) if any(w[0] in "aeiou" for w in (*SHAPES, *COLOURS, *SIZES)) else ())
_JOINERS = (" and ", ", ")

_Q_BACKGROUND = "what colour is the background?"
_Q_COLOUR = "what colour is {ref}?"
_Q_SHAPE = "what shape is {ref}?"
_Q_SIZE = "is {ref} large or small?"
_Q_WHERE = "where is {ref}?"
_Q_COUNT = "how many {things} are there?"
_Q_EXIST = "is there {thing}?"
_ANSWERS_YES_NO = ("yes", "no")

_REF_OBJECT_AT = "the object {where}"
_REF_COLOUR_OBJECT = "the {colour} object"
_REF_THING = "the {thing}"
_COUNT_OBJECTS = "objects"
_COUNT_COLOUR_OBJECTS = "{colour} objects"

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

# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    ``position`` is the name of its grid cell (one of ``POSITIONS``), ``cell`` the same as
    ``(row, col)``; ``box`` is ``(x0, y0, x1, y1)`` in pixels of the rendered image (the
    shape's nominal square extent, exclusive of anti-aliasing).
    """

    shape: str
    colour: str
    size: str
    position: str
    cell: tuple[int, int]
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[int, int]:
        """Pixel ``(x, y)`` at the middle of ``box``; always inside the shape's silhouette."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) // 2, (y0 + y1) // 2

    def describe(self, with_size: bool = True) -> str:
        """``"large red circle"`` (or ``"red circle"`` without the size)."""
        return " ".join(([self.size] if with_size else []) + [self.colour, self.shape])


@dataclass(frozen=True)
class Scene:
    """A rendered scene and its true texts (see the module docstring)."""

    seed: int
    image: Image.Image
    objects: tuple[SceneObject, ...]
    background: str
    captions: tuple[str, ...]
    qa: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------------
# Small text helpers
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Split ``text`` into the tokens ``VOCABULARY`` is made of: letter runs, single digits,
    single punctuation characters (``"img_02.jpg"`` -> ``img _ 0 2 . jpg``)."""
    return _WORD_RE.findall(text.lower())


def plural(shape: str) -> str:
    """Plural of a shape name (``"cross"`` -> ``"crosses"``)."""
    return _PLURALS[shape]


def position_phrase(position: str) -> str:
    """How a caption places an object in a cell: ``"left"`` -> ``"on the left"``."""
    return _POSITION_PHRASES[position]


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _count_word(count: int, next_word: str) -> str:
    """``1`` -> "a"/"an" (as a caption says it), else the number word."""
    return _article(next_word) if count == 1 else NUMBER_WORDS[count]


def _join(phrases: list[str]) -> str:
    """``[x]`` -> x; ``[x, y]`` -> "x and y"; ``[x, y, z]`` -> "x, y and z"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --------------------------------------------------------------------------------------------
# Groups: "two red circles" is one group of identical-looking objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """``count`` objects of one ``colour`` and ``shape`` (and ``size`` when not ``None``)."""

    count: int
    colour: str
    shape: str
    size: str | None = None

    def phrase(self) -> str:
        """The noun phrase: "a large red circle", "two red circles"."""
        descr = ([self.size] if self.size else []) + [self.colour]
        noun = self.shape if self.count == 1 else plural(self.shape)
        return " ".join([_count_word(self.count, descr[0])] + descr + [noun])


def _groups(objects: tuple[SceneObject, ...], with_size: bool) -> list[_Group]:
    """Group objects by (size,) colour and shape, in order of first appearance (reading order)."""
    keys = [((o.size if with_size else None), o.colour, o.shape) for o in objects]
    counts = Counter(keys)
    ordered = list(dict.fromkeys(keys))
    return [_Group(counts[k], k[1], k[2], k[0]) for k in ordered]


def _list_phrase(groups: list[_Group]) -> str:
    return _join([g.phrase() for g in groups])


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placement:
    """An object independent of the output resolution: geometry as fractions of the image side."""

    shape: str
    colour: str
    size: str
    cell: int
    cx: float
    cy: float
    extent: float
    rgb: tuple[int, int, int]


def _sample_attributes(rng: random.Random, previous: list[tuple[str, str]]) -> tuple[str, str]:
    """(shape, colour) of the next object, sometimes repeating earlier ones (see _P_REPEAT_*)."""
    r = rng.random()
    if previous and r < _P_REPEAT_BOTH:
        return rng.choice(previous)
    if previous and r < _P_REPEAT_BOTH + _P_REPEAT_SHAPE:
        return rng.choice(previous)[0], rng.choice(tuple(COLOURS))
    if previous and r < _P_REPEAT_BOTH + _P_REPEAT_SHAPE + _P_REPEAT_COLOUR:
        return rng.choice(SHAPES), rng.choice(previous)[1]
    return rng.choice(SHAPES), rng.choice(tuple(COLOURS))


def _sample_layout(rng: random.Random, max_objects: int) -> tuple[str, list[_Placement]]:
    """Background name and objects in reading order (top-left to bottom-right)."""
    background = rng.choice(tuple(BACKGROUNDS))
    n = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(_GRID * _GRID), n))
    placements: list[_Placement] = []
    previous: list[tuple[str, str]] = []
    for cell in cells:
        shape, colour = _sample_attributes(rng, previous)
        previous.append((shape, colour))
        size = rng.choice(SIZES)
        extent = rng.uniform(*_EXTENT[size])  # in cells
        # Large objects get less play so that they never leave their cell (no overlap).
        slack = min(_MAX_OFFSET, 0.5 - extent / 2 - _MARGIN)
        dx, dy = rng.uniform(-slack, slack), rng.uniform(-slack, slack)
        row, col = divmod(cell, _GRID)
        rgb = tuple(min(255, max(0, c + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for c in COLOURS[colour])
        placements.append(
            _Placement(
                shape=shape,
                colour=colour,
                size=size,
                cell=cell,
                cx=(col + 0.5 + dx) / _GRID,
                cy=(row + 0.5 + dy) / _GRID,
                extent=extent / _GRID,
                rgb=rgb,  # type: ignore[arg-type]
            )
        )
    return background, placements


def _to_object(p: _Placement, size: int) -> SceneObject:
    half = p.extent / 2
    box = tuple(round(v * size) for v in (p.cx - half, p.cy - half, p.cx + half, p.cy + half))
    row, col = divmod(p.cell, _GRID)
    return SceneObject(
        shape=p.shape,
        colour=p.colour,
        size=p.size,
        position=POSITIONS[p.cell],
        cell=(row, col),
        box=box,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _shape_polygons(shape: str, cx: float, cy: float, r: float) -> list[list[tuple[float, float]]]:
    """Polygons (in pixels) whose union is ``shape`` with half-extent ``r`` centred at (cx, cy)."""
    if shape == "square":
        return [[(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]]
    if shape == "triangle":
        return [[(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]]
    if shape == "diamond":
        return [[(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]]
    if shape == "cross":
        t = 0.38 * r  # half arm thickness: thick enough to stay a cross at ~12 px
        return [
            [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy + r), (cx - t, cy + r)],
            [(cx - r, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx - r, cy + t)],
        ]
    if shape == "star":
        # A five-pointed star spans [-r, 0.81 r] vertically; shift it down to centre it, and
        # use a fat inner radius so the points survive downscaling.
        cy += r * (1 - math.cos(math.pi / 5)) / 2
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else 0.5 * r
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return [pts]
    raise ValueError(f"unknown shape {shape!r}")


def _draw(background: str, placements: list[_Placement], size: int, texture_seed: list[int]) -> Image.Image:
    """Supersampled drawing, box-filter downscale (anti-aliasing), then light texture."""
    ss = 4 if size <= 192 else 2  # keep the supersampled canvas around 400-800 px
    big = size * ss
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[background])
    draw = ImageDraw.Draw(canvas)
    for p in placements:
        r = p.extent * big / 2
        if p.shape == "circle":
            draw.ellipse((p.cx * big - r, p.cy * big - r, p.cx * big + r, p.cy * big + r), fill=p.rgb)
        else:
            for poly in _shape_polygons(p.shape, p.cx * big, p.cy * big, r):
                draw.polygon(poly, fill=p.rgb)
    image = canvas.resize((size, size), Image.Resampling.BOX)

    # Texture: a gentle lighting gradient plus grey pixel noise, the same for all channels so
    # hues are untouched. Seeded separately from the layout so content is size-independent.
    gen = np.random.default_rng(texture_seed)
    amp = gen.uniform(0.0, _GRADIENT_MAX)
    angle = gen.uniform(0.0, 2 * math.pi)
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    shade = amp * math.cos(angle) * lin[None, :] + amp * math.sin(angle) * lin[:, None]
    shade = shade + gen.integers(-_NOISE_MAX, _NOISE_MAX + 1, (size, size)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) + shade[:, :, None]
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# Clean captions
# --------------------------------------------------------------------------------------------


def _caption_candidates(objects: tuple[SceneObject, ...], background: str) -> list[str]:
    """One caption per template in ``_CAPTION_TEMPLATES``, each mentioning every object."""
    sized = _groups(objects, with_size=True)
    fields = {
        "sized": _list_phrase(sized),
        "plain": _list_phrase(_groups(objects, with_size=False)),
        # Positional captions list objects one by one: a position belongs to a single object.
        "positional": _join([f"{_Group(1, o.colour, o.shape).phrase()} {position_phrase(o.position)}" for o in objects]),
        "verb": _VERBS[0] if sized[0].count == 1 else _VERBS[1],  # agrees with the first item
        "background": background,
    }
    return [t.format(**fields) for t in _CAPTION_TEMPLATES]


def _choose_captions(objects: tuple[SceneObject, ...], background: str, rng: random.Random) -> tuple[str, ...]:
    candidates = _caption_candidates(objects, background)
    short = [c for c in candidates if len(c.split()) <= MAX_CAPTION_WORDS]
    if len(short) < 3:  # only with many objects: fall back to the shortest ones
        short = sorted(candidates, key=lambda c: len(c.split()))[:3]
    k = rng.randint(3, min(5, len(short)))
    return tuple(rng.sample(short, k))


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------


def _references(obj: SceneObject, objects: tuple[SceneObject, ...]) -> list[tuple[str, frozenset[str]]]:
    """Noun phrases that pick out ``obj`` and only it, with the attributes each one uses."""

    def unique(*attrs: str) -> bool:
        return sum(all(getattr(o, a) == getattr(obj, a) for a in attrs) for o in objects) == 1

    refs = [(_REF_OBJECT_AT.format(where=position_phrase(obj.position)), frozenset({"position"}))]
    if unique("shape"):
        refs.append((_REF_THING.format(thing=obj.shape), frozenset({"shape"})))
    if unique("colour", "shape"):
        refs.append((_REF_THING.format(thing=f"{obj.colour} {obj.shape}"), frozenset({"colour", "shape"})))
    if unique("size", "shape"):
        refs.append((_REF_THING.format(thing=f"{obj.size} {obj.shape}"), frozenset({"size", "shape"})))
    if unique("colour"):
        refs.append((_REF_COLOUR_OBJECT.format(colour=obj.colour), frozenset({"colour"})))
    return refs


def _attribute_questions(objects: tuple[SceneObject, ...]) -> dict[str, list[tuple[str, str]]]:
    """Colour / shape / size / position questions about uniquely referenced objects. A
    reference never uses the attribute asked about (no "what colour is the red circle?")."""
    asks = {
        "colour": (_Q_COLOUR, lambda o: o.colour),
        "shape": (_Q_SHAPE, lambda o: o.shape),
        "size": (_Q_SIZE, lambda o: o.size),
        "position": (_Q_WHERE, lambda o: o.position),
    }
    pools: dict[str, list[tuple[str, str]]] = {k: [] for k in asks}
    for obj in objects:
        for ref, used in _references(obj, objects):
            for attr, (template, answer) in asks.items():
                if attr not in used:
                    pools[attr].append((template.format(ref=ref), answer(obj)))
    return pools


def _count_questions(objects: tuple[SceneObject, ...], rng: random.Random) -> list[tuple[str, str]]:
    shapes = Counter(o.shape for o in objects)
    colours = Counter(o.colour for o in objects)
    pairs = Counter((o.colour, o.shape) for o in objects)
    things = [(_COUNT_OBJECTS, len(objects))]
    things += [(plural(s), n) for s, n in sorted(shapes.items())]
    things += [(_COUNT_COLOUR_OBJECTS.format(colour=c), n) for c, n in sorted(colours.items())]
    things += [(f"{c} {plural(s)}", n) for (c, s), n in sorted(pairs.items()) if n > 1]
    absent = [s for s in SHAPES if s not in shapes]
    if absent:  # teaches "zero" (one per scene, so it does not swamp the counts)
        things.append((plural(rng.choice(absent)), 0))
    return [(_Q_COUNT.format(things=t), NUMBER_WORDS[n]) for t, n in things]


def _existence_questions(objects: tuple[SceneObject, ...], rng: random.Random) -> list[tuple[str, str]]:
    """Alternating yes/no questions (random first), so answers are balanced. Negatives are
    mostly "hard": they combine attributes that are present, but not on the same object."""
    present_shapes = {o.shape for o in objects}
    present_colours = {o.colour for o in objects}
    pairs = {(o.colour, o.shape) for o in objects}
    sized = {(o.size, o.shape) for o in objects}

    def ask(*words: str) -> str:
        return _Q_EXIST.format(thing=f"{_article(words[0])} {' '.join(words)}")

    yes = [ask(s) for s in sorted(present_shapes)]
    yes += [ask(c, s) for c, s in sorted(pairs)]
    yes += [ask(z, s) for z, s in sorted(sized)]
    no = [ask(s) for s in SHAPES if s not in present_shapes]
    no += [ask(c, s) for c in sorted(present_colours) for s in sorted(present_shapes) if (c, s) not in pairs]
    no += [ask(z, s) for z in SIZES for s in sorted(present_shapes) if (z, s) not in sized]
    rng.shuffle(yes)
    rng.shuffle(no)
    first, second = ((yes, "yes"), (no, "no")) if rng.random() < 0.5 else ((no, "no"), (yes, "yes"))
    out: list[tuple[str, str]] = []
    for a, b in zip(first[0], second[0]):
        out += [(a, first[1]), (b, second[1])]
    return out


# Each question template and its family; a question's family is the template it fills. The
# background question comes first because the colour template would match it too.
_TEMPLATE_KINDS = {_Q_BACKGROUND: "background", _Q_COLOUR: "colour", _Q_SHAPE: "shape", _Q_SIZE: "size",
                   _Q_WHERE: "position", _Q_COUNT: "count", _Q_EXIST: "existence"}
_KIND_PATTERNS = [(re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t))), kind) for t, kind in _TEMPLATE_KINDS.items()]
QUESTION_KINDS: tuple[str, ...] = tuple(sorted(_TEMPLATE_KINDS.values()))


def question_kind(question: str) -> str:
    """The family (one of ``QUESTION_KINDS``) of a question this world asks; ValueError otherwise."""
    for pattern, kind in _KIND_PATTERNS:
        if pattern.fullmatch(question):
            return kind
    raise ValueError(f"not a question of the scene world: {question!r}")


def _choose_questions(objects: tuple[SceneObject, ...], background: str, rng: random.Random) -> tuple[tuple[str, str], ...]:
    """5-10 pairs, drawn round-robin from shuffled categories so every kind of question shows
    up often and no kind dominates."""
    pools = _attribute_questions(objects)
    pools["count"] = _count_questions(objects, rng)
    pools["exist"] = _existence_questions(objects, rng)  # already in yes/no order
    pools["background"] = [(_Q_BACKGROUND, background)]
    for name in ("colour", "shape", "size", "position", "count"):
        rng.shuffle(pools[name])
    order = list(pools)
    rng.shuffle(order)
    k = rng.randint(5, 10)
    chosen: dict[str, str] = {}
    while len(chosen) < k and any(pools.values()):
        for name in order:
            if pools[name] and len(chosen) < k:
                q, a = pools[name].pop(0)
                chosen.setdefault(q, a)
    return tuple(chosen.items())


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _as_int(name: str, value: object) -> int:
    """``value`` as a plain int; numpy integers are accepted (dataset indices often are)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def render(seed: int, size: int = 384, max_objects: int = 3) -> Scene:
    """Draw scene ``seed`` as a ``size`` x ``size`` RGB image with 1..``max_objects`` objects.

    Pure: the same arguments always give identical pixels and texts. Raises ``ValueError`` for
    ``size < 16`` or ``max_objects`` outside 1..9 (the grid has nine cells).
    """
    seed, size, max_objects = (_as_int(name, v) for name, v in (("seed", seed), ("size", size), ("max_objects", max_objects)))
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if not 1 <= max_objects <= _GRID * _GRID:
        raise ValueError(f"max_objects must be in 1..{_GRID * _GRID}, got {max_objects}")
    # All content comes from one Random(seed), consumed in a fixed order; the texture has its
    # own generator keyed by (seed, size) so content does not depend on the resolution.
    rng = random.Random(seed)
    background, placements = _sample_layout(rng, max_objects)
    objects = tuple(_to_object(p, size) for p in placements)
    captions = _choose_captions(objects, background, rng)
    qa = _choose_questions(objects, background, rng)
    image = _draw(background, placements, size, [seed & (2**64 - 1), size])
    return Scene(seed=seed, image=image, objects=objects, background=background, captions=captions, qa=qa)


def stream_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th scene of ``scene_stream(seed, ...)``, for random access (e.g.
    a map-style dataset). A 63-bit hash, so streams of different seeds do not share scenes
    and never collide with small evaluation seeds like ``range(1000)`` in practice."""
    digest = hashlib.blake2b(f"blip-scenes/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def scene_stream(seed: int, size: int = 384, max_objects: int = 3) -> Iterator[Scene]:
    """Endless, deterministic stream of scenes: ``render(stream_seed(seed, i), size, max_objects)``
    for i = 0, 1, 2, ..."""
    index = 0
    while True:
        yield render(stream_seed(seed, index), size, max_objects)
        index += 1


# --------------------------------------------------------------------------------------------
# Web captions (CapFilt)
# --------------------------------------------------------------------------------------------


def _decorate(text: str, rng: random.Random) -> str:
    return rng.choice(_WEB_PREFIXES) + text + rng.choice(_WEB_SUFFIXES)


def _corrupt(kind: str, group: _Group, scene: Scene, rng: random.Random) -> _Group | None:
    """``group`` with one attribute changed so the phrase is false for ``scene``; None if the
    scene leaves no false value for that attribute."""
    pairs = Counter((o.colour, o.shape) for o in scene.objects)
    if kind == "wrong_colour":
        options = [c for c in COLOURS if (c, group.shape) not in pairs]
        return _Group(group.count, rng.choice(options), group.shape, group.size) if options else None
    if kind == "wrong_shape":
        options = [s for s in SHAPES if (group.colour, s) not in pairs]
        return _Group(group.count, group.colour, rng.choice(options), group.size) if options else None
    if kind == "wrong_count":
        # Groups hold every object of their key, so any other count is false.
        top = min(len(NUMBER_WORDS) - 1, max(4, group.count + 2))
        options = [n for n in range(1, top + 1) if n != group.count]
        return _Group(rng.choice(options), group.colour, group.shape, group.size)
    raise ValueError(kind)


def _attribute_noise(kind: str, scene: Scene, rng: random.Random) -> str | None:
    """A decorated description with one false attribute, or None if ``kind`` is impossible."""
    groups = _groups(scene.objects, with_size=rng.random() < 0.5)
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


def _web_text(groups: list[_Group], background: str | None) -> str:
    things = _list_phrase(groups)
    return _WEB_BACKGROUND.format(things=things, background=background) if background else things


def _clean_web_text(scene: Scene, rng: random.Random) -> str:
    """A true text: one of the references, or a (possibly partial) group list, decorated."""
    r = rng.random()
    if r < 0.4:
        caption = rng.choice(scene.captions)
        # "photo of there is ..." would be a style no real alt-text has.
        return caption if caption.startswith("there ") else _decorate(caption, rng)
    groups = _groups(scene.objects, with_size=rng.random() < 0.5)
    if r < 0.7:  # "sometimes shorter": one group, still exactly counted
        groups = [rng.choice(groups)]
    return _decorate(_web_text(groups, scene.background if rng.random() < 0.5 else None), rng)


_FUNCTION_WORDS = frozenset({"a", "an", "and", "the", "at", "on", "in", "with", "there", "is", "are"})


def _fragment(scene: Scene, rng: random.Random) -> str:
    """1-3 consecutive words of a reference caption that name no shape: a truncated piece,
    never a description of the scene. At least one word is a content word, so that fragments
    are not just "a" or "and"."""
    shape_words = set(SHAPES) | set(_PLURALS.values())
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


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def _template_words(template: str) -> list[str]:
    return split_words(re.sub(r"\{\w+\}", " ", template))


def _build_vocabulary() -> tuple[str, ...]:
    fixed = chain(
        _CAPTION_TEMPLATES,
        _VERBS,
        _ARTICLES,
        _JOINERS,
        (_Q_BACKGROUND, _Q_COLOUR, _Q_SHAPE, _Q_SIZE, _Q_WHERE, _Q_COUNT, _Q_EXIST),
        _ANSWERS_YES_NO,
        (_REF_OBJECT_AT, _REF_COLOUR_OBJECT, _REF_THING, _COUNT_OBJECTS, _COUNT_COLOUR_OBJECTS),
        _WEB_PREFIXES,
        _WEB_SUFFIXES,
        (_WEB_BACKGROUND,),
        _UNRELATED,
        SHAPES,
        _PLURALS.values(),
        COLOURS,
        BACKGROUNDS,
        SIZES,
        POSITIONS,
        _POSITION_PHRASES.values(),
        NUMBER_WORDS,
        "0123456789",  # every digit, so any file-name number tokenizes
    )
    return tuple(sorted({w for text in fixed for w in _template_words(text)}))


VOCABULARY: tuple[str, ...] = _build_vocabulary()
