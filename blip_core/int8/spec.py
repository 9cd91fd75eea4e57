"""What the int8 engine's graphs are: their names, inputs and outputs, and the engine version.

A leaf (no torch, no onnxruntime, no numpy) shared by the converter that writes the graphs
(``convert``), the runtime that runs them (``runtime``) and the cache that keys them (``cache``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blip_core.model.config import BlipConfig

# Bumped whenever the exported graphs change: it keys the cache and is recorded in every converted
# folder. tests/core/test_int8.py fails when the graphs change without a bump (int8_graph_signature.json).
ENGINE_VERSION = 5  # 2: lean graphs, transposed cross keys, block-quantised decoders; 3: word tables in blocks;
# 4: the ViT's attention output projections in fp32; 5: matching heads as numpy (heads.npz)
HEADS = ("vision_proj", "text_proj", "itm_head")  # the matching heads, kept as numpy matrices (heads.npz)


def model_parts(cfg: BlipConfig) -> list[str]:
    """The parts converted, one or two graphs each (see ``graph_names``)."""
    parts = ["vision"]
    parts += [p for p, t in (("text_decoder", "caption"), ("answer_decoder", "vqa")) if t in cfg.tasks]
    if cfg.has_text_encoder:
        parts.append("text_encoder")
    return parts


def graph_names(cfg: BlipConfig) -> list[str]:
    """The graphs a converted model has: the ViT; per text stack its cross keys/values and a
    decoding step (decoders) or the bidirectional pass (the text encoder)."""
    names = []
    for part in model_parts(cfg):
        last = "step" if part.endswith("decoder") else "encode"
        names += [part] if part == "vision" else [f"{part}.cross_kv", f"{part}.{last}"]
    return names


def kv_names(prefix: str, L: int) -> list[str]:
    """Names of L layers' keys and values: ``{prefix}_k0, {prefix}_v0, {prefix}_k1, ...``."""
    return [f"{prefix}_{kind}{i}" for i in range(L) for kind in ("k", "v")]


def kv_shapes(rows: int, heads: int, head_dim: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one layer's keys and values over ``n`` tokens in the graphs' layout (keys
    transposed, so a decoding step multiplies without a transpose): [rows, heads, head_dim, n] and
    [rows, heads, n, head_dim]."""
    return (rows, heads, head_dim, n), (rows, heads, n, head_dim)


# ------------------------------------------------------------------ BLIP-2 (``convert_blip2``, ``runtime_blip2``)
# Numpy tables beside the graphs, memory-mapped at load (untouched rows stay on disk): the LLM's word
# embeddings as int8 rows in blocks of 32 + fp32 scales (``convert.q8_rows``), or fp16 when the width is
# not a multiple of 32; OPT's learned positions (fp32, offset 2); small fp32 matrices (OPT-350m's project_in).
LLM_TOKENS_Q8, LLM_TOKENS_SCALE, LLM_TOKENS_F16 = "llm.tokens.q8.npy", "llm.tokens.scale.npy", "llm.tokens.f16.npy"
OPT_POSITIONS, LLM_SMALL = "opt.positions.npy", "llm.small.npz"
# The LLM's MatMul weights: MatMulNBits in blocks of 32, 8-bit by default, 4-bit on request (`blip
# convert --llm-bits 4`: 1.7 instead of 3.0 GB for OPT-2.7B). 4-bit missed the 95% teacher-forced
# agreement with fp32 that the engine promises (OPT-2.7B's widths, random weights: 94.4% over 4 of
# its layers where 8-bit kept 98.6%, 57.8% over all 32; the LM head in 8-bit or fp32 activations
# gained at most 0.7 points), so it is a choice for memory, not the default.
LLM_BITS = 8
LLM_BIT_CHOICES = (4, 8)


def blip2_graph_names(cfg) -> list[str]:
    """The graphs of a converted BLIP-2 (``cfg``: a ``Blip2Config``), one per block so a block is
    converted with only its own fp32 weights in memory: the ViT's embedding and blocks (the last
    with ``ln_vision``); the Q-Former (to the soft prompt, or the ITM model's three passes); OPT's
    layers and head, or Flan-T5's position-bias graphs, encoder layers, per decoder layer its cross
    keys/values and its step, and the head."""
    names = ["vision.embed"] + [f"vision.block{i}" for i in range(cfg.vision.layers)]
    if cfg.llm is None:
        return names + ["qformer.match"]
    names.append("qformer")
    if cfg.llm_kind == "opt":
        return names + [f"opt.layer{i}" for i in range(cfg.llm.layers)] + ["opt.head"]
    names += ["t5.enc_bias"] + [f"t5.enc{i}" for i in range(cfg.llm.layers)] + ["t5.dec_bias"]
    names += [n for i in range(cfg.llm.decoder_layers) for n in (f"t5.dec{i}.cross", f"t5.dec{i}")]
    return names + ["t5.head"]
