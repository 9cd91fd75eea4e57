"""BLIP-2 on the int8 engine: conversion, block by block, to ONNX Runtime graphs that
``blip_core.int8.runtime_blip2`` runs without torch.

Why block by block: blip2-opt-2.7b has 3.7B parameters (ViT-g 39 blocks x 25M, Q-Former 105M, OPT
32 layers x 79M, a 50272 x 2560 word table): 15 GB in fp32, more than a Raspberry Pi's 8 GB. The
model is built on the meta device (``fill.meta_model``); each unit (``conversion_units``: the
ViT's embedding, one ViT block, the Q-Former, one LLM layer, the LLM's head) is filled from the
checkpoint's lazy tensors, exported to its own graph, moved back to the meta device, quantised,
and the heap trimmed. At most one unit's fp32 weights are in memory: a ViT-g block is 101 MB, an
OPT-2.7B layer 315 MB, the Q-Former 420 MB, OPT's head the 515 MB word table (the largest). The
export and quantiser make transient copies: measured, exporting and 4-bit quantising one
OPT-2.7B-shaped layer peaked at 1.6 GB RSS (torch included), so the head should peak near 2.5 GB,
against the 15 GB a whole fp32 model takes.

One graph per block: ONNX Runtime's cost per session run is small next to a block's work. Measured
(x86, 2 shared cores): a ViT-g block at 224 px (257 tokens, int8) 282 ms per run, a 32-wide block's
whole run 0.53 ms, so 39 runs add under 0.2% to the ViT; an OPT-2.7B layer's 4-bit decoding step
(one row, 40 cached tokens) 15 ms (8-bit: 25 ms), 49 MB on disk (8-bit: 89 MB).

What is quantised (``convert.quantize``): the ViT's MatMuls dynamic int8 (its 257 rows per image
make it compute-bound; attention output projections fp32 as BLIP's ViT measured); the Q-Former
8-bit ``MatMulNBits`` (blocks of 32, like BLIP's decoders: its 32 query rows feed every token the
LLM writes); the LLM's MatMuls ``MatMulNBits`` with ``llm_bits`` (4 by default: OPT-2.7B 1.3 GB
instead of 2.7 GB at 8 bits, and a decoding step reads its weights once per token, so it is
memory-bound: 4-bit halves the bytes read; 8 for comparison). The LLM's word table is a numpy
array of int8 rows in blocks of 32 (``convert.q8_rows``), memory-mapped at load; OPT's head,
tied to that table, is a 4-bit graph of its own.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from blip_core.checkpoints import Checkpoint
from blip_core.checkpoints.atomic import atomic_folder
from blip_core.checkpoints.fill import meta_model
from blip_core.int8 import convert as engine
from blip_core.int8.convert import _export, _fill, _stepper, finish_graph, q8_rows
from blip_core.int8.graphs_blip2 import (
    HeadGraph,
    MatchGraph,
    OptHead,
    OptLayerGraph,
    SoftPromptGraph,
    T5BiasGraph,
    T5CrossKVGraph,
    T5DecoderLayerGraph,
    T5EncoderLayerGraph,
    T5Head,
    VisionEmbedGraph,
    VitBlocksGraph,
)
from blip_core.int8.memory import release_free_memory
from blip_core.int8.spec import (
    ENGINE_VERSION,
    HEADS,
    LLM_BITS,
    LLM_SMALL,
    LLM_TOKENS_F16,
    LLM_TOKENS_Q8,
    LLM_TOKENS_SCALE,
    OPT_POSITIONS,
)
from blip_core.model.blip2 import Blip2Model

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
OPT, T5 = "language_model.model.decoder.", "language_model."


def conversion_units(model: Blip2Model) -> list[tuple[str, list[str]]]:
    """(unit, the tensors it reads, by our names) in conversion order; each unit's graphs are
    ``export_unit``'s. Every tensor of the model is in exactly one unit but the ITM heads (read
    as numpy at the end)."""
    cfg = model.cfg
    names = list(model.state_dict(keep_vars=True))

    def under(*prefixes: str) -> list[str]:
        return [n for n in names if n.startswith(prefixes)]

    last = cfg.vision.layers - 1
    units = [("vision.embed", under("vision.patch_embed.", "vision.cls_token", "vision.pos_embed", "vision.norm_pre."))]
    units += [(f"vision.block{i}", under(f"vision.blocks.{i}.", *(("vision.norm.",) if i == last else ())))
              for i in range(cfg.vision.layers)]
    if cfg.llm is None:
        return units + [("qformer.match", under("qformer."))]
    units.append(("qformer", under("qformer.", "language_projection.")))
    if cfg.llm_kind == "opt":
        units += [(f"opt.layer{i}", under(f"{OPT}layers.{i}.")) for i in range(cfg.llm.layers)]
        head = ("embed_tokens.", "embed_positions.", "final_layer_norm.", "project_in.", "project_out.")
        return units + [("opt.head", under(*(OPT + p for p in head)))]
    enc, dec = f"{T5}encoder.", f"{T5}decoder."
    rel = "block.0.layer.0.SelfAttention.relative_attention_bias."
    n_enc = cfg.llm.layers
    units.append(("t5.enc_bias", under(enc + rel)))
    units += [(f"t5.enc{i}", [n for n in under(f"{enc}block.{i}.", *((f"{enc}final_layer_norm.",) if i == n_enc - 1
                                                                    else ())) if rel not in n])
              for i in range(n_enc)]
    units.append(("t5.dec_bias", under(dec + rel)))
    units += [(f"t5.dec{i}", [n for n in under(f"{dec}block.{i}.") if rel not in n])
              for i in range(cfg.llm.decoder_layers)]
    return units + [("t5.head", under(f"{T5}shared.", f"{T5}lm_head.", f"{dec}final_layer_norm."))]


def _kv_axes(rows: str, n: str) -> dict:
    return {0: rows, 2: n}


def export_unit(model: Blip2Model, unit: str, folder: Path, llm_bits: int = LLM_BITS) -> list[tuple[Path, dict | None]]:
    """Write the fp32 graphs of ``unit`` (its weights must be materialised; tables of the head
    units are written as numpy here) -> [(graph, quantisation: ``quantize``'s keywords, or None
    for graphs left fp32)]."""
    cfg, v = model.cfg, model.cfg.vision
    path = folder / f"{unit}.onnx"
    vit, qformer, llm = dict(blocks=False), dict(blocks=True, many_rows=True), dict(blocks=True, bits=llm_bits)
    if unit == "vision.embed":
        _export(VisionEmbedGraph(model.vision), (torch.zeros(1, 3, v.image_size, v.image_size),), path,
                ["pixels"], ["tokens"], {"pixels": {0: "B"}, "tokens": {0: "B"}})
        return [(path, None)]  # a convolution and additions: nothing for the MatMul quantisers
    if unit.startswith("vision.block"):
        i = int(unit.removeprefix("vision.block"))
        norm = model.vision.norm if i == v.layers - 1 else None
        _export(VitBlocksGraph([model.vision.blocks[i]], norm), (torch.randn(1, v.num_tokens, v.width),), path,
                ["x"], ["y"], {"x": {0: "B", 1: "N"}, "y": {0: "B", 1: "N"}})
        return [(path, vit)]
    image = torch.randn(1, v.num_tokens, v.width)
    if unit == "qformer":
        _export(SoftPromptGraph(model), (image,), path, ["image_embeds"], ["soft"],
                {"image_embeds": {0: "B", 1: "N"}, "soft": {0: "B"}})
        return [(path, qformer)]
    if unit == "qformer.match":
        # padding in the example: the masks are built from data, and a trace of an all-ones mask drops them
        ids, mask = torch.full((2, 4), 5, dtype=torch.long), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        _export(MatchGraph(model), (image, ids, mask), path, ["image_embeds", "ids", "mask"],
                ["itm", "queries", "text"], {"image_embeds": {0: "B", 1: "N"}, "ids": {0: "R", 1: "T"},
                                             "mask": {0: "R", 1: "T"}, "itm": {0: "R"}, "text": {0: "R"}})
        return [(path, qformer)]
    lm = model.language_model
    c = cfg.llm
    if unit.startswith("opt.layer"):
        layer = lm.decoder.layers[int(unit.removeprefix("opt.layer"))]
        h, hd = c.heads, c.width // c.heads
        _export(OptLayerGraph(layer), (torch.randn(2, 3, c.width), torch.randn(2, h, 4, hd), torch.randn(2, h, 4, hd),
                                       torch.zeros(1, 1, 3, 7)), path, ["x", "past_k", "past_v", "bias"],
                ["y", "k", "v"], {"x": {0: "R", 1: "T"}, "past_k": _kv_axes("R", "P"), "past_v": _kv_axes("R", "P"),
                                  "bias": {0: "Rb", 2: "T", 3: "S"}, "y": {0: "R", 1: "T"},
                                  "k": _kv_axes("R", "S"), "v": _kv_axes("R", "S")})
        return [(path, llm)]
    if unit == "opt.head":
        _write_tables(folder, lm.decoder.embed_tokens.weight, lm)
        _export(HeadGraph(lm.decoder.final_layer_norm, OptHead(lm)), (torch.randn(2, 1, c.width),), path,
                ["hidden"], ["logits"], {"hidden": {0: "R"}, "logits": {0: "R"}})
        return [(path, llm)]
    if unit in ("t5.enc_bias", "t5.dec_bias"):
        stack = lm.encoder if unit == "t5.enc_bias" else lm.decoder
        _export(T5BiasGraph(stack.block[0].layer[0].SelfAttention), (torch.arange(3), torch.arange(5)), path,
                ["query", "key"], ["bias"], {"query": {0: "T"}, "key": {0: "S"}, "bias": {2: "T", 3: "S"}})
        return [(path, None)]  # a table lookup
    h, d = c.heads, c.kv_dim
    if unit.startswith("t5.enc"):
        i = int(unit.removeprefix("t5.enc"))
        norm = lm.encoder.final_layer_norm if i == c.layers - 1 else None
        _export(T5EncoderLayerGraph(lm.encoder.block[i], norm), (torch.randn(1, 5, c.width), torch.zeros(1, h, 5, 5)),
                path, ["x", "bias"], ["y"], {"x": {0: "B", 1: "S"}, "bias": {2: "S", 3: "S"}, "y": {0: "B", 1: "S"}})
        return [(path, {**llm, "many_rows": True})]
    if unit.startswith("t5.dec"):
        block = lm.decoder.block[int(unit.removeprefix("t5.dec"))]
        cross = folder / f"{unit}.cross.onnx"
        _export(T5CrossKVGraph(block), (torch.randn(1, 5, c.width),), cross, ["states"], ["cross_k", "cross_v"],
                {"states": {0: "B", 1: "S"}, "cross_k": {0: "B", 2: "S"}, "cross_v": {0: "B", 2: "S"}})
        kv = lambda n: torch.randn(2, h, n, d)  # noqa: E731
        _export(T5DecoderLayerGraph(block), (torch.randn(2, 2, c.width), kv(3), kv(3), torch.zeros(1, h, 2, 5),
                                             kv(4)[:1], kv(4)[:1]), path,
                ["x", "past_k", "past_v", "bias", "cross_k", "cross_v"], ["y", "k", "v"],
                {"x": {0: "R", 1: "T"}, "past_k": _kv_axes("R", "P"), "past_v": _kv_axes("R", "P"),
                 "bias": {2: "T", 3: "S"}, "cross_k": {2: "N"}, "cross_v": {2: "N"}, "y": {0: "R", 1: "T"},
                 "k": _kv_axes("R", "S"), "v": _kv_axes("R", "S")})
        return [(cross, {**llm, "many_rows": True}), (path, {**llm})]
    if unit == "t5.head":
        _write_tables(folder, lm.shared.weight, None)
        _export(HeadGraph(lm.decoder.final_layer_norm, T5Head(lm)), (torch.randn(2, 1, c.width),), path,
                ["hidden"], ["logits"], {"hidden": {0: "R"}, "logits": {0: "R"}})
        return [(path, llm)]
    raise ValueError(f"unknown BLIP-2 conversion unit {unit!r}")


def _write_tables(folder: Path, tokens: torch.Tensor, opt_lm) -> None:
    """The LLM's word table (int8 rows in blocks of 32 + scales, fp16 when the width is not a
    multiple of 32) and, for OPT, its position table and OPT-350m's project_in, as numpy files."""
    w = tokens.detach().float().numpy()
    if w.shape[1] % 32 == 0:
        q, scale = q8_rows(w)
        np.save(folder / LLM_TOKENS_Q8, q)
        np.save(folder / LLM_TOKENS_SCALE, scale)
    else:
        np.save(folder / LLM_TOKENS_F16, w.astype(np.float16))
    if opt_lm is not None:
        dec = opt_lm.decoder
        np.save(folder / OPT_POSITIONS, dec.embed_positions.weight.detach().float().numpy())
        small = {} if dec.project_in is None else {"project_in": dec.project_in.weight.detach().float().numpy()}
        np.savez(folder / LLM_SMALL, **small)


def _release(model: Blip2Model, names: list[str]) -> None:
    """Put the tensors ``names`` back on the meta device (their fp32 memory is freed)."""
    for name in names:
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        t = getattr(module, attr)
        meta = torch.empty_like(t, device="meta")
        setattr(module, attr, torch.nn.Parameter(meta, requires_grad=False) if isinstance(t, torch.nn.Parameter)
                else meta)


def conversion_steps(model: Blip2Model) -> list[str]:
    """What ``convert_blip2`` reports, in order: one step per unit, then the config."""
    return [f"convert {unit}" for unit, _ in conversion_units(model)] + ["write heads and config", "done"]


def convert_blip2(ck: Checkpoint, folder: Path, quantized: bool = True, progress=None, vocab: bool = False,
                  llm_bits: int = LLM_BITS) -> None:
    """Export and quantise a BLIP-2 checkpoint ``ck`` into ``folder``, one unit's fp32 weights at
    a time (``conversion_units``). ``quantized=False`` keeps fp32 graphs (to test the export apart
    from quantisation); ``llm_bits`` 4 or 8; ``vocab`` copies the tokenizer files (``blip convert``)."""
    if llm_bits not in (4, 8):
        raise ValueError(f"llm_bits must be 4 or 8, got {llm_bits!r}")
    model, rename = meta_model(ck)
    wanted = model.state_dict(keep_vars=True)
    units = conversion_units(model)
    with atomic_folder(folder, prefix=f".convert-{folder.name}-{os.getpid()}-") as tmp:
        step = _stepper(progress, conversion_steps(model))
        for unit, names in units:
            step(f"convert {unit}")
            _fill(model, ck, rename, None, names)
            graphs = export_unit(model, unit, tmp, llm_bits)
            _release(model, names)  # free this unit's fp32 weights before quantising
            release_free_memory()
            for path, scheme in graphs:
                finish_graph(path, scheme if quantized else None)
        step("write heads and config")
        if vocab:
            for name in TOKENIZER_FILES:
                if (Path(ck.vocab) / name).is_file():
                    shutil.copyfile(Path(ck.vocab) / name, tmp / name)
        if ck.cfg.llm is None:
            heads = {k: ck.tensors.get(rename[k]).float().numpy() for k in wanted if k.startswith(HEADS)}
            np.savez(tmp / "heads.npz", **heads)
        source = str(Path(ck.report.source).resolve())
        (tmp / "config.json").write_text(json.dumps({"blipcam": ck.cfg.to_dict(), "engine": ENGINE_VERSION,
                                                     "source": source, "tensors": len(wanted),
                                                     "llm_bits": llm_bits if ck.cfg.llm is not None else None}))
    step("done")


def export_int8(ck: Checkpoint, folder: Path, tasks: tuple[str, ...] | None = None, progress=None,
                llm_bits: int = LLM_BITS) -> Path:
    """``blip convert`` for either family: BLIP-2 through ``convert_blip2`` (its LLM in ``llm_bits``),
    BLIP as before."""
    converter = functools.partial(convert_blip2, llm_bits=llm_bits) if ck.family == "blip2" else None
    return engine.export_int8(ck, folder, tasks, progress, converter=converter)
