"""One code path for 1..N processes: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, a plain
``python -m`` run is world size 1 and every collective below is then a no-op.

Backend: nccl when CUDA is available, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init() -> DistInfo:
    """Join the process group when launched by torchrun (idempotent)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


@torch.no_grad()
def all_gather(t: torch.Tensor) -> torch.Tensor:
    """[B, ...] on every rank -> [world * B, ...] in rank order, no gradient (BLIP's
    ``concat_all_gather``). Every rank must pass the same shape."""
    if world() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each rank the gradient of its own slice, summed over
    ranks (every rank's loss used every slice)."""

    @staticmethod
    def forward(ctx, t):
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Like ``all_gather`` but gradients flow back to every rank's own tensor."""
    if world() == 1:
        return t
    return torch.cat(_GatherWithGrad.apply(t))


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalars over ranks (for logging)."""
    if world() == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / world()).tolist()))


def all_reduce_sum_int(value: int, device: torch.device) -> int:
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t)
    return int(t.item())


def all_gather_object(obj) -> list:
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out
