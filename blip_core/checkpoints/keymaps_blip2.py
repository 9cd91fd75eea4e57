"""Key maps of BLIP-2: how the tensor names of transformers' ``Blip2ForConditionalGeneration`` /
``Blip2ForImageTextRetrieval`` and of LAVIS ``.pth`` files map to ours (``Blip2Model``), in the
``Route`` form ``fill.rename_map`` walks, and which foreign keys an inference model never needs.

One LAVIS quirk is not a rename: EVA's attention keeps ``q_bias`` and ``v_bias`` apart (the key
bias is identically 0), while our ViT has one fused ``qkv.bias``. ``lavis_qv_bias`` (or the
pair ``merged_qv_keys`` / ``merge_qv_bias`` for a loader that walks keys and a getter itself)
presents the pair as ``visual_encoder.blocks.{i}.attn.qkv.bias = cat(q_bias, 0, v_bias)``, which
the LAVIS routes then rename like any other key.

torch is imported only where a tensor is made.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Iterable

from blip_core.checkpoints.keymaps import VIT_HF_KEYS, VIT_TIMM_KEYS, KeyMap, Route
from blip_core.model.blip2_config import Blip2Config

if TYPE_CHECKING:
    import torch

    from blip_core.checkpoints.sources import TensorSource


class LlmKeys(KeyMap):
    """A whole LLM whose names are already ours (transformers' ``OPTForCausalLM`` /
    ``T5ForConditionalGeneration``), minus ``aliases``: foreign keys of tensors tied to another
    (OPT's ``lm_head``, T5's per-stack ``embed_tokens``), which our modules do not own; left
    unmapped, ``BLIP2_IGNORE_RULES`` accounts for them."""

    def __init__(self, aliases: frozenset[str] = frozenset()):
        super().__init__([])
        self.aliases = aliases

    def to_ours(self, key: str) -> str | None:
        return None if key in self.aliases else key

    def to_foreign(self, key: str) -> str | None:
        return key


def _llm_keys(cfg: Blip2Config) -> LlmKeys:
    if cfg.llm_kind == "opt":
        return LlmKeys(frozenset({"lm_head.weight"}))
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    return LlmKeys(frozenset(aliases | ({"lm_head.weight"} if cfg.llm.tie_embeddings else set())))


def _attention(foreign: str, inner: str, ours: str) -> list[tuple[str, str]]:
    """One BERT attention block: ``{foreign}.{inner}.{query,key,value}``, ``{foreign}.output.*``."""
    base, mine = f"encoder.layer.{{i}}.{foreign}", f"layers.{{i}}.{ours}"
    return [(f"{base}.{inner}.{n}.{{p}}", f"{mine}.{n}.{{p}}") for n in ("query", "key", "value")] + [
        (f"{base}.output.dense.{{p}}", f"{mine}.proj.{{p}}"),
        (f"{base}.output.LayerNorm.{{p}}", f"{mine}.norm.{{p}}"),
    ]


def _ffns() -> list[tuple[str, str]]:
    pairs = []
    for suffix, ours in (("_query", "query_mlp"), ("", "mlp")):
        pairs += [
            (f"encoder.layer.{{i}}.intermediate{suffix}.dense.{{p}}", f"layers.{{i}}.{ours}.fc1.{{p}}"),
            (f"encoder.layer.{{i}}.output{suffix}.dense.{{p}}", f"layers.{{i}}.{ours}.fc2.{{p}}"),
            (f"encoder.layer.{{i}}.output{suffix}.LayerNorm.{{p}}", f"layers.{{i}}.{ours}.norm.{{p}}"),
        ]
    return pairs


# transformers' Blip2QFormerModel (under ``qformer.``): the embedding norm is its ``layernorm``
QFORMER_HF_KEYS = KeyMap([
    ("layernorm.{p}", "norm.{p}"),
    *_attention("attention", "attention", "self_attn"),
    *_attention("crossattention", "attention", "cross_attn"),
    *_ffns(),
])
# transformers' retrieval model keeps the text embeddings at the top level (``embeddings.``)
QFORMER_HF_EMBED_KEYS = KeyMap([
    ("word_embeddings.weight", "tokens.weight"),
    ("position_embeddings.weight", "positions.weight"),
])
# LAVIS's BertModel (under ``Qformer.bert.``): the embedding norm is ``embeddings.LayerNorm``
QFORMER_LAVIS_KEYS = KeyMap([
    ("embeddings.LayerNorm.{p}", "norm.{p}"),
    ("embeddings.word_embeddings.weight", "tokens.weight"),
    ("embeddings.position_embeddings.weight", "positions.weight"),
    *_attention("attention", "self", "self_attn"),
    *_attention("crossattention", "self", "cross_attn"),
    *_ffns(),
])
# LAVIS's EVA ViT: timm names without a final norm (BLIP-2's ln_vision sits outside the ViT)
# (norm_pre: the CLIP ViT-L variant's ln_pre, see lavis_clip_names)
EVA_LAVIS_KEYS = KeyMap([(a, b) for a, b in VIT_TIMM_KEYS.pairs if not a.startswith("norm.")]
                        + [("norm_pre.{p}", "norm_pre.{p}")])
LN_VISION_KEYS = KeyMap([("{p}", "norm.{p}")])
QUERY_KEYS = KeyMap([("query_tokens", "query_tokens")])


def _heads(pairs: list[tuple[str, str]]) -> KeyMap:
    return KeyMap([(f"{a}.{{p}}", f"{b}.{{p}}") for a, b in pairs])


def hf_blip2_routes(cfg: Blip2Config) -> list[Route]:
    """Routes from transformers' Blip2ForConditionalGeneration (``cfg.llm`` set) or
    Blip2ForImageTextRetrieval (``cfg.llm`` None) state-dict names to ours."""
    routes: list[Route] = [
        ("vision_model.", "vision.", VIT_HF_KEYS),
        ("qformer.", "qformer.", QFORMER_HF_KEYS),
        ("", "qformer.", QUERY_KEYS),
    ]
    if cfg.llm is not None:
        routes += [
            ("", "", _heads([("language_projection", "language_projection")])),
            ("language_model.", "language_model.", _llm_keys(cfg)),
        ]
    else:
        routes += [
            ("embeddings.", "qformer.", QFORMER_HF_EMBED_KEYS),
            ("", "", _heads([("vision_projection", "vision_proj"), ("text_projection", "text_proj"),
                             ("itm_head", "itm_head")])),
        ]
    return routes


def lavis_blip2_routes(cfg: Blip2Config) -> list[Route]:
    """Routes from LAVIS ``.pth`` names (``Blip2Qformer`` / ``Blip2ITM``, ``Blip2OPT``, ``Blip2T5``)
    to ours. The ViT's ``q_bias``/``v_bias`` pairs must first be merged (``lavis_qv_bias``).
    LAVIS files usually hold no LLM weights (LAVIS loads the LLM from the hub); when they do,
    ``opt_model.*`` / ``t5_model.*`` carry transformers' names."""
    routes: list[Route] = [
        ("visual_encoder.", "vision.", EVA_LAVIS_KEYS),
        ("ln_vision.", "vision.", LN_VISION_KEYS),
        ("Qformer.bert.", "qformer.", QFORMER_LAVIS_KEYS),
        ("", "qformer.", QUERY_KEYS),
    ]
    if cfg.llm is not None:
        proj = "opt_proj" if cfg.llm_kind == "opt" else "t5_proj"
        routes += [
            ("", "", _heads([(proj, "language_projection")])),
            (f"{cfg.llm_kind}_model.", "language_model.", _llm_keys(cfg)),
        ]
    else:
        routes += [("", "", _heads([("vision_proj", "vision_proj"), ("text_proj", "text_proj"),
                                    ("itm_head", "itm_head")]))]
    return routes


# ------------------------------------------------------------- LAVIS q_bias / v_bias
_QV_BIAS = re.compile(r"^(?P<base>visual_encoder\.blocks\.\d+\.attn\.)(?P<which>q_bias|v_bias)$")


def merged_qv_keys(keys: Iterable[str]) -> list[str]:
    """``keys`` with each LAVIS pair ``visual_encoder.blocks.{i}.attn.{q,v}_bias`` replaced by one
    ``visual_encoder.blocks.{i}.attn.qkv.bias`` (order kept; a lone half stays as it is, so the
    loader reports it unexpected and the fused bias missing)."""
    keys = list(keys)
    present = set(keys)
    out, seen = [], set()
    for k in keys:
        m = _QV_BIAS.match(k)
        if m and {m["base"] + "q_bias", m["base"] + "v_bias"} <= present:
            fused = m["base"] + "qkv.bias"
            if fused not in seen:
                seen.add(fused)
                out.append(fused)
        else:
            out.append(k)
    return out


def merge_qv_bias(get: Callable[[str], "torch.Tensor"]) -> Callable[[str], "torch.Tensor"]:
    """A getter like ``get`` (foreign key -> tensor) that also answers the fused
    ``visual_encoder.blocks.{i}.attn.qkv.bias`` of ``merged_qv_keys``: ``cat(q_bias, 0, v_bias)``
    [3D], the key bias being identically 0 in EVA."""

    def merged(key: str) -> "torch.Tensor":
        if key.startswith("visual_encoder.blocks.") and key.endswith(".attn.qkv.bias"):
            import torch

            base = key[: -len("qkv.bias")]
            q, v = get(base + "q_bias"), get(base + "v_bias")
            return torch.cat([q, torch.zeros_like(v), v])
        return get(key)

    return merged


def lavis_qv_bias(source: "TensorSource") -> "TensorSource":
    """``source`` seen with the ViT's q/v bias pairs fused (see ``merged_qv_keys``); lazy: nothing
    is read until a key is asked for."""
    from blip_core.checkpoints.sources import DeferredTensorSource, TensorSource

    def make() -> TensorSource:
        shapes = source.shapes
        fused = {}
        for k in merged_qv_keys(shapes):
            if k in shapes:
                fused[k] = shapes[k]
            else:  # a fused qkv.bias: three times the q bias
                (d,) = shapes[k[: -len("qkv.bias")] + "q_bias"]
                fused[k] = (3 * d,)
        merged = merge_qv_bias(source.get)
        # a fused qkv.bias the file has itself (the CLIP variant's in_proj_bias) is read as it is
        return TensorSource(fused, lambda k: source.get(k) if k in shapes else merged(k))

    return DeferredTensorSource(make)


# ------------------------------------------------------------- LAVIS's CLIP ViT-L/14
# LAVIS's clip_vit (``vit_model: clip_L``) names: OpenAI CLIP's, under ``visual_encoder.``; the
# class and position embeddings lack the batch dimensions our ViT's have
_CLIP_RENAMES = [
    (re.compile(r"^visual_encoder\.conv1\.weight$"), "visual_encoder.patch_embed.proj.weight"),
    (re.compile(r"^visual_encoder\.class_embedding$"), "visual_encoder.cls_token"),
    (re.compile(r"^visual_encoder\.positional_embedding$"), "visual_encoder.pos_embed"),
    (re.compile(r"^visual_encoder\.ln_pre\.(weight|bias)$"), r"visual_encoder.norm_pre.\1"),
    (re.compile(r"^visual_encoder\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$"),
     r"visual_encoder.blocks.\1.attn.qkv.\2"),
    (re.compile(r"^visual_encoder\.transformer\.resblocks\.(\d+)\.attn\.out_proj\."),
     r"visual_encoder.blocks.\1.attn.proj."),
    (re.compile(r"^visual_encoder\.transformer\.resblocks\.(\d+)\.ln_([12])\."), r"visual_encoder.blocks.\1.norm\2."),
    (re.compile(r"^visual_encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\."), r"visual_encoder.blocks.\1.mlp.fc1."),
    (re.compile(r"^visual_encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\."),
     r"visual_encoder.blocks.\1.mlp.fc2."),
]
_UNBATCHED = {"visual_encoder.cls_token": 2, "visual_encoder.pos_embed": 1}  # leading dims to add


def lavis_clip_names(source: "TensorSource") -> "TensorSource":
    """``source`` with a CLIP ViT-L's keys (if it has any) under the timm-style names the LAVIS routes
    map, its class and position embeddings given our batch dimensions; lazy like ``lavis_qv_bias``."""
    from blip_core.checkpoints.sources import DeferredTensorSource, TensorSource

    def make() -> TensorSource:
        shapes, back = {}, {}
        for key, shape in source.shapes.items():
            new = key
            for rx, repl in _CLIP_RENAMES:
                new, n = rx.subn(repl, key)
                if n:
                    break
            shapes[new] = (1,) * _UNBATCHED.get(new, 0) + tuple(shape) if new != key else shape
            back[new] = key

        def get(key: str):
            value = source.get(back[key])
            return value.reshape(shapes[key]) if key in _UNBATCHED and back[key] != key else value

        return TensorSource(shapes, get)

    return DeferredTensorSource(make)


# keys a foreign BLIP-2 checkpoint may carry that an inference model never needs
BLIP2_IGNORE_RULES = [
    (re.compile(r"(^|\.)position_ids$"), "position-id buffer (recomputed)"),
    (re.compile(r"^temp$"), "ITC temperature (training state)"),
    (re.compile(r"^Qformer\.cls\."), "stage-1 ITG language-modelling head (training only)"),
    (re.compile(r"(^|\.)pooler\."), "BERT pooler (unused by BLIP-2)"),
    (re.compile(r"^(language_model|opt_model|t5_model)\.(encoder|decoder)\.embed_tokens\.weight$"),
     "T5: alias of the shared embeddings"),
    # an untied (Flan-T5) lm_head is renamed by the routes and never reaches this rule
    (re.compile(r"^(language_model|opt_model|t5_model)\.lm_head\.weight$"), "LM head tied to the word embeddings"),
]
