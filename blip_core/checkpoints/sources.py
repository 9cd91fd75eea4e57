"""Where a checkpoint's tensors and JSON come from: lazy tensor sources (safetensors headers,
memory-mapped .pth files) and checked readers for PyTorch pickles and JSON files.

torch is imported where tensors are made, not with this module: opening a checkpoint reads only
its config and the safetensors header, so the int8 runtime loads converted graphs without torch.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from blip_core.errors import CheckpointError, import_torch

if TYPE_CHECKING:
    import torch


class TensorSource:
    """Name -> tensor, read lazily where the file format allows (safetensors, mmap'd .pth), so a
    loader can convert or quantise one tensor at a time instead of holding every fp32 weight."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], getter: Callable[[str], torch.Tensor]):
        self.shapes = shapes
        self._get = getter

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(self, key: str) -> torch.Tensor:
        return self._get(key)

    @classmethod
    def from_dict(cls, sd: dict[str, torch.Tensor]) -> "TensorSource":
        import torch

        tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        return cls({k: tuple(v.shape) for k, v in tensors.items()}, tensors.__getitem__)

    @classmethod
    def from_safetensors(cls, files: Iterable[Path]) -> "TensorSource":
        from safetensors import safe_open

        owners, shapes = {}, {}
        for f in files:
            try:
                h = safe_open(str(f), framework="numpy")  # the header only; "pt" would import torch
                for k in h.keys():
                    shapes[k] = tuple(h.get_slice(k).get_shape())
                    owners[k] = str(f)
            except Exception as e:  # safetensors raises its own types for truncated/garbled headers
                raise CheckpointError(f"cannot read weights {f}: {e}; the file is damaged, download it again") from e

        @functools.cache
        def torch_handle(f: str):
            return safe_open(f, framework="pt")

        return cls(shapes, lambda k: torch_handle(owners[k]).get_tensor(k))


class DeferredTensorSource(TensorSource):
    """A TensorSource made on first use: a ``pytorch_model.bin`` folder opened for its config (as
    the int8 runtime does on a converted model) never loads the file, nor torch."""

    def __init__(self, make: Callable[[], TensorSource]):
        self._make = functools.cache(make)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._make().shapes

    def get(self, key: str) -> torch.Tensor:
        return self._make().get(key)


def torch_load(path: Path):
    """The object a PyTorch file holds, read with ``weights_only=True`` (no pickled code runs),
    memory-mapped where the file allows."""
    torch = import_torch(f"reading {path}")

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(_unreadable(path, e)) from e


def _unreadable(path: Path, e: Exception) -> str:
    """Why torch could not read ``path``. torch's own text for a pickle its weights-only loader
    refuses advises re-running with ``weights_only=False``, i.e. running whatever code the pickle
    holds; that advice is never passed on."""
    text = str(e)
    if "Weights only load failed" not in text:
        return f"cannot read {path}: {type(e).__name__}: {text.splitlines()[0][:200] if text else ''}; the file " \
               "is damaged or not a PyTorch checkpoint; download it again"
    if "Unsupported operand" in text:  # bytes that are no pickle at all (a garbled or truncated file)
        return f"cannot read {path}: it is not a pickle of tensors; the file is damaged or not a PyTorch " \
               "checkpoint; download it again"
    culprit = re.search(r"GLOBAL ([\w.]+)", text)
    what = f"its pickle imports {culprit.group(1)}" if culprit else "its pickle builds Python objects"
    return (f"cannot read {path}: it is not a plain weights file ({what}) and was refused for safety, since "
            "loading it could run code; use the model's safetensors release, or re-save only its tensors "
            "(the state_dict) on a machine where the file is trusted")


MAX_JSON_BYTES = 16 << 20  # a model's config.json is a few kB; anything this big is not one


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a missing, unreadable, garbled or non-object file is a
    CheckpointError naming it (a FileNotFoundError is let through for callers to explain)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MB; it is not a model's config")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, giant integers
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}; the file is damaged, "
                              "download or convert it again") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({{...}}), not a {type(data).__name__}; "
                              "the file is damaged, download or convert it again")
    return data
