"""torch.distributed in a few helpers (torchvision references' habits): read torchrun's RANK / WORLD_SIZE /
LOCAL_RANK, start the process group (nccl on CUDA, gloo on CPU), shard index ranges with DistributedSampler, and
gather results in the original order with the sampler's padding removed.

Launched without torchrun everything degrades to one process: world size 1, rank 0, gathers are identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from xferlab.errors import XferlabError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (once per process); return the context and this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    ctx = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if torch.cuda.device_count() <= ctx.local_rank:
            raise XferlabError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                               "start at most one process per GPU (torchrun --nproc-per-node)")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def current() -> Dist:
    """The context of an initialised process group, or the single-process one."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_indices(n: int, ctx: Dist, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> torch.Tensor:
    """This rank's indices of range(n), as DistributedSampler draws them (padded by wrapping to equal length)."""
    if not ctx.enabled:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)) if shuffle else torch.arange(n)
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)  # a different order every epoch, identical on every rank's view of the permutation
    return torch.tensor(list(sampler), dtype=torch.long)


def gather_rows(local: torch.Tensor, indices: torch.Tensor, n: int, ctx: Dist) -> torch.Tensor:
    """Every rank's rows (local[i] belongs to item indices[i]) assembled into an n-row tensor in item order.

    DistributedSampler pads by repeating items; a repeated item's rows are identical, so writing them twice is
    harmless and nothing is dropped or counted twice.
    """
    if not ctx.enabled:
        out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
        out[indices.to(local.device)] = local
        return out
    # gloo and nccl gather equal shapes: DistributedSampler gives every rank the same count, so no extra padding
    rows = [torch.empty_like(local) for _ in range(ctx.world_size)]
    idx = [torch.empty_like(indices.to(local.device)) for _ in range(ctx.world_size)]
    dist.all_gather(rows, local.contiguous())
    dist.all_gather(idx, indices.to(local.device).contiguous())
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    out[torch.cat(idx)] = torch.cat(rows)
    return out


def all_reduce_sum(t: torch.Tensor, ctx: Dist) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
