"""Key maps of the BLIP family: how the tensor names of each foreign format (Hugging Face BLIP,
Salesforce / LAVIS ``.pth``) map to ours, and which foreign keys an inference model never needs.
A second family (BLIP-2) gets a module of its own beside this one.
"""

from __future__ import annotations

import re


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


class KeyMap:
    """Bidirectional renames between a foreign naming and ours, written as templates where
    ``{i}`` is a layer index and ``{p}`` is ``weight`` or ``bias``."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs
        self._fwd = [(_compile(a), b) for a, b in pairs]
        self._back = [(_compile(b), a) for a, b in pairs]

    @staticmethod
    def _apply(rules, key: str) -> str | None:
        for rx, out in rules:
            m = rx.match(key)
            if m:
                return out.format(**m.groupdict())
        return None

    def to_ours(self, key: str) -> str | None:
        return self._apply(self._fwd, key)

    def to_foreign(self, key: str) -> str | None:
        return self._apply(self._back, key)


def _attn(foreign: str, ours: str) -> list[tuple[str, str]]:
    base = f"encoder.layer.{{i}}.{foreign}"
    return [(f"{base}.self.{n}.{{p}}", f"layers.{{i}}.{ours}.{n}.{{p}}") for n in ("query", "key", "value")] + [
        (f"{base}.output.dense.{{p}}", f"layers.{{i}}.{ours}.proj.{{p}}"),
        (f"{base}.output.LayerNorm.{{p}}", f"layers.{{i}}.{ours}.norm.{{p}}"),
    ]


TEXT_KEYS = KeyMap([
    ("embeddings.word_embeddings.weight", "embed.tokens.weight"),
    ("embeddings.position_embeddings.weight", "embed.positions.weight"),
    ("embeddings.LayerNorm.{p}", "embed.norm.{p}"),
    *_attn("attention", "self_attn"),
    *_attn("crossattention", "cross_attn"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "layers.{i}.mlp.fc1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "layers.{i}.mlp.fc2.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "layers.{i}.mlp.norm.{p}"),
])
LM_KEYS = KeyMap([
    ("transform.dense.{p}", "dense.{p}"),
    ("transform.LayerNorm.{p}", "norm.{p}"),
    ("bias", "bias"),
])
VIT_TIMM_KEYS = KeyMap([
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    *[(f"blocks.{{i}}.{n}.{{p}}", f"blocks.{{i}}.{n}.{{p}}")
      for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")],
    ("norm.{p}", "norm.{p}"),
])
VIT_HF_KEYS = KeyMap([
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.{p}", "patch_embed.proj.{p}"),
    ("encoder.layers.{i}.self_attn.qkv.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("encoder.layers.{i}.self_attn.projection.{p}", "blocks.{i}.attn.proj.{p}"),
    ("encoder.layers.{i}.layer_norm1.{p}", "blocks.{i}.norm1.{p}"),
    ("encoder.layers.{i}.layer_norm2.{p}", "blocks.{i}.norm2.{p}"),
    ("encoder.layers.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layers.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("post_layernorm.{p}", "norm.{p}"),
])
HEAD_KEYS = KeyMap([(f"{h}.{{p}}", f"{h}.{{p}}") for h in ("vision_proj", "text_proj", "itm_head")])

# (foreign prefix, our prefix, key map). The decoder prefix is bound per task: a VQA checkpoint's
# ``text_decoder`` is our ``answer_decoder`` (it reads question states, not the image).
Route = tuple[str, str, KeyMap]


def blip_routes(vision_prefix: str, vit_keys: KeyMap, decoder: str) -> list[Route]:
    return [
        (vision_prefix, "vision.", vit_keys),
        ("text_encoder.", "text_encoder.", TEXT_KEYS),
        ("text_decoder.bert.", f"{decoder}.", TEXT_KEYS),
        ("text_decoder.cls.predictions.", f"{decoder}.lm_head.", LM_KEYS),
        ("", "", HEAD_KEYS),
    ]


# keys a foreign checkpoint may carry that a BLIP inference model never needs
IGNORE_RULES = [
    (re.compile(r"(^|\.)position_ids$"), "position-id buffer (recomputed)"),
    (re.compile(r"cls\.predictions\.decoder\.weight$"), "tied to the word embeddings"),
    (re.compile(r"cls\.predictions\.decoder\.bias$"), "alias of cls.predictions.bias"),
    (re.compile(r"^(visual_encoder_m|text_encoder_m|text_decoder_m|vision_proj_m|text_proj_m)\."),
     "momentum encoder (pre-training state)"),
    (re.compile(r"^(image_queue|text_queue|idx_queue|queue_ptr|ptr_queue|temp)$"),
     "contrastive queue / temperature (training state)"),
    (re.compile(r"(^|\.)pooler\."), "BERT pooler (unused by BLIP)"),
]
