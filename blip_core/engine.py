"""The int8 engine behind ``precision="int8"``: ONNX Runtime with int8 weights.

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
graphs (``blip_core.graphs``) that mirror the fp32 path: the ViT; per text stack the
cross-attention keys/values of an image (or question); one decoding step (self-attention cache
in, grown cache out, cross keys/values shared by all rows of an image); and the bidirectional
encoder (question, ITM and ITC modes).

Converting needs the fp32 weights once, one part at a time (the ViT, then each text stack), so no
full fp32 copy of the model is ever in memory; the int8 graphs are cached on disk
(``$BLIPCAM_CACHE`` or ``~/.cache/blipcam``) and later loads read only them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import graphs
from .checkpoints import Checkpoint, _rename, _set_tensor
from .config import BlipConfig
from .errors import BadInputError, CheckpointError, StorageError
from .graphs import CrossKVGraph, EncoderGraph, StepGraph, VisionGraph, kv_shapes
from .models import BlipModel
from .text import TextTransformer

log = logging.getLogger(__name__)
ENGINE_VERSION = 4  # 2: lean graphs, transposed cross keys, block-quantised decoders; 3: word tables in blocks;
# 4: the ViT's attention output projections in fp32
HEADS = ("vision_proj", "text_proj", "itm_head")


def cache_root() -> Path:
    return Path(os.environ.get("BLIPCAM_CACHE") or Path.home() / ".cache" / "blipcam")


def _parts(cfg: BlipConfig) -> list[str]:
    parts = ["vision"]
    parts += [p for p, t in (("text_decoder", "caption"), ("answer_decoder", "vqa")) if t in cfg.tasks]
    if cfg.has_text_encoder:
        parts.append("text_encoder")
    return parts


def fingerprint(ck: Checkpoint) -> str:
    """Identity of the converted graphs: the checkpoint files (path, size, mtime), the model
    config, the engine / ONNX Runtime versions and the source of the export code (so a change to
    the graphs never meets a stale cache)."""
    import onnxruntime

    src = Path(ck.report.source).resolve()
    files = sorted(src.iterdir()) if src.is_dir() else [src]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (graphs, sys.modules[__name__]))).hexdigest()
    blob = json.dumps([ENGINE_VERSION, onnxruntime.__version__, stats, ck.cfg.to_dict(), code], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _kv_names(prefix: str, L: int) -> list[str]:
    return [f"{prefix}_{kind}{i}" for i in range(L) for kind in ("k", "v")]


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
    cross = _kv_names("cross", L)
    kv = lambda B, n: tuple(torch.randn(shape) for _ in range(L) for shape in kv_shapes(B, h, hd, n))  # noqa: E731
    axes = lambda name, rows, n: {0: rows, 3 if "_k" in name else 2: n}  # noqa: E731
    cross_axes = {n: axes(n, "B", "N") for n in cross}
    _export(CrossKVGraph(stack), (torch.randn(1, 5, cross_width),), paths[0], ["states"], cross,
            {"states": {0: "B", 1: "N"}, **cross_axes})
    if stack.lm_head is not None:
        past, present = _kv_names("past", L), _kv_names("present", L)
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


def quantize(src: Path, dst: Path, blocks: bool, many_rows: bool = False) -> None:
    """int8 weights for one graph, chosen by measurement (docs/benchmarks.md). ``blocks`` (the
    decoders: their steps and cross keys/values): ``MatMulNBits``, 8-bit weights in blocks of 32 and int8 compute on
    activations quantised per block of 32 too; per-tensor activations cost a small trained model a
    third of its identical greedy captions, blocks cost a step ~5% more time; ``many_rows`` (the
    captioner's cross keys/values over the image): fp32 compute where that is faster
    (``_fast_int8_blocks``). Everything else (the
    ViT, the bidirectional encoder): dynamic int8 MatMul (per-channel weights, activations per
    tensor), 2x faster than blocks there, whose kernels (on AVX2) are slow for many rows. Word
    embeddings: int8 rows in blocks of 32 (``block_quantize_word_tables``); ONNX Runtime's quantiser
    gives a table one scale, which rounds rare tokens' small rows coarsely. On the previous demo
    model (identical greedy captions int8 vs fp32, 200 scenes): one scale per table 91.5%, per row 93%,
    blocks of 32 95.0%, fp32 tables 95.5% (and, with one scale per table, the ViT in fp32 94.5%,
    the decoding step in fp32 96.5%: both parts' int8 arithmetic flips near-tied words). Blocks of
    32 add ~3 MB to a BLIP-base decoder; fp32 tables would add ~70 MB. The ViT keeps its attention
    output projections in fp32 (``vit_fp32_matmuls``). Its activations quantised per token
    instead (symmetric, uint8 around 128): no better on the previous demo model (ViT output error
    2.3% against 1.8% per tensor), and ONNX Runtime's MatMul fusions assume one activation scale,
    so they would need fusion turned off. fp32 compute in ``MatMulNBits`` (accuracy level 0/1)
    would spare the decoders' activations, but its 8-bit kernel is ~25x slower per step here."""
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
    scheme = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=level, bits=8,
                                          op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),))
    q = MatMulNBitsQuantizer(model, algo_config=scheme)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


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
        w = numpy_helper.to_array(table).astype(np.float32)
        V, D = w.shape
        rows = w.reshape(V, D // block, block)
        scale = np.abs(rows).max(-1, keepdims=True) / 127
        scale[scale == 0] = 1
        q = np.clip(np.rint(rows / scale), -127, 127).astype(np.int8)
        n = table.name
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([numpy_helper.from_array(q, n + ".q8"), numpy_helper.from_array(scale.astype(np.float32), n + ".scale"),
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


# ------------------------------------------------------------------ convert
def convert(ck: Checkpoint, folder: Path, quantized: bool = True, progress=None) -> None:
    """Export and quantise every part of ``ck`` into ``folder``, one part's fp32 weights at a time.
    ``quantized=False`` keeps the fp32 graphs (to test the export apart from quantisation)."""
    rename = _rename(ck)
    with torch.device("meta"):
        model = BlipModel(ck.cfg)
    wanted = model.state_dict(keep_vars=True)
    missing = [k for k in wanted if k not in rename]
    if missing:
        raise CheckpointError(f"{ck.report.source} lacks {len(missing)} weights (e.g. {missing[0]})")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        parts = _parts(ck.cfg)
        for n, part in enumerate(parts):
            if progress:
                progress(n / len(parts), f"converting to int8 (once): {part}")
            _fill(model, ck, rename, part)
            paths = export_part(model, part, tmp)
            getattr(model, part).to("meta")  # free this part's fp32 weights before quantising
            for path in paths:
                target = tmp / path.name.replace(".onnx", ".int8.onnx")
                if quantized:
                    # the captioner's cross keys/values run over every image token; the answer
                    # decoder's over a question's few
                    many_rows = path.name == "text_decoder.cross_kv.onnx"
                    quantize(path, target, blocks=part.endswith("decoder"), many_rows=many_rows)
                    path.unlink()
                else:
                    path.rename(target)
        heads = {k: ck.tensors.get(rename[k]).float() for k in wanted if k.startswith(HEADS)}
        torch.save(heads, tmp / "heads.pt")
        (tmp / "config.json").write_text(json.dumps({"blipcam": ck.cfg.to_dict(), "engine": ENGINE_VERSION}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fill(model: BlipModel, ck: Checkpoint, rename: dict, part: str) -> None:
    from .vision import resample_pos_embed

    for name, meta in model.state_dict(keep_vars=True).items():
        if not name.startswith(part + "."):
            continue
        value = ck.tensors.get(rename[name]).float()
        if name == "vision.pos_embed" and value.shape != meta.shape:
            value = resample_pos_embed(value, ck.cfg.vision.grid)
        if value.shape != meta.shape:
            raise CheckpointError(f"{rename[name]} has shape {tuple(value.shape)}, the model expects {tuple(meta.shape)}")
        _set_tensor(model, name, value)


# ------------------------------------------------------------------ runtime
class OrtModel:
    """Duck-types the parts of ``BlipModel`` that ``blip_core.api.Blip`` uses."""

    def __init__(self, cfg: BlipConfig, folder: Path, threads: int):
        import onnxruntime as ort

        self.cfg = cfg
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread pool for every session (vision -> cross keys -> decoding steps): its threads
        # busy-wait between runs without taking the cores from another session's. With a pool per
        # session a VQA follow-up took 125 ms spinning, 70 without, 55 with the one pool. Once it
        # exists ORT refuses every session of the process that asks for threads of its own, so an
        # app with other ONNX Runtime models sets BLIPCAM_ORT_SHARED_POOL=0 (before the first load).
        if (_global_pool_threads or _shared_pool_wanted()) and _size_global_pool(ort, threads):
            opts.use_per_session_threads = False  # thread counts set here would be ignored, with a warning
        else:  # opted out, or an ONNX Runtime without the global pool in Python: pools that never spin
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One arena for all sessions: the ViT's activations are freed before the decoder runs,
        # so the decoder reuses them instead of growing an arena of its own (-30 MB peak RSS).
        _shared_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
        self.sessions = {}
        for p in sorted(folder.glob("*.int8.onnx")):
            self.sessions[p.name[: -len(".int8.onnx")]] = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            _release_free_memory()  # after each graph: its transient copy never sits under the next one's
        self.heads = nn.Module()
        state = torch.load(folder / "heads.pt", weights_only=True)
        if "match" in cfg.tasks:
            e, vw, tw = cfg.embed_dim, cfg.vision.width, cfg.text.width
            self.heads.vision_proj, self.heads.text_proj, self.heads.itm_head = (
                nn.Linear(vw, e), nn.Linear(tw, e), nn.Linear(tw, 2))
            self.heads.load_state_dict(state)

    def eval(self):
        return self

    def _run(self, name: str, feed: dict) -> list[np.ndarray]:
        return self.sessions[name].run(None, feed)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run("vision", {"pixels": pixels.numpy()})[0])

    def cross_kv(self, part: str, states) -> list[np.ndarray]:
        states = states.numpy() if isinstance(states, torch.Tensor) else states
        return self._run(f"{part}.cross_kv", {"states": np.ascontiguousarray(states, dtype=np.float32)})

    def decoder_session(self, part: str, cross_kv: list[np.ndarray], cross_mask=None) -> "OrtDecoderSession":
        if cross_mask is not None and not bool(cross_mask.all()):
            raise BadInputError("the int8 engine decodes one unpadded question at a time")
        return OrtDecoderSession(self.sessions[f"{part}.step"], cross_kv, self.cfg)

    def _encode(self, ids, mask, cross_kv: list[np.ndarray] | None) -> torch.Tensor:
        t = self.cfg.text
        if cross_kv is None:  # text mode: cross-attention is computed on a dummy and discarded
            dummy = [np.zeros(shape, np.float32) for shape in kv_shapes(1, t.heads, t.width // t.heads, 1)]
            cross_kv, use = dummy * t.layers, np.array([False])
        else:
            use = np.array([True])
        feed = {"ids": ids.numpy(), "mask": mask.numpy(), "use_cross": use,
                **dict(zip(_kv_names("cross", t.layers), cross_kv))}
        return torch.from_numpy(self._run("text_encoder.encode", feed)[0])

    def encode_question(self, image_embeds, ids, mask, cross_kv=None) -> torch.Tensor:
        return self._encode(ids, mask, cross_kv if cross_kv is not None else self.cross_kv("text_encoder", image_embeds))

    def itm_logits(self, image_embeds, ids, mask, cross_kv=None) -> torch.Tensor:
        return self.heads.itm_head(self.encode_question(image_embeds, ids, mask, cross_kv)[:, 0])

    def text_features(self, ids, mask) -> torch.Tensor:
        return torch.nn.functional.normalize(self.heads.text_proj(self._encode(ids, mask, None)[:, 0]), dim=-1)

    def image_features(self, image_embeds) -> torch.Tensor:
        return torch.nn.functional.normalize(self.heads.vision_proj(image_embeds[:, 0]), dim=-1)


_global_pool_threads = 0  # size of ONNX Runtime's process-wide thread pool once sized here; -1: sized elsewhere


def _shared_pool_wanted() -> bool:
    return os.environ.get("BLIPCAM_ORT_SHARED_POOL", "1").strip().lower() not in ("0", "false", "no", "off")


def _size_global_pool(ort, threads: int) -> bool:
    """Size ONNX Runtime's process-wide thread pool for the first int8 model loaded. ORT cannot
    resize it, nor give a session a pool of its own once it exists, so later models share it.
    False when this onnxruntime cannot make one from Python."""
    global _global_pool_threads
    if not hasattr(ort, "set_global_thread_pool_sizes"):
        return False
    if not _global_pool_threads:
        try:
            ort.set_global_thread_pool_sizes(threads, 1)
            _global_pool_threads = threads
        except Exception:  # other code in this process sized it first
            _global_pool_threads = -1
    if _global_pool_threads != threads:
        size = f"{_global_pool_threads} threads" if _global_pool_threads > 0 else "a size set elsewhere"
        log.warning("int8 models in one process share ONNX Runtime's thread pool (%s); threads=%d does not "
                    "apply to this one", size, threads)
    return True


@functools.cache
def _shared_arena(ort) -> None:
    """Register (once per process) the CPU arena that sessions with ``use_env_allocators`` share;
    it grows by what is requested rather than by powers of two."""
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))  # 1 = kSameAsRequested


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc): loading a graph frees a transient copy
    of its weights that would otherwise stay in the process's resident set."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


class OrtDecoderSession:
    """``StepDecoder`` over an exported step graph; the prompt is fed one token at a time."""

    def __init__(self, session, cross_kv: list[np.ndarray], cfg: BlipConfig):
        t = cfg.text
        self.session, self.L = session, t.layers
        self.shape = (t.heads, t.width // t.heads)
        self.cross = dict(zip(_kv_names("cross", t.layers), cross_kv))
        self.past: list[np.ndarray] = []
        self.position = 0

    def _run(self, ids: np.ndarray) -> torch.Tensor:
        feed = {"ids": ids.astype(np.int64).reshape(-1, 1), "position": np.array([self.position], np.int64),
                **dict(zip(_kv_names("past", self.L), self.past)), **self.cross}
        logits, *self.past = self.session.run(None, feed)
        self.position += 1
        return torch.from_numpy(logits)

    def start(self, prompt_ids: torch.Tensor, group: int) -> torch.Tensor:
        B = prompt_ids.shape[0]
        self.past = [np.zeros(shape, np.float32) for _ in range(self.L) for shape in kv_shapes(B, *self.shape, 0)]
        self.position = 0
        ids = prompt_ids.numpy()
        for t in range(ids.shape[1]):
            logits = self._run(ids[:, t])
        if group > 1:
            rows = np.repeat(np.arange(B), group)
            self.past = [p[rows] for p in self.past]
            logits = logits[torch.from_numpy(rows)]
        return logits

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is not None:
            idx = rows.numpy()
            self.past = [p[idx] for p in self.past]
        return self._run(tokens.numpy())


def materialize_int8(ck: Checkpoint, tasks: tuple[str, ...] | None = None, threads: int | None = None,
                     progress=None) -> OrtModel:
    """Load ``ck`` as int8 ONNX Runtime graphs, converting (once, cached) if needed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise BadInputError("precision='int8' needs onnxruntime: pip install onnxruntime") from e
    if tasks:
        unavailable = [t for t in tasks if t not in ck.cfg.tasks]
        if unavailable:
            raise CheckpointError(f"{ck.report.source} has no weights for {', '.join(unavailable)}")
        ck.cfg = ck.cfg.with_tasks(*tasks)
    ck.report.tasks = ck.cfg.tasks
    folder = cache_root() / "int8" / fingerprint(ck)
    if not (folder / "config.json").is_file():
        log.info("converting %s to int8 (once) in %s", ck.report.source, folder)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            convert(ck, folder, progress=progress)
        except OSError as e:
            raise StorageError(f"cannot write the int8 engine cache in {folder.parent}: {e.strerror or e}; "
                               "free some space or point BLIPCAM_CACHE at a writable folder") from e
    ck.report.loaded = len(ck.tensors.keys())
    return OrtModel(ck.cfg, folder, threads or torch.get_num_threads())
