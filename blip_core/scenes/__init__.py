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

Modules: ``world`` (attributes, SceneObject, Scene), ``layout`` (sampling where objects go),
``drawing`` (pixels), ``phrases`` (noun phrases), ``language`` (captions, questions), ``web``
(noisy alt-texts), ``vocabulary`` (tokens), ``rendering`` (seed -> Scene, streams), ``truth``
(is a text true of a scene?).
"""

from blip_core.scenes.language import QUESTION_KINDS, question_kind
from blip_core.scenes.rendering import render, scene_stream, stream_seed
from blip_core.scenes.vocabulary import VOCABULARY, split_words
from blip_core.scenes.web import NOISE_KINDS, web_caption
from blip_core.scenes.world import (
    BACKGROUNDS,
    COLOURS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    plural,
    position_phrase,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
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
