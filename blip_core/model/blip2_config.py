"""Frozen dataclass configs of the BLIP-2 family: the Q-Former, the frozen LLMs (OPT, Flan-T5)
and the whole model, with presets of the published shapes and the one checked constructor
(:func:`checked_blip2_config`) through which a config read from a file becomes one.

The image encoder is the MED model's ``VisionConfig`` (BLIP-2's EVA ViT-g/14 is the same
pre-norm ViT with fused qkv, only wider and deeper; its final norm is BLIP-2's ``ln_vision``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Union

from blip_core.errors import CheckpointError
from blip_core.model.config import MAX_GRID, MISSING, OPTIONAL, VisionConfig, as_object, invalid

BLIP2_TASKS = ("caption", "vqa", "match")  # caption/vqa: a model with an LLM; match: the ITM model
LLM_KINDS = ("opt", "t5")


@dataclass(frozen=True)
class QFormerConfig:
    """The Q-Former: a BERT-style post-norm stack whose first ``num_queries`` positions are learned
    queries. Self-attention is shared by queries and text; each has its own FFN; the queries
    cross-attend to the image in layers 0, ``cross_every``, 2 * ``cross_every``, ...

    ``text_input``: the text path exists (word/position embeddings, the text FFN): the ITM model
    and stage-1 training; an inference model with an LLM keeps the query path only."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    cross_every: int = 2
    num_queries: int = 32
    vision_width: int = 1408  # width of what cross-attention reads (the image encoder's)
    text_input: bool = False
    vocab_size: int = 30523  # bert-base-uncased + [DEC] (id 30522)
    max_positions: int = 512
    eps: float = 1e-12
    pad_id: int = 0
    cls_id: int = 101
    sep_id: int = 102
    dec_id: int = 30522

    def has_cross(self, layer: int) -> bool:
        return layer % self.cross_every == 0


@dataclass(frozen=True)
class OptConfig:
    """OPT (decoder-only, learned positions offset by 2, ReLU FFN). ``embed_dim`` is
    transformers' ``word_embed_proj_dim`` (differs from ``width`` only in OPT-350m, which
    projects in and out); the LM head is tied to the word embeddings."""

    vocab_size: int = 50304
    width: int = 2560
    embed_dim: int = 2560
    layers: int = 32
    heads: int = 32
    ffn_dim: int = 10240
    max_positions: int = 2048
    pre_norm: bool = True  # do_layer_norm_before (False only in OPT-350m)
    eps: float = 1e-5
    pad_id: int = 1
    bos_id: int = 2
    eos_id: int = 50118  # "\n": BLIP-2 trains every caption to end with a newline


@dataclass(frozen=True)
class T5Config:
    """T5 v1.1 / Flan-T5 (encoder-decoder, RMS norms, relative position buckets, gated FFN,
    no attention scaling). ``act`` is the gate's activation (BLIP-2 sets exact ``gelu``)."""

    vocab_size: int = 32128
    width: int = 2048  # d_model
    kv_dim: int = 64  # d_kv: per-head width (heads * kv_dim need not equal width)
    heads: int = 32
    ffn_dim: int = 5120
    layers: int = 24
    decoder_layers: int = 24
    buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    gated: bool = True
    act: str = "gelu"  # gelu | gelu_new | relu
    tie_embeddings: bool = False  # the shared embeddings are the LM head (no lm_head of its own)
    scale_outputs: bool = False  # hidden states scaled by width**-0.5 before a tied head (original T5)
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0


LLMConfig = Union[OptConfig, T5Config]
T5_ACTS = ("gelu", "gelu_new", "relu")


@dataclass(frozen=True)
class Blip2Config:
    """A whole BLIP-2 model: image encoder -> ``ln_vision`` (the ViT's final norm) -> Q-Former ->
    either the language projection and a frozen LLM (``llm`` set: caption / vqa) or the ITC/ITM
    heads over a text-reading Q-Former (``llm`` None: match)."""

    vision: VisionConfig = field(default_factory=lambda: EVA_VIT_G)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    llm: LLMConfig | None = field(default_factory=OptConfig)
    embed_dim: int = 256  # ITC features (image_text_hidden_size)
    image_token_id: int | None = None  # transformers' <image> placeholder id, if the LLM vocab has one

    family = "blip2"

    @property
    def llm_kind(self) -> str | None:
        return None if self.llm is None else "opt" if isinstance(self.llm, OptConfig) else "t5"

    @property
    def llm_width(self) -> int:
        """Width of the LLM's input embeddings: what the language projection maps the queries to."""
        if isinstance(self.llm, OptConfig):
            return self.llm.embed_dim
        return self.llm.width

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("match",) if self.llm is None else ("caption", "vqa")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["family"] = self.family
        d["llm_kind"] = self.llm_kind
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "", key: str = "") -> "Blip2Config":
        """The inverse of ``to_dict`` for a dict read from a file, every field checked."""
        d = as_object(d, where + (key.rstrip(".") or "the config"))
        values: dict[str, Any] = {"embed_dim": d.get("embed_dim", MISSING),
                                  "image_token_id": d.get("image_token_id")}
        kind = d.get("llm_kind")
        if kind is not None and kind not in LLM_KINDS:
            raise invalid(f"{where}{key}llm_kind", f"one of {', '.join(LLM_KINDS)} or null", kind)
        for part in ("vision", "qformer", "llm"):
            if part == "llm" and kind is None:
                continue
            sub = as_object(d.get(part, MISSING), f"{where}{key}{part}")
            known = {f.name for f in fields(_part_class(part, kind))}
            unknown = sorted(map(str, set(sub) - known))
            if unknown:
                raise CheckpointError(f"{where}{key}{part} has unknown fields {', '.join(unknown)}; "
                                      "was it written by another program?")
            values.update({f"{part}.{k}": v for k, v in sub.items()})
        return checked_blip2_config(values, kind, lambda n: key + n, where)


def _part_class(part: str, kind: str | None) -> type:
    if part == "llm":
        return OptConfig if kind == "opt" else T5Config
    return {"vision": VisionConfig, "qformer": QFormerConfig}[part]


# ----------------------------------------------------------------------- presets
EVA_VIT_G = VisionConfig(image_size=224, patch_size=14, width=1408, layers=39, heads=16, mlp_dim=6144, eps=1e-6)
OPT_2_7B = OptConfig()
OPT_6_7B = OptConfig(width=4096, embed_dim=4096, ffn_dim=16384)
FLAN_T5_XL = T5Config()
FLAN_T5_XXL = T5Config(width=4096, heads=64, ffn_dim=10240)

PRESETS: dict[str, Blip2Config] = {
    "opt-2.7b": Blip2Config(llm=OPT_2_7B, image_token_id=50265),
    "opt-6.7b": Blip2Config(llm=OPT_6_7B, image_token_id=50265),
    "flan-t5-xl": Blip2Config(llm=FLAN_T5_XL, image_token_id=32100),
    "flan-t5-xxl": Blip2Config(llm=FLAN_T5_XXL, image_token_id=32100),
    "itm-vit-g": Blip2Config(qformer=QFormerConfig(text_input=True), llm=None),
}


def blip2_preset(name: str, **changes) -> Blip2Config:
    """A published shape (``opt-2.7b``, ``opt-6.7b``, ``flan-t5-xl``, ``flan-t5-xxl``,
    ``itm-vit-g``), optionally changed (e.g. ``vision=replace(EVA_VIT_G, image_size=364)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown BLIP-2 preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **changes)


# -------------------------------------------------------------------- validation
# Bounds checked before anything is allocated: every published BLIP-2 fits with room (EVA ViT-g
# 1408 x 39, CLIP ViT-L 1024 x 23; Q-Former BERT-base; OPT up to 66B: width 9216, 64 layers,
# vocab 50304, 2048 positions; Flan-T5-XXL: width 4096, 64 heads, d_ff 10240), and so do the
# tests' tiny models (widths of 16-64, one or two layers).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "vision.image_size": (16, 1024), "vision.patch_size": (2, 64), "vision.width": (8, 8192),
    "vision.layers": (1, 128), "vision.heads": (1, 128), "vision.mlp_dim": (8, 65536),
    "qformer.width": (8, 4096), "qformer.layers": (1, 64), "qformer.heads": (1, 128),
    "qformer.mlp_dim": (8, 32768), "qformer.cross_every": (1, 64), "qformer.num_queries": (1, 512),
    "qformer.vision_width": (8, 8192), "qformer.vocab_size": (8, 1_000_000), "qformer.max_positions": (8, 8192),
    "qformer.pad_id": (0, 999_999), "qformer.cls_id": (0, 999_999), "qformer.sep_id": (0, 999_999),
    "qformer.dec_id": (0, 999_999),
    "opt.vocab_size": (8, 1_000_000), "opt.width": (8, 16384), "opt.embed_dim": (8, 16384),
    "opt.layers": (1, 128), "opt.heads": (1, 256), "opt.ffn_dim": (8, 131072), "opt.max_positions": (8, 32768),
    "opt.pad_id": (0, 999_999), "opt.bos_id": (0, 999_999), "opt.eos_id": (0, 999_999),
    "t5.vocab_size": (8, 1_000_000), "t5.width": (8, 16384), "t5.kv_dim": (1, 1024), "t5.heads": (1, 256),
    "t5.ffn_dim": (8, 131072), "t5.layers": (1, 128), "t5.decoder_layers": (1, 128), "t5.buckets": (1, 1024),
    "t5.max_distance": (1, 65536), "t5.pad_id": (0, 999_999), "t5.eos_id": (0, 999_999),
    "t5.decoder_start_id": (0, 999_999),
    "embed_dim": (1, 4096),
}
EPS_BOUNDS = (0.0, 0.1)


def _check_value(kind_field: str, value: Any, name: str, annotation: str) -> None:
    if annotation == "bool":
        if not isinstance(value, bool):
            raise invalid(name, "true or false", value)
    elif kind_field.endswith(".eps"):
        lo, hi = EPS_BOUNDS
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and lo < value <= hi):
            raise invalid(name, f"a number in ({lo:g}, {hi:g}]", value)
    elif kind_field == "t5.act":
        if value not in T5_ACTS:
            raise invalid(name, f"one of {', '.join(T5_ACTS)}", value)
    else:
        lo, hi = INT_BOUNDS[kind_field]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise invalid(name, f"an integer in [{lo}, {hi}]", value)


def _relations(cfg: Blip2Config, name: Callable[[str], str], where: str) -> None:
    def fail(text: str) -> CheckpointError:
        return CheckpointError(where + text)

    v, q, llm = cfg.vision, cfg.qformer, cfg.llm
    for part, width, heads in (("vision", v.width, v.heads), ("qformer", q.width, q.heads)):
        if width % heads:
            raise fail(f"{name(part + '.width')} ({width}) must be a multiple of {name(part + '.heads')} ({heads})")
    if v.image_size % v.patch_size or v.image_size // v.patch_size > MAX_GRID:
        raise fail(f"{name('vision.image_size')} ({v.image_size}) must be a multiple of {name('vision.patch_size')} "
                   f"({v.patch_size}) with at most {MAX_GRID} patches a side")
    if q.vision_width != v.width:
        raise fail(f"{name('qformer.vision_width')} ({q.vision_width}) must equal {name('vision.width')} ({v.width})")
    for token in ("pad_id", "cls_id", "sep_id", "dec_id"):
        if q.text_input and getattr(q, token) >= q.vocab_size:
            raise fail(f"{name('qformer.' + token)} must be below {name('qformer.vocab_size')} ({q.vocab_size})")
    if isinstance(llm, OptConfig):
        if llm.width % llm.heads:
            raise fail(f"{name('llm.width')} ({llm.width}) must be a multiple of {name('llm.heads')} ({llm.heads})")
        ids = ("pad_id", "bos_id", "eos_id")
    elif isinstance(llm, T5Config):
        ids = ("pad_id", "eos_id", "decoder_start_id")
    else:
        ids = ()
    for token in ids:
        if getattr(llm, token) >= llm.vocab_size:
            raise fail(f"{name('llm.' + token)} ({getattr(llm, token)}) must be below {name('llm.vocab_size')} "
                       f"({llm.vocab_size})")
    if cfg.image_token_id is not None and llm is not None and not 0 <= cfg.image_token_id < llm.vocab_size:
        raise fail(f"{name('image_token_id')} ({cfg.image_token_id}) must be below {name('llm.vocab_size')}")


def checked_blip2_config(values: Mapping[str, Any], llm_kind: str | None, name: Callable[[str], str] = str,
                         where: str = "") -> Blip2Config:
    """The one way a config read from a file becomes a ``Blip2Config``. ``values`` maps
    ``"vision.width"``, ``"qformer.layers"``, ``"llm.vocab_size"``, ``"embed_dim"``,
    ``"image_token_id"`` ... to what was read (every field of each part must be present);
    ``llm_kind`` is ``opt``, ``t5`` or None (the ITM model); ``name(field)`` is the value's name in
    the file and ``where`` the file, for the one-line CheckpointError on the first bad field."""
    parts: dict[str, Any] = {}
    for part in ("vision", "qformer", "llm"):
        if part == "llm" and llm_kind is None:
            continue
        cls = _part_class(part, llm_kind)
        prefix = llm_kind if part == "llm" else part
        kw = {}
        for f in fields(cls):
            value = values.get(f"{part}.{f.name}", OPTIONAL.get(f"{part}.{f.name}", MISSING))
            shown = where + name(f"{part}.{f.name}")
            if value is MISSING:
                raise invalid(shown, "set", value)
            _check_value(f"{prefix}.{f.name}", value, shown, str(f.type))
            kw[f.name] = value
        parts[part] = cls(**kw)
    embed = values.get("embed_dim", MISSING)
    _check_value("embed_dim", embed, where + name("embed_dim"), "int")
    image_token = values.get("image_token_id")
    if image_token is not None and (isinstance(image_token, bool) or not isinstance(image_token, int)):
        raise invalid(where + name("image_token_id"), "an integer or null", image_token)
    cfg = Blip2Config(vision=parts["vision"], qformer=parts["qformer"], llm=parts.get("llm"), embed_dim=embed,
                      image_token_id=image_token)
    _relations(cfg, name, where)
    return cfg


def flat_values(cfg: Blip2Config) -> dict[str, Any]:
    """``cfg`` as the flat field -> value mapping :func:`checked_blip2_config` takes."""
    out: dict[str, Any] = {"embed_dim": cfg.embed_dim, "image_token_id": cfg.image_token_id}
    for part in ("vision", "qformer", "llm"):
        sub = getattr(cfg, part)
        if sub is not None:
            out.update({f"{part}.{k}": v for k, v in asdict(sub).items()})
    return out
