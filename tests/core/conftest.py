from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.helpers import save_hf, seeded_hf_model


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Tiny seeded transformers BLIP models saved with save_pretrained, one per task."""
    root = tmp_path_factory.mktemp("hf")
    return {task: save_hf(seeded_hf_model(task, seed=i), root / task)
            for i, task in enumerate(("caption", "vqa", "match"))}


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A few distinct RGB images on disk and in memory."""
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        arr = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        arr[:, : 16 * (i + 1)] = [255 * (i == 0), 255 * (i == 1), 255 * (i == 2)]
        path = root / f"img{i}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out
