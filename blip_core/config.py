"""Frozen dataclass configs for the BLIP model and its presets.

A config describes an artefact: the same config always builds the same parameter shapes, and
it is saved next to the weights (``config.json``) so a checkpoint rebuilds itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

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
    def from_dict(cls, d: dict[str, Any]) -> "BlipConfig":
        return cls(
            vision=VisionConfig(**d["vision"]),
            text=TextConfig(**d["text"]),
            tasks=tuple(d["tasks"]),
            embed_dim=d.get("embed_dim", 256),
        )

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
