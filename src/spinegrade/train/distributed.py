"""Single process or DistributedDataParallel under `torchrun`, behind one small context object.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs in one process and the helpers
below do nothing. gloo is used on CPU, nccl on GPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", backend: str | None = None, timeout_hours: float | None = None) -> DistContext:
    """Join the process group when launched by torchrun (idempotent); pick the device.

    backend: default nccl on GPU, gloo on CPU. timeout_hours: how long a collective (a barrier) may wait for
    the slowest rank (torch's default, minutes, suits training steps, not ranks grading different studies).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        from datetime import timedelta

        kw = {"timeout": timedelta(hours=timeout_hours)} if timeout_hours else {}
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"), **kw)
    return DistContext(rank, world, local_rank, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def gather_objects(ctx: DistContext, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across(ctx: DistContext, total: float, count: int) -> float:
    """sum(total) / sum(count) over ranks."""
    if ctx.distributed:
        t = torch.tensor([total, count], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(t)
        total, count = t.tolist()
    return total / max(count, 1)


def sync_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank, so all ranks evaluate the same model."""
    if ctx.distributed:
        for b in module.buffers():
            dist.broadcast(b, src=0)
