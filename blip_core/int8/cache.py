"""The int8 cache: the converted graphs of each checkpoint, on disk, converted once.

``$BLIPCAM_CACHE/int8`` (or ``~/.cache/blipcam/int8``) holds one folder per checkpoint, tasks and
engine (``fingerprint``), used under a file lock per entry: one process converts, others wait and
load its result; an entry that does not load (a garbled config.json after a power cut, a truncated
graph) is converted again with a warning; what killed conversions left behind is removed, and so
are the entries a new conversion supersedes. Folders written by ``blip convert`` are loaded as
they are. Converting needs torch and is imported only then: loading a cached entry never imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import reprlib
import shutil
import time
from pathlib import Path

from blip_core.checkpoints import INT8_FORMAT, read_json, restrict_tasks
from blip_core.errors import BadInputError, CheckpointError, StorageError, import_torch
from blip_core.int8.runtime import OrtModel
from blip_core.int8.spec import ENGINE_VERSION, LLM_BITS
from blip_core.model.config import BlipConfig

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
    key = [ENGINE_VERSION, onnxruntime.__version__, stats, ck.cfg.to_dict()]
    if ck.family == "blip2":  # the LLM's bits are BLIP-2's own engine choice
        key.append(LLM_BITS)
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


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


STALE_CONVERSION_S = 6 * 3600  # a conversion this old is dead (BLIP-large converts in minutes, even on a Pi)
# a conversion's temporary folder: ``.convert-<entry>-<pid of its process>-<random>`` (``convert.convert``)
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
        if getattr(cfg, "family", "blip") == "blip2":
            from blip_core.int8.runtime_blip2 import OrtBlip2Model

            return OrtBlip2Model(cfg, folder, threads)
        return OrtModel(cfg, folder, threads)
    except MemoryError:
        raise
    except Exception as e:  # ORT's errors for a damaged graph, numpy's for damaged heads, a lost file
        raise CheckpointError(f"cannot load the int8 graphs in {folder}: {e}{hint}") from e


def _convert(ck, folder: Path, progress) -> None:
    log.info("converting %s to int8 (once) in %s", ck.report.source, folder)
    import_torch(f"converting {ck.report.source} to int8 (once)")
    if ck.family == "blip2":
        from blip_core.int8.convert_blip2 import convert_blip2 as convert
    else:
        from blip_core.int8.convert import convert

    convert(ck, folder, progress=converting(progress))
    _prune_superseded(folder)


CONVERTING = "converting to int8 (once)"  # how the steps of a conversion on first use are announced


def converting(progress):
    """``progress`` with each conversion step named as part of a first use's conversion (a load
    that was expected to be quick), e.g. "converting to int8 (once): quantise vision"."""
    if progress is None:
        return None
    return lambda fraction, step: progress(fraction, f"{CONVERTING}: {step}")
