"""Frozen dataclass configs for the BLIP model and its presets.

A config describes an artefact: the same config always builds the same parameter shapes, and
it is saved next to the weights (``config.json``) so a checkpoint rebuilds itself.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping

from blip_core.errors import CheckpointError

TASKS = ("caption", "vqa", "match")


@dataclass(frozen=True)
class VisionConfig:
    """ViT image encoder: pre-norm blocks, fused qkv, final norm on all tokens (timm / BLIP)."""

    image_size: int = 384
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    eps: float = 1e-6  # BLIP's timm ViT; transformers' BlipVisionConfig uses 1e-5
    clip: bool = False  # CLIP's ViT (BLIP-2's ViT-L/14 variant): no patch bias, a norm before the blocks, QuickGELU

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + 1  # patches + CLS


@dataclass(frozen=True)
class TextConfig:
    """BERT-style text stack. ``dec_id``/``enc_id`` are the ids of ``[DEC]`` (bos) and ``[ENC]``:
    the WordPiece vocab size and the next id, i.e. the last two rows of the embeddings."""

    vocab_size: int = 30524
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    eps: float = 1e-12
    pad_id: int = 0
    cls_id: int = 101
    sep_id: int = 102  # also the end-of-sentence token
    dec_id: int = 30522
    enc_id: int = 30523


@dataclass(frozen=True)
class BlipConfig:
    """A whole model. ``tasks`` decides which parts exist:

    - ``caption``: ``text_decoder`` (causal, cross-attends to the image) with the LM head;
    - ``vqa``: ``text_encoder`` (question, cross-attends to the image) + ``answer_decoder``
      (causal, cross-attends to the question states);
    - ``match``: ``text_encoder`` + ``vision_proj``/``text_proj`` (ITC) + ``itm_head`` (ITM).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tasks: tuple[str, ...] = ("caption",)
    embed_dim: int = 256  # ITC projection size

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        object.__setattr__(self, "tasks", tuple(t for t in TASKS if t in self.tasks))

    @property
    def has_text_encoder(self) -> bool:
        return "vqa" in self.tasks or "match" in self.tasks

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "", key: str = "") -> "BlipConfig":
        """The inverse of ``to_dict``, for a dict read from a file: every field is checked
        (``checked_config``). Errors name the file (``where``, e.g. ``".../config.json: "``) and
        the field under ``key``, the dict's place in the file (e.g. ``"blipcam."``)."""
        d = as_object(d, where + (key.rstrip(".") or "the config"))
        values: dict[str, Any] = {"embed_dim": d.get("embed_dim", 256)}
        for part in ("vision", "text"):
            sub = as_object(d.get(part, MISSING), f"{where}{key}{part}")
            unknown = sorted(set(sub) - {f.name for f in fields(_PARTS[part])})
            if unknown:
                raise CheckpointError(f"{where}{key}{part} has unknown fields {', '.join(map(str, unknown))}; "
                                      "was it written by another program?")
            values.update({f"{part}.{k}": v for k, v in sub.items()})
        return checked_config(values, d.get("tasks", MISSING), lambda name: key + name, where)

    def with_tasks(self, *tasks: str) -> "BlipConfig":
        return replace(self, tasks=tuple(tasks))


VISION_PRESETS = {
    "base": VisionConfig(),
    "large": VisionConfig(width=1024, layers=24, heads=16, mlp_dim=4096),
    # small presets for the scene world, tests and CPU training
    "small": VisionConfig(image_size=128, patch_size=16, width=256, layers=6, heads=4, mlp_dim=1024),
    "mini": VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=4, mlp_dim=512),
    "tiny": VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64),
}

TEXT_PRESETS = {
    "base": TextConfig(),
    "small": TextConfig(width=256, layers=4, heads=4, mlp_dim=1024, max_positions=64),
    "mini": TextConfig(width=128, layers=4, heads=4, mlp_dim=512, max_positions=64),
    "tiny": TextConfig(width=32, layers=2, heads=2, mlp_dim=64, max_positions=64),
}


def preset(name: str, tasks: tuple[str, ...] = ("caption",), **text_overrides) -> BlipConfig:
    """``base``/``large`` = BLIP ViT-B/16 / ViT-L/16 with BERT-base text; ``small``/``tiny`` for
    CPU training and tests. ``text_overrides`` set vocabulary ids for a custom tokenizer."""
    if name not in VISION_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(VISION_PRESETS)}")
    text = TEXT_PRESETS.get(name, TEXT_PRESETS["base"])
    return BlipConfig(vision=VISION_PRESETS[name], text=replace(text, **text_overrides), tasks=tasks)


# ------------------------------------------------------------------ validation
# Every field a checkpoint's config sets is checked against these bounds before anything is built
# from it: a config.json claiming image_size 1e6 made resample_pos_embed ask for 8 TB, layers 1e9
# built modules without end, heads 0 divided by zero. Every real BLIP fits with room (ViT-B/L:
# width 768/1024, 12/24 layers, 12/16 heads, mlp 3072/4096, images 224-480 px in 16 px patches;
# BERT-base text: width 768, 12 layers, vocab 30524, 512 positions), and so do the tests' and the
# scene world's small models (width 32, 2 layers, 16-32 px images in 8 px patches, 2 heads).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "vision.image_size": (16, 1024),
    "vision.patch_size": (2, 64),
    "vision.width": (8, 4096),
    "vision.layers": (1, 64),
    "vision.heads": (1, 128),
    "vision.mlp_dim": (8, 32768),
    "text.vocab_size": (8, 1_000_000),
    "text.width": (8, 4096),
    "text.layers": (1, 64),
    "text.heads": (1, 128),
    "text.mlp_dim": (8, 32768),
    "text.max_positions": (8, 8192),
    "text.pad_id": (0, 999_999),
    "text.cls_id": (0, 999_999),
    "text.sep_id": (0, 999_999),
    "text.dec_id": (0, 999_999),
    "text.enc_id": (0, 999_999),
    "embed_dim": (1, 4096),
}
EPS_BOUNDS = (0.0, 0.1)  # LayerNorm epsilon, exclusive of 0 (BLIP: 1e-6 ViT, 1e-12 BERT; transformers 1e-5)
MAX_GRID = 64  # patches per side (image_size / patch_size): the ViT runs grid**2 + 1 tokens (BLIP: 24-30)
TOKEN_IDS = ("text.pad_id", "text.sep_id", "text.dec_id", "text.enc_id")  # rows of the word embeddings
_PARTS = {"vision": VisionConfig, "text": TextConfig}
FIELDS = tuple(f"{part}.{f.name}" for part, cls in _PARTS.items() for f in fields(cls)) + ("embed_dim",)
MISSING = object()
OPTIONAL = {"vision.clip": False}  # fields added later: a file written before them means their default


def invalid(name: str, expected: str, value: Any) -> CheckpointError:
    """The error for field ``name`` holding ``value`` (or missing) where ``expected`` was due."""
    if value is MISSING:
        return CheckpointError(f"{name} is missing; it must be {expected}")
    return CheckpointError(f"{name} must be {expected}, got {reprlib.repr(value)}")


def as_object(value: Any, name: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object (a dict), else a CheckpointError naming ``name``."""
    if not isinstance(value, Mapping):
        raise invalid(name, "an object ({...})", value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(field_name: str, value: Any, name: str) -> None:
    if field_name in OPTIONAL:
        if not isinstance(value, bool):
            raise invalid(name, "true or false", value)
        return
    if field_name.endswith(".eps"):
        lo, hi = EPS_BOUNDS
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and lo < value <= hi):
            raise invalid(name, f"a number in ({lo:g}, {hi:g}]", value)
        return
    lo, hi = INT_BOUNDS[field_name]
    if not (_is_int(value) and lo <= value <= hi):
        raise invalid(name, f"an integer in [{lo}, {hi}]", value)


def _check_tasks(tasks: Any, name: str) -> tuple[str, ...]:
    ok = isinstance(tasks, (list, tuple)) and tasks and all(isinstance(t, str) and t in TASKS for t in tasks)
    if not ok:
        raise invalid(name, f"a non-empty list of {', '.join(TASKS)}", tasks)
    return tuple(tasks)


def _check_shapes(v: Mapping[str, Any], name: Callable[[str], str], where: str) -> None:
    """The relations between fields: heads divide widths, patches tile the image, token ids fit."""
    for part in ("vision", "text"):
        width, heads = v[f"{part}.width"], v[f"{part}.heads"]
        if width % heads:
            raise CheckpointError(f"{where}{name(part + '.width')} ({width}) must be a multiple of "
                                  f"{name(part + '.heads')} ({heads})")
    size, patch = v["vision.image_size"], v["vision.patch_size"]
    if size % patch or size // patch > MAX_GRID:
        raise CheckpointError(f"{where}{name('vision.image_size')} ({size}) must be a multiple of "
                              f"{name('vision.patch_size')} ({patch}) with at most {MAX_GRID} patches a side")
    for token in TOKEN_IDS:
        if v[token] >= v["text.vocab_size"]:
            raise CheckpointError(f"{where}{name(token)} ({v[token]}) must be below {name('text.vocab_size')} "
                                  f"({v['text.vocab_size']})")


def checked_config(values: Mapping[str, Any], tasks: Any, name: Callable[[str], str] = str,
                   where: str = "") -> BlipConfig:
    """The one way a config read from a file becomes a ``BlipConfig``. ``values`` maps every field
    of :data:`FIELDS` (``"vision.width"``, ``"text.vocab_size"``, ``"embed_dim"``, ...) to the
    value read; ``name(field)`` is that value's name in the file (e.g. ``vision_config.hidden_size``)
    and ``where`` the file (``".../config.json: "``), for the error. Types and bounds are checked
    field by field, then their relations; the first problem is a one-line CheckpointError naming
    the field."""
    values = {**OPTIONAL, **values}
    for field_name in FIELDS:
        _check_field(field_name, values.get(field_name, MISSING), where + name(field_name))
    tasks = _check_tasks(tasks, where + name("tasks"))
    _check_shapes(values, name, where)
    part = {p: {f.name: values[f"{p}.{f.name}"] for f in fields(cls)} for p, cls in _PARTS.items()}
    return BlipConfig(vision=VisionConfig(**part["vision"]), text=TextConfig(**part["text"]), tasks=tasks,
                      embed_dim=values["embed_dim"])
