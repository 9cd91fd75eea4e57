"""The int8 runtime: runs the int8 ONNX graphs that ``blip_core.int8.convert`` wrote, with numpy
arrays in and out (``blip_core.int8.cache`` finds or makes them).

Nothing on this path imports torch, which costs ~200 MB of resident memory and ~1 s at start-up
(on a 4 GB Raspberry Pi that matters): images are preprocessed and captions decoded in numpy, and
the small matching heads are numpy matrices. All sessions of a process share one ONNX Runtime
thread pool and one memory arena.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from blip_core.errors import BadInputError
from blip_core.int8.memory import release_free_memory
from blip_core.int8.spec import graph_names, kv_names, kv_shapes
from blip_core.model.config import BlipConfig

log = logging.getLogger(__name__)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OrtModel:
    """Duck-types the parts of ``BlipModel`` that ``blip_core.api.Blip`` uses, with numpy arrays in
    and out (``numpy_io``)."""

    numpy_io = True

    def __init__(self, cfg: BlipConfig, folder: Path, threads: int):
        import onnxruntime as ort

        self.cfg = cfg
        opts = session_options(ort, threads)
        self.sessions = {}
        for name in graph_names(cfg):
            self.sessions[name] = open_session(ort, folder / f"{name}.int8.onnx", opts)
        with np.load(folder / "heads.npz") as heads:  # the matching heads: [out, in] weights, [out] biases
            self.heads = {k: heads[k] for k in heads.files}

    def eval(self):
        return self

    def _run(self, name: str, feed: dict) -> list[np.ndarray]:
        return self.sessions[name].run(None, feed)

    def _linear(self, head: str, x: np.ndarray) -> np.ndarray:
        return x @ self.heads[f"{head}.weight"].T + self.heads[f"{head}.bias"]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [B, 3, S, S] -> image_embeds [B, 1 + N, Dv]."""
        return self._run("vision", {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def cross_kv(self, part: str, states: np.ndarray) -> list[np.ndarray]:
        return self._run(f"{part}.cross_kv", {"states": np.ascontiguousarray(states, dtype=np.float32)})

    def decoder_session(self, part: str, cross_kv: list[np.ndarray], cross_mask=None) -> "OrtDecoderSession":
        if cross_mask is not None and not np.all(cross_mask):
            raise BadInputError("the int8 engine decodes one unpadded question at a time")
        return OrtDecoderSession(self.sessions[f"{part}.step"], cross_kv, self.cfg)

    def _encode(self, ids, mask, cross_kv: list[np.ndarray] | None) -> np.ndarray:
        t = self.cfg.text
        if cross_kv is None:  # text mode: cross-attention is computed on a dummy and discarded
            dummy = [np.zeros(shape, np.float32) for shape in kv_shapes(1, t.heads, t.width // t.heads, 1)]
            cross_kv, use = dummy * t.layers, np.array([False])
        else:
            use = np.array([True])
        feed = {"ids": np.asarray(ids, np.int64), "mask": np.asarray(mask, np.int64), "use_cross": use,
                **dict(zip(kv_names("cross", t.layers), cross_kv))}
        return self._run("text_encoder.encode", feed)[0]

    def encode_question(self, image_embeds, ids, mask, cross_kv=None) -> np.ndarray:
        if cross_kv is None:
            cross_kv = self.cross_kv("text_encoder", image_embeds)
        return self._encode(ids, mask, cross_kv)

    def itm_logits(self, image_embeds, ids, mask, cross_kv=None) -> np.ndarray:
        return self._linear("itm_head", self.encode_question(image_embeds, ids, mask, cross_kv)[:, 0])

    def text_features(self, ids, mask) -> np.ndarray:
        return _l2_normalize(self._linear("text_proj", self._encode(ids, mask, None)[:, 0]))

    def image_features(self, image_embeds) -> np.ndarray:
        return _l2_normalize(self._linear("vision_proj", image_embeds[:, 0]))


def session_options(ort, threads: int):
    """The ``SessionOptions`` every int8 session of the process is made with (both model families):
    full graph optimisation, the one shared thread pool and the one shared memory arena."""
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
    return opts


def open_session(ort, path: Path, opts):
    """An ONNX Runtime session of the graph at ``path``, the heap trimmed after it: its transient
    copy of the weights never sits under the next graph's."""
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    release_free_memory()
    return session


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


class OrtDecoderSession:
    """``StepDecoder`` over an exported step graph; the prompt is fed one token at a time."""

    def __init__(self, session, cross_kv: list[np.ndarray], cfg: BlipConfig):
        t = cfg.text
        self.session, self.L = session, t.layers
        self.shape = (t.heads, t.width // t.heads)
        self.cross = dict(zip(kv_names("cross", t.layers), cross_kv))
        self.past_names = kv_names("past", t.layers)
        self.past: list[np.ndarray] = []
        self.position = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        feed = {"ids": np.asarray(ids, np.int64).reshape(-1, 1), "position": np.array([self.position], np.int64),
                **dict(zip(self.past_names, self.past)), **self.cross}
        logits, *self.past = self.session.run(None, feed)
        self.position += 1
        return logits

    def start(self, prompt_ids: np.ndarray, group: int) -> np.ndarray:
        ids = np.asarray(prompt_ids, np.int64)
        B = ids.shape[0]
        self.past = [np.zeros(shape, np.float32) for _ in range(self.L) for shape in kv_shapes(B, *self.shape, 0)]
        self.position = 0
        for t in range(ids.shape[1]):
            logits = self._run(ids[:, t])
        if group > 1:
            rows = np.repeat(np.arange(B), group)
            self.past = [p[rows] for p in self.past]
            logits = logits[rows]
        return logits

    def step(self, tokens: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        if rows is not None:
            self.past = [p[rows] for p in self.past]
        return self._run(tokens)
