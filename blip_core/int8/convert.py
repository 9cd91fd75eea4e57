"""The int8 engine behind ``precision="int8"``: conversion to ONNX Runtime graphs with int8
weights (``blip_core.int8.runtime`` loads and runs them, without torch).

Why ONNX Runtime: measured side by side on the same weights (docs/benchmarks.md), its dynamic
int8 MatMul beat PyTorch's eager int8 paths (``torch.ao`` dynamic quantisation, torchao) on both
the compute-bound ViT and the memory-bound decoder step, and its MLAS kernels use the Cortex-A76's
``sdot`` instructions on a Raspberry Pi 5 (wheels exist for x86_64 and aarch64).

What is quantised: the weight matrices of every Linear, int8. The ViT uses dynamic int8 MatMul
(per-channel weights, activations quantised per tensor on the fly), the text stacks 8-bit
``MatMulNBits`` (weights and activations in blocks of 32, int8 compute), which keeps a small
model's greedy captions identical where per-tensor activations did not (see ``quantize``).
Attention score/value products, softmax and LayerNorm stay fp32; the word embeddings are stored
int8 too, in blocks of 32 with a scale each, the position tables fp32. The model is split in
graphs (``blip_core.int8.graphs``) that mirror the fp32 path: the ViT; per text stack the
cross-attention keys/values of an image (or question); one decoding step (self-attention cache
in, grown cache out, cross keys/values shared by all rows of an image); and the bidirectional
encoder (question, ITM and ITC modes).

Converting needs the fp32 weights once, one part at a time (the ViT, then each text stack), so no
full fp32 copy of the model is ever in memory; the int8 graphs are cached on disk
(``$BLIPCAM_CACHE`` or ``~/.cache/blipcam``) and later loads read only them (``runtime``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blip_core.checkpoints import Checkpoint, restrict_tasks
from blip_core.checkpoints.atomic import atomic_folder
from blip_core.checkpoints.fill import fill_module, meta_model, refuse_mismatched
from blip_core.errors import BadInputError, StorageError
from blip_core.int8.graphs import CrossKVGraph, EncoderGraph, StepGraph, VisionGraph
from blip_core.int8.memory import release_free_memory
from blip_core.int8.spec import ENGINE_VERSION, HEADS, kv_names, kv_shapes, model_parts
from blip_core.model.blip import BlipModel
from blip_core.model.text import TextTransformer

log = logging.getLogger(__name__)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False, do_constant_folding=True)


def export_part(model: BlipModel, part: str, folder: Path) -> list[Path]:
    """Write the fp32 ONNX graphs of one part (its weights must be materialised)."""
    cfg = model.cfg
    if part == "vision":
        s = cfg.vision.image_size
        path = folder / "vision.onnx"
        _export(VisionGraph(model), (torch.zeros(1, 3, s, s),), path, ["pixels"], ["embeds"],
                {"pixels": {0: "B", 2: "H", 3: "W"}, "embeds": {0: "B", 1: "N"}})
        return [path]
    stack: TextTransformer = getattr(model, part)
    t = cfg.text
    L, h, hd = t.layers, t.heads, t.width // t.heads
    cross_width = stack.layers[0].cross_attn.key.in_features
    paths = [folder / f"{part}.cross_kv.onnx"]
    cross = kv_names("cross", L)
    kv = lambda B, n: tuple(torch.randn(shape) for _ in range(L) for shape in kv_shapes(B, h, hd, n))  # noqa: E731
    axes = lambda name, rows, n: {0: rows, 3 if "_k" in name else 2: n}  # noqa: E731
    cross_axes = {n: axes(n, "B", "N") for n in cross}
    _export(CrossKVGraph(stack), (torch.randn(1, 5, cross_width),), paths[0], ["states"], cross,
            {"states": {0: "B", 1: "N"}, **cross_axes})
    if stack.lm_head is not None:
        past, present = kv_names("past", L), kv_names("present", L)
        paths.append(folder / f"{part}.step.onnx")
        _export(StepGraph(stack), (torch.zeros(2, 1, dtype=torch.long), torch.tensor([3]), *kv(2, 3), *kv(1, 5)),
                paths[-1], ["ids", "position", *past, *cross], ["logits", *present],
                {"ids": {0: "R"}, "logits": {0: "R"}, **{n: axes(n, "R", "P") for n in past},
                 **{n: axes(n, "R", "P1") for n in present}, **cross_axes})
    else:
        paths.append(folder / f"{part}.encode.onnx")
        _export(EncoderGraph(stack), (torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long),
                                      torch.tensor([True]), *kv(1, 5)),
                paths[-1], ["ids", "mask", "use_cross", *cross], ["hidden"],
                {"ids": {0: "R", 1: "T"}, "mask": {0: "R", 1: "T"}, "hidden": {0: "R", 1: "T"}, **cross_axes})
    return paths


def quantize(src: Path, dst: Path, blocks: bool, many_rows: bool = False, bits: int = 8) -> None:
    """int8 weights for one graph ``src`` -> ``dst``, each choice the measured best (the figures:
    docs/benchmark_notes.md). ``blocks`` (the decoders: their steps and cross keys/values):
    ``MatMulNBits``, 8-bit weights in blocks of 32 and int8 compute on activations quantised per
    block of 32 too, since activations quantised per tensor flip a small model's near-tied words;
    ``many_rows`` (the captioner's cross keys/values over the image): fp32 compute on those 8-bit
    weights where that is faster (``_fast_int8_blocks``). Everything else (the ViT, the
    bidirectional encoder): dynamic int8 MatMul (per-channel weights, activations per tensor),
    faster than blocks for many rows, the ViT's attention output projections kept fp32
    (``vit_fp32_matmuls``). Word embeddings: int8 rows in blocks of 32
    (``block_quantize_word_tables``), since ONNX Runtime's quantiser gives a table one scale, which
    rounds rare tokens' small rows coarsely. ``bits`` (``blocks`` only): 8, or 4 for BLIP-2's LLMs."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("root").setLevel(logging.ERROR)  # silence ORT's pre-processing advice
    model = onnx.load(str(src))
    block_quantize_word_tables(model)  # before the MatMuls: the quantisers below leave its ops alone
    if not blocks:
        quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=vit_fp32_matmuls(model),
                         extra_options={"MatMulConstBOnly": True})
        return
    level = 1 if many_rows and not _fast_int8_blocks() else 4  # 1: fp32 compute on the 8-bit weights
    scheme = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=level, bits=bits,
                                          op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),))
    q = MatMulNBitsQuantizer(model, algo_config=scheme)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def finish_graph(path: Path, scheme: dict | None) -> Path:
    """Graph ``path`` -> ``<name>.int8.onnx`` beside it: quantised with ``quantize``'s keywords
    ``scheme``, or renamed as it is (None: fp32, e.g. a graph with no MatMul, or a test of the
    export alone)."""
    target = path.with_name(path.name.replace(".onnx", ".int8.onnx"))
    if scheme is None:
        path.rename(target)
        return target
    quantize(path, target, **scheme)
    path.unlink()
    # the quantiser's copies of the graph (~3x the part's fp32 weights) stay in the heap unless
    # returned; BLIP-base captioner: peak RSS 3.67 -> 3.3 GB
    release_free_memory()
    return target


@functools.cache
def _fast_int8_blocks() -> bool:
    """Whether ``MatMulNBits``' int8 compute (accuracy level 4) is the faster choice for graphs of
    many rows. Measured on AVX2 without VNNI: the captioner's cross keys/values over 577 image
    tokens took 183 ms with int8 compute, 148 ms with fp32 compute on the same 8-bit weights (and
    the same identical captions on the demo model); one decoding step's single row, ~25x slower
    with fp32 compute. Elsewhere (VNNI, or Arm's dot-product instructions on a Pi 5) int8 compute
    stays, as it was measured nowhere else."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def vit_fp32_matmuls(model) -> list[str]:
    """The ViT's attention output projections, which stay fp32. Their input joins every head's
    attention output, and heads differ in scale, so one activation scale per tensor rounds the
    smaller heads coarsely. On the demo model (1,200 held-out scenes, identical greedy captions
    int8 vs fp32): all int8 92.2%, these fp32 95.3%, the whole ViT fp32 97.1%; keeping fc2 or
    any one block in fp32 instead changed nothing beyond noise (91.5-93.7% on 600). They are
    1/12 of the ViT's weight FLOPs."""
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.name.startswith("/vision/") and "/attn/proj/" in n.name]


def block_quantize_word_tables(model, block: int = 32) -> int:
    """Rewrite, in place, each word-embedding lookup ``Gather(table [V, D], ids [R, T])`` as int8
    rows in blocks of ``block`` with one fp32 scale per block (llama.cpp's q8_0): two Gathers, a
    Cast, a Mul and a Reshape per lookup, ~1.13 bytes per weight. The position tables (512 rows)
    stay fp32. Returns the number of tables rewritten."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, done = [], 0
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or ".tokens." not in table.name or table.dims[1] % block:
            nodes.append(node)
            continue
        D = table.dims[1]
        q, scale = q8_rows(numpy_helper.to_array(table), block)
        n = table.name
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([numpy_helper.from_array(q, n + ".q8"),
                                        numpy_helper.from_array(scale, n + ".scale"),
                                        numpy_helper.from_array(np.array([0, 0, D], np.int64), n + ".shape")])
        ids, out = node.input[1], node.output[0]
        nodes += [helper.make_node("Gather", [n + ".q8", ids], [out + ".q8"]),
                  helper.make_node("Cast", [out + ".q8"], [out + ".q8f"], to=1),
                  helper.make_node("Gather", [n + ".scale", ids], [out + ".scale"]),
                  helper.make_node("Mul", [out + ".q8f", out + ".scale"], [out + ".blocks"]),
                  helper.make_node("Reshape", [out + ".blocks", n + ".shape"], [out])]
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def q8_rows(table: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """table [V, D] (D a multiple of ``block``) -> int8 rows [V, D/block, block] and fp32 scales
    [V, D/block, 1], one per block (llama.cpp's q8_0): row = (q * scale).reshape(V, D)."""
    w = np.asarray(table, dtype=np.float32)
    V, D = w.shape
    rows = w.reshape(V, D // block, block)
    scale = np.abs(rows).max(-1, keepdims=True) / 127
    scale[scale == 0] = 1
    return np.clip(np.rint(rows / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


# ------------------------------------------------------------------ convert
def convert(ck: Checkpoint, folder: Path, quantized: bool = True, progress=None, vocab: bool = False) -> None:
    """Export and quantise every part of ``ck`` into ``folder``, one part's fp32 weights at a time.
    ``quantized=False`` keeps the fp32 graphs (to test the export apart from quantisation);
    ``vocab`` adds the checkpoint's vocab.txt (a folder of its own, see ``export_int8``)."""
    model, rename = meta_model(ck)
    wanted = model.state_dict(keep_vars=True)
    # named for its entry and process, so one left by a killed conversion is known for what it is
    # (int8.cache's stale-conversion cleanup); a replaced entry waits aside under the same name + ".old"
    with atomic_folder(folder, prefix=f".convert-{folder.name}-{os.getpid()}-") as tmp:
        parts = model_parts(ck.cfg)
        step = _stepper(progress, conversion_steps(parts, quantized))
        for part in parts:
            step(f"read {part} weights")
            _fill(model, ck, rename, part)
            step(f"export {part}")
            paths = export_part(model, part, tmp)
            getattr(model, part).to("meta")  # free this part's fp32 weights before quantising
            release_free_memory()
            if quantized:
                step(f"quantise {part}")
            for path in paths:
                # the captioner's cross keys/values run over every image token; the answer
                # decoder's over a question's few
                scheme = dict(blocks=part.endswith("decoder"), many_rows=path.name == "text_decoder.cross_kv.onnx")
                finish_graph(path, scheme if quantized else None)
        step("write heads and config")
        if vocab:
            shutil.copyfile(ck.vocab, tmp / "vocab.txt")
        heads = {k: ck.tensors.get(rename[k]).float().numpy() for k in wanted if k.startswith(HEADS)}
        np.savez(tmp / "heads.npz", **heads)
        source = str(Path(ck.report.source).resolve())  # lets a later conversion of it replace this one
        (tmp / "config.json").write_text(json.dumps({"blipcam": ck.cfg.to_dict(), "engine": ENGINE_VERSION,
                                                     "source": source, "tensors": len(wanted)}))
    step("done")


def conversion_steps(parts: list[str], quantized: bool = True) -> list[str]:
    """What ``convert`` reports, in order: per part, reading its fp32 weights, exporting its
    graphs and quantising them (the longest step of a big part), then the heads and config."""
    stages = ("read {} weights", "export {}", "quantise {}") if quantized else ("read {} weights", "export {}")
    return [stage.format(part) for part in parts for stage in stages] + ["write heads and config", "done"]


def _stepper(progress, steps: list[str]):
    """-> ``step(name)``: reports ``progress(fraction of the steps done, name)`` as step ``name``
    starts, the n-th call of ``len(steps)`` (the last, ``"done"``: 1.0)."""
    done = iter(range(len(steps)))

    def step(name: str) -> None:
        n = next(done)
        if progress:
            progress(n / (len(steps) - 1), name)

    return step


def _fill(model: BlipModel, ck: Checkpoint, rename: dict, part: str | None, names: list[str] | None = None) -> None:
    """Set the fp32 weights of ``part`` of ``model`` (or exactly the tensors ``names``, a BLIP-2
    block); the others stay on the meta device."""
    if names is None:
        names = [name for name in model.state_dict(keep_vars=True) if name.startswith(part + ".")]
    filled = fill_module(model, lambda name: ck.tensors.get(rename[name]), names)
    refuse_mismatched(ck.report.source, [(rename[name], got, want) for name, got, want in filled.mismatched])


def export_int8(ck: Checkpoint, folder: Path, tasks: tuple[str, ...] | None = None, progress=None,
                converter=None) -> Path:
    """``blip convert``: the int8 graphs of ``ck`` (restricted to ``tasks``) in a new ``folder`` with
    the vocabulary, which ``blip_core.load(folder, precision="int8")`` reads on any machine with
    the same blipcam release, torch not needed: convert on a desktop, copy to a Pi. ``converter``
    (default ``convert``) is called as ``converter(ck, folder, progress=..., vocab=True)``: BLIP-2's
    is ``convert_blip2.convert_blip2`` (``convert_blip2.export_int8`` picks it by family, since
    this module cannot import that one: it imports this)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInputError(f"{folder} exists and is not an empty folder; choose a new one")
    restrict_tasks(ck, tasks)
    try:
        (converter or convert)(ck, folder, progress=progress, vocab=True)
    except OSError as e:
        raise StorageError(f"cannot write {folder}: {e.strerror or e}") from e
    return folder
