"""Atomic writes: a folder (or a file) is written aside, flushed to disk, then swapped in by a
rename, so an interrupted write (full disk, kill, power cut) never leaves a half-written model,
training checkpoint, int8 cache entry or corpus file where a whole one was.

The one home of "write aside, then swap in": ``blip_core.checkpoints.save`` / ``export_hf``, the
int8 conversion (``blip_core.int8.convert``) and training (``training.run_state``,
``training.capfilt``, ``training.vocab``) all write through it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_folder(folder: str | os.PathLike, prefix: str | None = None, staging: str | None = None,
                  aside: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``folder`` to write into; when the block ends without
    an exception, flush its files to disk and swap it in for ``folder``, else delete it.

    Names (all in ``folder``'s parent), so that a writer's leftovers are recognisable to whoever
    tidies them (``training.run_state.clean_interrupted_saves``, the int8 cache's stale-conversion
    cleanup):

    - ``staging``: a fixed staging name (one left by an earlier, killed run of this writer is
      removed first); else a fresh ``{prefix}<random>`` (default prefix ``.{folder name}.``);
    - ``aside``: where a replaced ``folder`` waits while the new one is renamed into place, so one
      of them is whole at every moment; default the staging name + ``.old``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if staging is not None:
        tmp = folder.with_name(staging)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    else:
        tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        for path in tmp.iterdir():
            if path.is_file():
                _fsync(path)
        if folder.exists():
            old = folder.with_name(aside or f"{tmp.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        _fsync(folder.parent)  # the renames themselves
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` via a flushed temporary file and a rename: readers,
    and other processes writing the same file at once (training ranks), see the old or the new
    file whole, never a mix. An OSError is raised as is, with no temporary file left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
