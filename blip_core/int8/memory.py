"""Handing freed heap memory back to the OS, for the converter and the runtime alike (no torch)."""

from __future__ import annotations

import functools


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc): loading or converting a graph frees
    transient copies of its weights that would otherwise stay in the process's resident set."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once (finding libc runs ldconfig); None elsewhere (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
