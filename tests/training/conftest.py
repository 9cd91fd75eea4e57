from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.tiny_runs import tiny
from training import config as C


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A checkpoint of a few pre-training steps (caption + match parts, tied text stacks)."""
    from training import pretrain

    out = tmp_path_factory.mktemp("pretrain")
    pretrain.run(tiny(C.PretrainConfig, out, max_steps=4))
    return out / "checkpoints" / "step-0000004"
