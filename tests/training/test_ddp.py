"""Two processes under torchrun (gloo on CPU): parameters, momentum encoders and queues stay
identical on every rank, and the queues hold the all-gathered global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.tiny_runs import records
from training.data import EpochBatches
from training.run_state import load_state

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(command: str, world: int, **args) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                        str(WORKER), command, *[f"{k}={v}" for k, v in args.items()]],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]


def _identical(folder: Path, world: int) -> dict:
    states = [torch.load(folder / f"rank{r}.pt") for r in range(world)]
    assert all(s.keys() == states[0].keys() for s in states)
    different = [k for s in states[1:] for k in s if not torch.equal(s[k], states[0][k])]
    assert not different
    return states[0]


def state_changed(state: dict) -> bool:
    """The momentum encoder trails the model: after a few steps with lr > 0 they differ."""
    return not torch.equal(state["model.vision.blocks.0.mlp.fc1.weight"],
                           state["momentum_model.model.vision.blocks.0.mlp.fc1.weight"])


def test_two_ranks_stay_identical(tmp_path):
    steps, batch, world, n, queue = 3, 4, 2, 32, 20
    _torchrun("pretrain", world, model="tiny", image_size=16, embed_dim=16, scene_count=n, batch_size=batch,
              queue_size=queue, max_steps=steps, save_every=steps, log_every=1, progress="false",
              negatives_all_ranks="true", output_dir=tmp_path)
    r0 = _identical(tmp_path, world)
    # model, temp, momentum_model.*, queue.* all identical
    assert any(k.startswith("momentum_model.") for k in r0) and "queue.image" in r0 and "temp" in r0
    # the queue holds every rank's momentum features: the global batches' image ids, rank by rank
    expected = torch.full((queue,), -1, dtype=torch.long)
    ranks = [list(EpochBatches(n, batch, r, world, seed=0, epoch=0)) for r in range(world)]
    for s in range(steps):
        for j, key in enumerate(k for r in range(world) for k in ranks[r][s]):
            expected[(s * batch * world + j) % queue] = key
    assert torch.equal(r0["queue.ids"], expected) and int(r0["queue.ptr"]) == steps * batch * world % queue
    # training happened (identical but not frozen), and rank 0 alone logged and saved
    assert float(r0["temp"]) != 0.07 and state_changed(r0)
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]
    state = load_state(tmp_path / "checkpoints" / f"step-{steps:07d}")
    assert state["world"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank streams


@pytest.mark.slow  # multi-process or long: make test-slow (make test's time budget)
def test_multitask_finetune_under_torchrun(tmp_path, pretrained):
    """Every part (caption, VQA, ITC/ITM with all-rank negatives) in one DDP step, and rank 0's
    epoch-end evaluation while the other rank waits."""
    _torchrun("finetune", 2, init=pretrained, tasks="caption,vqa,retrieval", scene_count=16, batch_size=4,
              queue_size=10, max_steps=2, log_every=1, progress="false", negatives_all_ranks="true", val_count=2,
              k_test=2, output_dir=tmp_path)
    state = _identical(tmp_path, 2)
    assert any(k.startswith("model.answer_decoder.") for k in state)
    recs = records(tmp_path)
    assert {"loss_itc", "loss_itm", "loss_lm", "loss_vqa"} <= set(recs[0])
    assert {"caption", "vqa", "retrieval"} == set(next(r["eval"] for r in recs if "eval" in r))
