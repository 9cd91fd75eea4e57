"""The int8 runtime: loads the int8 ONNX graphs that ``blip_core.int8.convert`` converts (once, cached on
disk) and runs them with numpy arrays.

Nothing on this path imports torch, which costs ~200 MB of resident memory and ~1 s at start-up
(on a 4 GB Raspberry Pi that matters): the checkpoint is opened for its config only, images are
preprocessed and captions decoded in numpy, and the small matching heads are numpy matrices.
torch is imported only to convert a checkpoint the cache does not hold yet.

The cache (``$BLIPCAM_CACHE/int8``, one folder per checkpoint, tasks and engine) is used under a
file lock per entry: one process converts, others wait and load its result; an entry that does
not load (a garbled config.json after a power cut, a truncated graph) is converted again with a
warning; what killed conversions left behind is removed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import reprlib
import shutil
import time
from pathlib import Path

import numpy as np

from blip_core.checkpoints import INT8_FORMAT, read_json, restrict_tasks
from blip_core.model.config import BlipConfig
from blip_core.errors import BadInputError, CheckpointError, StorageError, import_torch
from blip_core.int8.memory import release_free_memory
from blip_core.int8.spec import ENGINE_VERSION, graph_names, kv_names, kv_shapes

log = logging.getLogger(__name__)
def cache_root() -> Path:
    return Path(os.environ.get("BLIPCAM_CACHE") or Path.home() / ".cache" / "blipcam")


def fingerprint(ck) -> str:
    """Identity of the converted graphs of checkpoint ``ck``: its files (path, size, mtime), the
    model config, and the engine / ONNX Runtime versions. Never the source text of the code: a
    comment edit must not throw away every user's cache (a 3.3-3.6 GB conversion on a Pi);
    ENGINE_VERSION is bumped when the graphs change, which tests/core/test_int8.py enforces."""
    import onnxruntime

    src = Path(ck.report.source).resolve()
    files = sorted(src.iterdir()) if src.is_dir() else [src]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    blob = json.dumps([ENGINE_VERSION, onnxruntime.__version__, stats, ck.cfg.to_dict()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OrtModel:
    """Duck-types the parts of ``BlipModel`` that ``blip_core.api.Blip`` uses, with numpy arrays in
    and out (``numpy_io``)."""

    numpy_io = True

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
        for name in graph_names(cfg):
            path = str(folder / f"{name}.int8.onnx")
            self.sessions[name] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            release_free_memory()  # after each graph: its transient copy never sits under the next one's
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
        return self._encode(ids, mask, cross_kv if cross_kv is not None else self.cross_kv("text_encoder", image_embeds))

    def itm_logits(self, image_embeds, ids, mask, cross_kv=None) -> np.ndarray:
        return self._linear("itm_head", self.encode_question(image_embeds, ids, mask, cross_kv)[:, 0])

    def text_features(self, ids, mask) -> np.ndarray:
        return _l2_normalize(self._linear("text_proj", self._encode(ids, mask, None)[:, 0]))

    def image_features(self, image_embeds) -> np.ndarray:
        return _l2_normalize(self._linear("vision_proj", image_embeds[:, 0]))


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


def _prune_superseded(folder: Path) -> None:
    """Delete the cache entries that the new one in ``folder`` replaces: conversions of the same
    checkpoint path for the same tasks by other code or of an older file, and entries of engines
    before 5, which did not record their checkpoint. Nothing else can reach them, and a BLIP-base
    conversion is 0.3-0.4 GB (an SD card fills up over a few upgrades). Another process still
    running one of them is unaffected: its graphs were read at load; one loading it now holds its
    lock, and the entry is left alone."""
    new = read_json(folder / "config.json")
    freed = 0
    for other in folder.parent.iterdir():
        if other == folder or other.name.startswith("."):  # ".convert-*": a conversion in progress
            continue
        try:
            meta = read_json(other / "config.json")
        except (OSError, CheckpointError):  # not an entry of ours, or a damaged one (rebuilt when used)
            continue
        engine = meta.get("engine", ENGINE_VERSION)
        same = meta.get("source") == new["source"] and meta.get("blipcam") == new["blipcam"]
        if same or ("source" not in meta and type(engine) is int and engine < 5):
            with _entry_lock(other, wait=False) as held:
                if held:
                    freed += sum(f.stat().st_size for f in other.iterdir() if f.is_file())
                    shutil.rmtree(other, ignore_errors=True)
    if freed:
        log.info("removed superseded int8 conversions from %s (%.0f MB)", folder.parent, freed / 1e6)


# ------------------------------------------------------------------ the cache's entries
STALE_CONVERSION_S = 6 * 3600  # a conversion this old is dead (BLIP-large converts in minutes, even on a Pi)
# a conversion's temporary folder: ``.convert-<entry>-<pid of its process>-<random>`` (engine.convert)
_CONVERSION = re.compile(r"^\.convert-(?P<entry>.+)-(?P<pid>\d+)-[^-]*$")


@contextlib.contextmanager
def _entry_lock(folder: Path, wait: bool = True, progress=None):
    """Hold the lock of cache entry ``folder`` (``locks/int8-<entry>.lock`` in the cache; an OS file
    lock, so a killed holder never leaves it held). Whoever holds it may convert, check, load or
    delete the entry. Yields whether it is held: with ``wait=False``, False when another process
    holds it."""
    from filelock import FileLock, Timeout

    path = folder.parent.parent / "locks" / f"{folder.parent.name}-{folder.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield False
            return
        log.info("waiting for another process converting or loading %s", folder)
        if progress:
            progress(0.0, "waiting for another blipcam process converting this model to int8")
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill there would end the process: go by age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no pid can be
        return True
    return True


def _remove_stale_conversions(folder: Path) -> None:
    """Delete the temporary folders of conversions that will never finish (killed, or the machine
    lost power): this entry's (its lock is held, so none of its conversions runs), those of a
    process that is gone, and any older than STALE_CONVERSION_S."""
    for tmp in folder.parent.glob(".convert-*"):
        match = _CONVERSION.match(tmp.name)
        try:
            old = time.time() - tmp.stat().st_mtime > STALE_CONVERSION_S
        except OSError:  # removed meanwhile
            continue
        if old or (match and (match["entry"] == folder.name or not _pid_alive(int(match["pid"])))):
            log.info("removing %s, left by a conversion that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _converted_meta(folder: Path, cfg: BlipConfig | None = None) -> dict:
    """The checked ``config.json`` of converted graphs in ``folder``: written by this engine
    version, with its tensor count; with ``cfg``, a cache entry's must record exactly that model.
    Anything else is a CheckpointError saying what is wrong."""
    path = folder / "config.json"
    try:
        meta = read_json(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder} has no config.json") from e
    engine = meta.get("engine")
    if type(engine) is not int or engine != ENGINE_VERSION:
        raise CheckpointError(f"{folder} was converted by another blipcam release (int8 engine "
                              f"{reprlib.repr(engine)}; this one reads {ENGINE_VERSION})")
    tensors = meta.get("tensors", 0)
    if type(tensors) is not int or tensors < 0:
        raise CheckpointError(f"{path}: tensors must be a whole number, got {reprlib.repr(tensors)}")
    if cfg is not None and meta.get("blipcam") != cfg.to_dict():
        raise CheckpointError(f"{path} does not describe the model converted there")
    return meta


def materialize_int8(ck, threads: int, tasks: tuple[str, ...] | None = None, progress=None) -> OrtModel:
    """Load ``ck`` as int8 ONNX Runtime graphs: a folder of them (``blip convert``), or a checkpoint
    converted once and cached."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise BadInputError("precision='int8' needs onnxruntime: pip install onnxruntime") from e
    restrict_tasks(ck, tasks)
    if ck.report.format == INT8_FORMAT:
        model, meta = _load_converted(ck, threads)
    else:
        model, meta = _load_cached(ck, threads, progress)
    # the checkpoint's tensors the conversion used (counting them again would read a .bin file)
    ck.report.loaded = meta.get("tensors", 0)
    return model


def _load_converted(ck, threads: int) -> tuple[OrtModel, dict]:
    """A folder written by ``blip convert``: never converted again nor deleted here."""
    folder, hint = Path(ck.report.source), "; convert the original checkpoint again with blip convert"
    try:
        meta = _converted_meta(folder)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{hint}") from e
    return _open_graphs(ck.cfg, folder, threads, hint), meta


def _load_cached(ck, threads: int, progress) -> tuple[OrtModel, dict]:
    """Load ``ck``'s entry in the int8 cache, converting it first if it is missing or damaged.
    Under the entry's lock: a second process converting the same checkpoint waits, then loads the
    first one's graphs (two conversions racing deleted each other's folders); nothing deletes the
    entry while it loads."""
    folder = cache_root() / "int8" / fingerprint(ck)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _entry_lock(folder, progress=progress):
            _remove_stale_conversions(folder)
            return _load_or_convert(ck, folder, threads, progress)
    except OSError as e:
        raise StorageError(f"cannot use the int8 engine cache in {folder.parent}: {e.strerror or e}; free some "
                           "space or point BLIPCAM_CACHE at a writable folder") from e


def _load_or_convert(ck, folder: Path, threads: int, progress) -> tuple[OrtModel, dict]:
    if folder.exists():
        try:
            meta = _converted_meta(folder, ck.cfg)
            return _open_graphs(ck.cfg, folder, threads), meta
        except CheckpointError as e:  # damaged: a garbled config.json (a power cut), a truncated graph, a lost file
            log.warning("%s; converting again", e)
            shutil.rmtree(folder, ignore_errors=True)
    _convert(ck, folder, progress)
    return _open_graphs(ck.cfg, folder, threads), _converted_meta(folder, ck.cfg)


def _open_graphs(cfg: BlipConfig, folder: Path, threads: int, hint: str = "") -> OrtModel:
    try:
        return OrtModel(cfg, folder, threads)
    except MemoryError:
        raise
    except Exception as e:  # ORT's errors for a damaged graph, numpy's for damaged heads, a lost file
        raise CheckpointError(f"cannot load the int8 graphs in {folder}: {e}{hint}") from e


def _convert(ck, folder: Path, progress) -> None:
    log.info("converting %s to int8 (once) in %s", ck.report.source, folder)
    import_torch(f"converting {ck.report.source} to int8 (once)")
    from blip_core.int8.convert import convert

    convert(ck, folder, progress=progress)
    _prune_superseded(folder)
