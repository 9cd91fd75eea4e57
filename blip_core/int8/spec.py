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
