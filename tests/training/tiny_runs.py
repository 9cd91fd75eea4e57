"""Tiny settings shared by the training tests: a 2-layer, 32-wide model on 16 px scenes."""

from __future__ import annotations

import json
from pathlib import Path

from training import config as C

TINY = dict(model="tiny", vocab="scenes", image_size=16, embed_dim=16, data="scenes", scene_count=32,
            batch_size=8, queue_size=20, max_tokens=30, progress=False, log_every=1, lr=1e-3,
            warmup_steps=2, val_count=4, eval_batch_size=8, k_test=4)


def tiny(cls, out: Path, **overrides):
    """A config of class ``cls`` with the tiny settings (those it has) and ``overrides``."""
    keys = set(cls.__dataclass_fields__)
    values = {k: v for k, v in {**TINY, "output_dir": str(out), **overrides}.items() if k in keys}
    return C.parse(cls, None, [f"{k}={v}" for k, v in values.items()])


def records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
