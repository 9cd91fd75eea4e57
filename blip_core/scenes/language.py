"""What is true of a scene, in words: its reference captions and its question/answer pairs."""

from __future__ import annotations

import random
import re
from collections import Counter

from blip_core.scenes.phrases import Group, article, group_objects, join, list_phrase
from blip_core.scenes.world import NUMBER_WORDS, SHAPES, SIZES, SceneObject, plural, position_phrase

# Reference captions longer than this are avoided (always possible for max_objects <= 3).
MAX_CAPTION_WORDS = 20

# Templates. VOCABULARY is derived from TEXTS below, so keep every fixed word in a constant.
_CAPTION_TEMPLATES = (
    "{sized} on a {background} background",
    "{plain}",
    "a {background} background with {plain}",
    "{positional}",
    "there {verb} {sized}",
)
_VERBS = ("is", "are")

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

# Every fixed text written here (VOCABULARY is built from the TEXTS of each module).
TEXTS: tuple[str, ...] = (
    *_CAPTION_TEMPLATES,
    *_VERBS,
    _Q_BACKGROUND, _Q_COLOUR, _Q_SHAPE, _Q_SIZE, _Q_WHERE, _Q_COUNT, _Q_EXIST,
    *_ANSWERS_YES_NO,
    _REF_OBJECT_AT, _REF_COLOUR_OBJECT, _REF_THING, _COUNT_OBJECTS, _COUNT_COLOUR_OBJECTS,
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# Clean captions
# --------------------------------------------------------------------------------------------


def _caption_candidates(objects: tuple[SceneObject, ...], background: str) -> list[str]:
    """One caption per template in ``_CAPTION_TEMPLATES``, each mentioning every object."""
    sized = group_objects(objects, with_size=True)
    fields = {
        "sized": list_phrase(sized),
        "plain": list_phrase(group_objects(objects, with_size=False)),
        # Positional captions list objects one by one: a position belongs to a single object.
        "positional": join([f"{Group(1, o.colour, o.shape).phrase()} {position_phrase(o.position)}" for o in objects]),
        "verb": _VERBS[0] if sized[0].count == 1 else _VERBS[1],  # agrees with the first item
        "background": background,
    }
    return [t.format(**fields) for t in _CAPTION_TEMPLATES]


def choose_captions(objects: tuple[SceneObject, ...], background: str, rng: random.Random) -> tuple[str, ...]:
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
        return _Q_EXIST.format(thing=f"{article(words[0])} {' '.join(words)}")

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
    for a, b in zip(first[0], second[0], strict=False):  # the longer list's tail is dropped
        out += [(a, first[1]), (b, second[1])]
    return out


# Each question template and its family; a question's family is the template it fills. The
# background question comes first because the colour template would match it too.
_TEMPLATE_KINDS = {
    _Q_BACKGROUND: "background",
    _Q_COLOUR: "colour",
    _Q_SHAPE: "shape",
    _Q_SIZE: "size",
    _Q_WHERE: "position",
    _Q_COUNT: "count",
    _Q_EXIST: "existence",
}
_KIND_PATTERNS = [(re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t))), kind) for t, kind in _TEMPLATE_KINDS.items()]
QUESTION_KINDS: tuple[str, ...] = tuple(sorted(_TEMPLATE_KINDS.values()))


def question_kind(question: str) -> str:
    """The family (one of ``QUESTION_KINDS``) of a question this world asks; ValueError otherwise."""
    for pattern, kind in _KIND_PATTERNS:
        if pattern.fullmatch(question):
            return kind
    raise ValueError(f"not a question of the scene world: {question!r}")


def choose_questions(
    objects: tuple[SceneObject, ...], background: str, rng: random.Random
) -> tuple[tuple[str, str], ...]:
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
