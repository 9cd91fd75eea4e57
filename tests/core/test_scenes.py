"""Tests of the procedural scene world (blip_core.scenes).

Texts are checked against ``Scene.objects`` by a parser written here, independently of the
templates in the module: every noun phrase a text contains ("two small red circles",
"a blue square on the left", "a grey background") is resolved against the objects.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest

from blip_core.scenes import (
    BACKGROUNDS,
    COLOURS,
    NOISE_KINDS,
    POSITIONS,
    QUESTION_KINDS,
    SHAPES,
    VOCABULARY,
    Scene,
    SceneObject,
    question_kind,
    render,
    scene_stream,
    split_words,
    stream_seed,
    web_caption,
)

# ------------------------------------------------------------------------------------------
# An independent reading of the texts
# ------------------------------------------------------------------------------------------

PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star", "crosses": "cross",
          "diamonds": "diamond"}
NUMBERS = {"a": 1, "an": 1, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9}
NUMBER_OF = {v: k for k, v in NUMBERS.items() if k not in ("a", "an")}
WHERE = {
    "at the top left": "top left", "at the top right": "top right", "at the bottom left": "bottom left",
    "at the bottom right": "bottom right", "at the top": "top", "at the bottom": "bottom",
    "on the left": "left", "on the right": "right", "in the middle": "middle",
}  # fmt: skip

_alt = lambda words: "|".join(sorted(map(re.escape, words), key=len, reverse=True))  # noqa: E731
SHAPE_RE = _alt(list(SHAPES) + list(PLURAL))
COLOUR_RE = _alt(COLOURS)
CLAIM_RE = re.compile(
    rf"\b({_alt(NUMBERS)}) (?:(small|large) )?({COLOUR_RE}) ({SHAPE_RE})\b(?: ({_alt(WHERE)})\b)?"
)
BACKGROUND_RE = re.compile(r"\b(\w+) background\b")


def singular(word: str) -> str:
    return PLURAL.get(word, word)


def claims(text: str) -> list[tuple[int, str | None, str, str, str | None]]:
    """(count, size, colour, shape, position) of every noun phrase about objects."""
    out = []
    for m in CLAIM_RE.finditer(text):
        count, size, colour, shape, where = m.groups()
        out.append((NUMBERS[count], size, colour, singular(shape), WHERE[where] if where else None))
    return out


def matching(scene: Scene, size: str | None, colour: str | None, shape: str | None) -> list[SceneObject]:
    return [
        o for o in scene.objects
        if (size is None or o.size == size) and (colour is None or o.colour == colour)
        and (shape is None or o.shape == shape)
    ]  # fmt: skip


def claim_true(scene: Scene, claim) -> bool:
    count, size, colour, shape, where = claim
    if where is not None:  # a positioned phrase speaks of the one object in that cell
        hits = [o for o in matching(scene, size, colour, shape) if o.position == where]
        return count == 1 and len(hits) == 1
    return len(matching(scene, size, colour, shape)) == count


def covered(scene: Scene, text: str) -> set[SceneObject]:
    objs: set[SceneObject] = set()
    for _count, size, colour, shape, where in claims(text):
        objs.update(o for o in matching(scene, size, colour, shape) if where is None or o.position == where)
    return objs


def background_true(scene: Scene, text: str) -> bool:
    return all(m.group(1) == scene.background for m in BACKGROUND_RE.finditer(text))


def resolve(scene: Scene, ref: str) -> SceneObject:
    """The single object a question's reference ("the red circle", "the object on the left") names."""
    m = re.fullmatch(rf"the object ({_alt(WHERE)})", ref)
    if m:
        hits = [o for o in scene.objects if o.position == WHERE[m.group(1)]]
    elif m := re.fullmatch(rf"the ({COLOUR_RE}) object", ref):
        hits = matching(scene, None, m.group(1), None)
    elif m := re.fullmatch(rf"the (?:(small|large) )?(?:({COLOUR_RE}) )?({SHAPE_RE})", ref):
        hits = matching(scene, m.group(1), m.group(2), m.group(3))
    else:
        raise AssertionError(f"unparsed reference {ref!r}")
    assert len(hits) == 1, f"{ref!r} is ambiguous or empty in {scene.objects}"
    return hits[0]


def expected_answer(scene: Scene, question: str) -> str:
    if question == "what colour is the background?":
        return scene.background
    if m := re.fullmatch(r"what colour is (.+)\?", question):
        return resolve(scene, m.group(1)).colour
    if m := re.fullmatch(r"what shape is (.+)\?", question):
        return resolve(scene, m.group(1)).shape
    if m := re.fullmatch(r"is (.+) large or small\?", question):
        return resolve(scene, m.group(1)).size
    if m := re.fullmatch(r"where is (.+)\?", question):
        return resolve(scene, m.group(1)).position
    if m := re.fullmatch(r"how many (.+) are there\?", question):
        thing = m.group(1)
        if thing == "objects":
            n = len(scene.objects)
        elif c := re.fullmatch(rf"({COLOUR_RE}) objects", thing):
            n = len(matching(scene, None, c.group(1), None))
        else:
            c = re.fullmatch(rf"(?:({COLOUR_RE}) )?({SHAPE_RE})", thing)
            assert c and c.group(2) in PLURAL, thing
            n = len(matching(scene, None, c.group(1), singular(c.group(2))))
        return NUMBER_OF[n]
    if m := re.fullmatch(rf"is there an? (?:(small|large) )?(?:({COLOUR_RE}) )?({SHAPE_RE})\?", question):
        return "yes" if matching(scene, m.group(1), m.group(2), m.group(3)) else "no"
    raise AssertionError(f"unparsed question {question!r}")


# ------------------------------------------------------------------------------------------
# Shared scenes (texts do not depend on the pixel size, so tiny images keep this fast)
# ------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def tiny_scenes(n: int = 500) -> tuple[Scene, ...]:
    return tuple(render(seed, size=32) for seed in range(n))


def web_draws(noise_rate: float, n_scenes: int = 200, per_scene: int = 10) -> list[tuple[Scene, str, str]]:
    rng = random.Random(1234)
    return [(s, *web_caption(s, noise_rate, rng)) for s in tiny_scenes()[:n_scenes] for _ in range(per_scene)]


# ------------------------------------------------------------------------------------------
# Determinism and structure
# ------------------------------------------------------------------------------------------


def test_render_is_deterministic():
    for seed in (0, 7, 123456789, -5):
        a, b = render(seed, 128), render(seed, 128)
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.objects, a.captions, a.qa, a.background) == (b.objects, b.captions, b.qa, b.background)


def test_different_seeds_differ():
    scenes = [render(seed, 64) for seed in range(20)]
    assert len({s.image.tobytes() for s in scenes}) == 20
    assert len({s.captions for s in scenes}) >= 18


def test_content_does_not_depend_on_resolution():
    small, big = render(42, 96), render(42, 384)
    assert (small.captions, small.qa, small.background) == (big.captions, big.qa, big.background)
    assert [(o.shape, o.colour, o.size, o.position) for o in small.objects] == [
        (o.shape, o.colour, o.size, o.position) for o in big.objects
    ]


def test_image_and_objects_are_well_formed():
    for seed in range(200):
        s = render(seed, 96, max_objects=4)
        assert s.image.mode == "RGB" and s.image.size == (96, 96)
        assert 1 <= len(s.objects) <= 4
        assert s.background in BACKGROUNDS
        cells = [o.cell for o in s.objects]
        assert len(set(cells)) == len(cells)
        for o in s.objects:
            assert o.shape in SHAPES and o.colour in COLOURS and o.size in ("small", "large")
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            # The box centre lies well inside the named grid cell.
            cx, cy = o.centre
            assert (int(cy // 32), int(cx // 32)) == o.cell
            assert POSITIONS[o.cell[0] * 3 + o.cell[1]] == o.position
        for i, a in enumerate(s.objects):  # no overlap at all
            for b in s.objects[i + 1 :]:
                assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]


def test_sizes_are_clearly_different():
    widths = {"small": [], "large": []}
    for s in tiny_scenes()[:300]:
        for o in render(s.seed, 300).objects:
            widths[o.size].append(o.box[2] - o.box[0])
    assert min(widths["large"]) > 1.6 * max(widths["small"])


def test_max_objects_is_honoured_and_validated():
    assert all(len(render(seed, 32, max_objects=1).objects) == 1 for seed in range(50))
    assert max(len(render(seed, 32, max_objects=6).objects) for seed in range(100)) == 6
    for bad in (dict(max_objects=0), dict(max_objects=10), dict(size=8)):
        with pytest.raises(ValueError):
            render(0, **{"size": 64, **bad})
    with pytest.raises(ValueError):
        render(1.5, 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        web_caption(render(0, 32), 1.5, random.Random(0))
    # numpy integers (e.g. dataset indices) are fine and give the same scene.
    assert render(np.int64(17), 32).captions == render(17, 32).captions


# ------------------------------------------------------------------------------------------
# Pixels
# ------------------------------------------------------------------------------------------


def nearest(rgb, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: sum((int(a) - b) ** 2 for a, b in zip(rgb, palette[name])))


def test_object_colour_is_at_its_box_centre_and_background_around():
    for seed in range(150):
        s = render(seed, 128)
        pixels = np.asarray(s.image)
        for o in s.objects:
            x, y = o.centre
            assert nearest(pixels[y, x], COLOURS) == o.colour, (seed, o)
            # Shapes are filled, so the 3x3 neighbourhood of the centre has the colour too.
            patch = pixels[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3)
            assert all(nearest(p, COLOURS) == o.colour for p in patch)
        # Corners of the image are never covered (objects keep a margin from cell borders).
        for x, y in ((0, 0), (127, 0), (0, 127), (127, 127)):
            assert nearest(pixels[y, x], BACKGROUNDS) == s.background


def test_image_is_antialiased_and_textured():
    s = render(3, 128)
    pixels = np.asarray(s.image).reshape(-1, 3)
    # Texture and edge blending: far more distinct colours than palette entries.
    assert len(np.unique(pixels, axis=0)) > 50


def test_render_is_fast():
    render(0, 128), render(0, 384)  # warm up
    for size, budget_ms in ((128, 20), (384, 50)):
        start = time.perf_counter()
        for seed in range(20):
            render(seed, size)
        assert (time.perf_counter() - start) / 20 * 1000 < budget_ms


# ------------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------------


def test_captions_are_true_and_mention_every_object():
    for s in tiny_scenes():
        assert 3 <= len(s.captions) <= 5
        assert len(set(s.captions)) == len(s.captions)
        for c in s.captions:
            assert c == c.lower() and c == c.strip() and not c.endswith(".")
            assert len(c.split()) <= 20
            assert not re.search(r"\b(picture|photo|image) of\b", c)
            found = claims(c)
            assert found and all(claim_true(s, cl) for cl in found), (c, s.objects)
            assert covered(s, c) == set(s.objects), (c, s.objects)
            assert background_true(s, c)


def test_crowded_scenes_have_true_texts():
    """Up to nine objects (the whole grid): captions, answers and noisy texts stay correct."""
    rng = random.Random(5)
    for seed in range(60):
        s = render(seed, 32, max_objects=9)
        for c in s.captions:
            assert all(claim_true(s, cl) for cl in claims(c)) and covered(s, c) == set(s.objects), c
        for q, a in s.qa:
            assert expected_answer(s, q) == a, (q, a)
        for _ in range(10):
            text, kind = web_caption(s, 0.5, rng)
            found = claims(text)
            if kind == "clean":
                assert found and all(claim_true(s, cl) for cl in found) and background_true(s, text), text
            elif kind in ("wrong_colour", "wrong_shape", "wrong_count"):
                assert not all(claim_true(s, cl) for cl in found) or not background_true(s, text), text


def test_captions_vary_in_phrasing():
    openings = Counter(c.split()[0] for s in tiny_scenes()[:200] for c in s.captions)
    assert len(openings) >= 4
    mention_background = sum(" background" in c for s in tiny_scenes()[:200] for c in s.captions)
    mention_position = sum(any(w in c for w in WHERE) for s in tiny_scenes()[:200] for c in s.captions)
    total = sum(len(s.captions) for s in tiny_scenes()[:200])
    assert 0.2 < mention_background / total < 0.7
    assert 0.1 < mention_position / total < 0.5


# ------------------------------------------------------------------------------------------
# Questions
# ------------------------------------------------------------------------------------------


def test_answers_match_an_independent_reading_of_the_scene():
    for s in tiny_scenes():
        assert 5 <= len(s.qa) <= 10
        questions = [q for q, _ in s.qa]
        assert len(set(questions)) == len(questions)
        for q, a in s.qa:
            assert q.endswith("?") and q == q.lower()
            assert 1 <= len(a.split()) <= 2
            assert expected_answer(s, q) == a, (q, a, s.objects)


def test_question_kinds_and_answers_are_balanced():
    qa = [pair for s in tiny_scenes() for pair in s.qa]
    kinds = Counter(q.split()[0] + " " + q.split()[1] for q, _ in qa)
    for kind in ("what colour", "what shape", "how many", "is there", "where is"):
        assert kinds[kind] > 0.05 * len(qa), kinds
    assert any(q.endswith("large or small?") for q, _ in qa)
    yes_no = Counter(a for q, a in qa if q.startswith("is there"))
    assert 0.4 < yes_no["yes"] / (yes_no["yes"] + yes_no["no"]) < 0.6
    sizes = Counter(a for q, a in qa if q.endswith("large or small?"))
    assert 0.35 < sizes["small"] / (sizes["small"] + sizes["large"]) < 0.65
    answers = Counter(a for _, a in qa)
    for word in (*COLOURS, *SHAPES, *POSITIONS, *BACKGROUNDS, "zero", "one", "two", "three"):
        assert answers[word] > 0, word
    # No single answer dominates, so priors alone cannot reach a good accuracy.
    assert answers.most_common(1)[0][1] < 0.2 * len(qa)


def test_every_question_has_a_kind():
    kinds = Counter(question_kind(q) for s in tiny_scenes() for q, _ in s.qa)
    assert set(kinds) == set(QUESTION_KINDS)
    assert question_kind("is the circle large or small?") == "size"
    with pytest.raises(ValueError, match="not a question of the scene world"):
        question_kind("what is the meaning of this?")


def test_questions_need_disambiguation_sometimes():
    """Scenes with two objects of one shape exist, and then 'the <shape>' is never used."""
    seen = 0
    for s in tiny_scenes():
        shapes = Counter(o.shape for o in s.objects)
        for shape, n in shapes.items():
            if n > 1:
                seen += 1
                assert not any(re.search(rf"\bthe {shape}\?", q) for q, _ in s.qa)
    assert seen > 30


# ------------------------------------------------------------------------------------------
# World variety
# ------------------------------------------------------------------------------------------


def test_attribute_distributions_are_not_degenerate():
    objects = [o for s in tiny_scenes() for o in s.objects]
    for attr, values in (("shape", SHAPES), ("colour", COLOURS), ("size", ("small", "large")), ("position", POSITIONS)):
        counts = Counter(getattr(o, attr) for o in objects)
        assert set(counts) == set(values)
        assert min(counts.values()) > 0.5 * len(objects) / len(values), (attr, counts)
    n_objects = Counter(len(s.objects) for s in tiny_scenes())
    assert set(n_objects) == {1, 2, 3} and min(n_objects.values()) > 100
    backgrounds = Counter(s.background for s in tiny_scenes())
    assert set(backgrounds) == set(BACKGROUNDS) and min(backgrounds.values()) > 100
    # Repeats happen (so counting beyond one is learnable) but are not the rule.
    repeated = sum(any(n > 1 for n in Counter((o.colour, o.shape) for o in s.objects).values()) for s in tiny_scenes())
    assert 0.05 * 500 < repeated < 0.4 * 500
    # Distinct content (single-object scenes may repeat: there are only ~2000 of them).
    assert len({(s.background, tuple((o.shape, o.colour, o.size, o.position) for o in s.objects))
                for s in tiny_scenes()}) > 480


# ------------------------------------------------------------------------------------------
# Web captions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_rate", [0.0, 0.3, 0.8, 1.0])
def test_noise_rate_is_honoured(noise_rate):
    draws = web_draws(noise_rate)
    assert len(draws) == 2000
    noisy = sum(kind != "clean" for _, _, kind in draws) / len(draws)
    assert abs(noisy - noise_rate) < 0.04
    if noise_rate == 1.0:
        kinds = Counter(kind for _, _, kind in draws)
        assert set(kinds) == set(NOISE_KINDS) - {"clean"}
        assert min(kinds.values()) > 0.15 * len(draws)


def test_web_caption_is_deterministic_given_the_rng():
    s = render(5, 32)
    a = [web_caption(s, 0.5, random.Random(9)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_clean_web_captions_are_true():
    draws = [(s, t) for s, t, kind in web_draws(0.0)]
    styled = 0
    for s, text in draws:
        found = claims(text)
        assert found and all(claim_true(s, c) for c in found), (text, s.objects)
        assert background_true(s, text)
        styled += text not in s.captions
    # Web style: most texts are not verbatim references.
    assert styled > 0.5 * len(draws)


def test_noisy_web_captions_are_false():
    shape_words = set(SHAPES) | set(PLURAL)
    for s, text, kind in web_draws(1.0):
        found = claims(text)
        if kind == "wrong_colour":
            # A colour absent from the scene, or attached to the wrong shape, or a wrong background.
            bad_colour = any(not matching(s, None, colour, shape) for _, _, colour, shape, _ in found)
            assert bad_colour or not background_true(s, text), (text, s.objects)
        elif kind == "wrong_shape":
            assert any(not matching(s, None, colour, shape) for _, _, colour, shape, _ in found), (text, s.objects)
        elif kind == "wrong_count":
            assert any(matching(s, size, colour, shape) and not claim_true(s, (n, size, colour, shape, where))
                       for n, size, colour, shape, where in found), (text, s.objects)  # fmt: skip
        elif kind == "unrelated":
            assert not found and not shape_words.intersection(split_words(text))
            assert not set(split_words(text)) & (set(COLOURS) | set(BACKGROUNDS))
        elif kind == "fragment":
            assert 1 <= len(text.split()) <= 3 and not shape_words.intersection(text.split())
            assert any(f" {text} " in f" {c.replace(',', '')} " for c in s.captions)
        if kind != "clean":
            assert text not in s.captions


def test_unrelated_texts_are_varied():
    texts = {t for _, t, kind in web_draws(1.0) if kind == "unrelated"}
    assert len(texts) >= 30
    assert any(re.search(r"\d", t) for t in texts)


# ------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------


def test_vocabulary_is_sorted_small_and_lower_case():
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    assert len(VOCABULARY) < 400
    assert all(w == w.lower() and " " not in w for w in VOCABULARY)
    assert set("0123456789") <= set(VOCABULARY)
    assert split_words("img_0231.jpg") == ["img", "_", "0", "2", "3", "1", ".", "jpg"]


def test_vocabulary_covers_every_text_and_nothing_unused():
    rng = random.Random(0)
    used: set[str] = set()
    crowded = tuple(render(seed, 32, max_objects=9) for seed in range(100))  # counts up to nine
    for s in tiny_scenes() + crowded:
        texts = [*s.captions, *(q for q, _ in s.qa), *(a for _, a in s.qa)]
        texts += [web_caption(s, 0.5, rng)[0] for _ in range(8)]
        for t in texts:
            words = split_words(t)
            assert set(words) <= set(VOCABULARY), (t, set(words) - set(VOCABULARY))
            used.update(words)
    # Every digit is listed on purpose; other words must all be reachable.
    unused = set(VOCABULARY) - used - set("0123456789")
    assert not unused, unused


# ------------------------------------------------------------------------------------------
# Stream
# ------------------------------------------------------------------------------------------


def test_scene_stream_is_endless_deterministic_and_random_access():
    first = [s for _, s in zip(range(5), scene_stream(3, 32))]
    again = [s for _, s in zip(range(5), scene_stream(3, 32))]
    other = [s for _, s in zip(range(5), scene_stream(4, 32))]
    assert [s.seed for s in first] == [s.seed for s in again]
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in again]
    assert len({s.seed for s in first + other}) == 10
    assert [s.seed for s in first] == [stream_seed(3, i) for i in range(5)]
    assert all(s.seed >= 2**20 for s in first)  # far from small evaluation seeds
