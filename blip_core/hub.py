"""Fetching checkpoints from the Hugging Face hub (once; afterwards from its cache).

Offline machines get a clear ``WeightsUnavailableError`` within seconds, not after the client's
minute of retries: we look in the cache first and probe the hub before downloading.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from blip_core.errors import WeightsUnavailableError

Progress = Callable[[float, str], None]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
SHARD_INDEX = "model.safetensors.index.json"  # BLIP-2's weights come in shards it names
OPTIONAL_FILES = ("vocab.txt", "tokenizer.json", "vocab.json", "merges.txt", "preprocessor_config.json")
# The Salesforce checkpoint used for each task when none is named (the CLI's and the app's default).
DEFAULT_MODELS = {
    "caption": "Salesforce/blip-image-captioning-base",
    "vqa": "Salesforce/blip-vqa-base",
    "match": "Salesforce/blip-itm-base-coco",
}


def looks_like_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not Path(source).exists()


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _progress_tqdm(progress: Progress | None, label: str):
    """A tqdm class that also reports to ``progress(fraction, message)`` (for GUIs)."""
    from tqdm.auto import tqdm  # here, so that importing the hub's names (DEFAULT_MODELS) stays instant

    if progress is None:
        return tqdm

    class _Reporting(tqdm):
        def update(self, n=1):
            out = super().update(n)
            if self.total:
                progress(min(1.0, self.n / self.total), f"downloading {label}")
            return out

    return _Reporting


def _download(repo_id: str, filename: str, local_only: bool, progress: Progress | None) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only,
                                    tqdm_class=_progress_tqdm(progress, f"{repo_id}/{filename}")))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def _shards(index: Path) -> list[str]:
    """The shard file names a sharded checkpoint's index lists (checked again when opened)."""
    from blip_core.checkpoints.sources import read_json

    weight_map = read_json(index).get("weight_map")
    names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    return [n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")]


def fetch(repo_id: str, progress: Progress | None = None) -> Path:
    """Make ``repo_id``'s config, weights and vocab available locally; return their folder."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            raise WeightsUnavailableError(
                f"{repo_id} is not in the Hugging Face cache and the hub cannot be reached; connect once "
                "to download it, or pass a local folder / .pth file (the bundled demo model works offline)"
            )
        try:
            config = _download(repo_id, "config.json", local_only, progress)
            if config is None:
                continue
            weights = next((w for f in WEIGHT_FILES if (w := _download(repo_id, f, local_only, progress))), None)
            if weights is None:
                continue
            if weights.name == SHARD_INDEX:
                missing = [n for n in _shards(weights) if _download(repo_id, n, local_only, progress) is None]
                if missing:
                    continue
            for name in OPTIONAL_FILES:
                _download(repo_id, name, local_only, progress)
        except RepositoryNotFoundError as e:
            raise WeightsUnavailableError(f"no model {repo_id!r} on the Hugging Face hub (check the name)") from e
        except (HfHubHTTPError, OSError) as e:
            raise WeightsUnavailableError(f"could not download {repo_id}: {e}") from e
        if progress:
            progress(1.0, f"{repo_id} ready")
        return config.parent
    raise WeightsUnavailableError(
        f"{repo_id} on the hub has no config.json with model.safetensors or pytorch_model.bin")
