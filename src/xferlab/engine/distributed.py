"""torch.distributed for xferlab runs: the process group torchrun describes, which rank writes, how a split is
sharded over the ranks and gathered back.

`torchrun --nproc-per-node N -m xferlab train ...` starts N processes with RANK, WORLD_SIZE and LOCAL_RANK set;
`init()` joins them into one process group (nccl on CUDA, gloo on CPU), each CUDA rank on GPU LOCAL_RANK; one
process started by torchrun joins a group of one, which is how one GPU measures the nccl/DDP path. Launched without
torchrun there is no process group and every helper here is the single-process identity, so the engine runs one
code path either way.

Training batches come from DistributedSampler (`set_epoch` reshuffles every epoch); `batch_size` stays the global
batch of a step, split evenly over the ranks, so the optimiser sees the same batch size and number of steps whatever
the world size. Evaluation shards a split with an unshuffled DistributedSampler, which pads the last round with
repeated items so every rank gets as many; `gather` interleaves the ranks' results back into dataset order and cuts
the padding off, so every item is counted exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from xferlab.errors import XferlabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size, the local rank that picks its GPU, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: single process, no process group

    @property
    def enabled(self) -> bool:
        """Whether this process is in a process group (launched by torchrun, even with one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the other ranks only compute."""
        return self.rank == 0

    # ---- sharding ------------------------------------------------------------------------------------------------

    def train_batches(self, n: int, batch_size: int, seed: int, epoch: int,
                      device: torch.device | str | None = None) -> list[torch.Tensor]:
        """This rank's index batches of one training epoch: a DistributedSampler shuffle of range(n) (seeded by
        seed and epoch; when n does not split evenly the sampler repeats a few items so every rank takes as many
        steps), cut into batches of batch_size / world_size, moved to `device` in one copy."""
        sampler = DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        return list((order if device is None else order.to(device)).split(self.local_batch(batch_size)))

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Optimiser steps in one epoch of train_batches (the same on every rank: the sampler pads to equal shares)."""
        return math.ceil(math.ceil(n / self.world_size) / self.local_batch(batch_size))

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise XferlabError(f"batch_size {batch_size} is the global batch and must split evenly over "
                               f"{self.world_size} processes; choose a multiple of {self.world_size}")
        return batch_size // self.world_size

    def eval_indices(self, n: int) -> torch.Tensor:
        """This rank's share of range(n) for evaluation, in order: ceil(n / world_size) items, padded by the sampler."""
        sampler = DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank, shuffle=False)
        return torch.tensor(list(sampler), dtype=torch.long)

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's `local` (its eval_indices(n) results, in that order) as one tensor in dataset order, on every
        rank. The unshuffled sampler gives rank r the items r, r + W, r + 2W, ... of range(n) padded to a multiple
        of W, so interleaving the ranks restores that padded order and the first n rows are range(n)."""
        if not self.enabled:
            return local[:n]
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        return interleave(parts, n)

    # ---- collectives (no-ops for one process) ----------------------------------------------------------------------

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP syncs them before each forward, but
        the last training step leaves each rank with statistics of its own batch."""
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (picklable values only)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`module` in DistributedDataParallel when there is more than one rank and it has something to train."""
        if not self.enabled or not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = Dist()


def interleave(parts: list[torch.Tensor], n: int) -> torch.Tensor:
    """Rank-ordered per-rank results of an unshuffled DistributedSampler back in dataset order, padding dropped."""
    return torch.stack(parts, dim=1).flatten(0, 1)[:n]


def launched_by_torchrun() -> bool:
    """torchrun (and other launchers of torch.distributed) set WORLD_SIZE and the rendezvous address."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    except ValueError:
        raise XferlabError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); "
                           "unset them to run as one process") from None


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join (or reuse) the process group torchrun describes; return it and this rank's device (cuda:LOCAL_RANK on
    CUDA). Without torchrun: SINGLE and `device` unchanged."""
    if not launched_by_torchrun():
        return SINGLE, device
    rank, world, local = env_world()
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise XferlabError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible; start "
                               "torchrun with --nproc-per-node at most the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        log.debug("rank %d of %d joined the %s process group", rank, world, backend)
    return Dist(rank, world, local, dist.get_backend()), device


def shutdown(barrier: bool = True) -> None:
    """Leave the process group, if this process joined one. With `barrier` (a command that finished normally) the
    ranks leave together: a rank that tears its connections down while rank 0 is still writing makes gloo abort.
    After an error there is no barrier, since a rank that failed alone would wait there forever."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier:
        try:
            dist.barrier()
        except (RuntimeError, dist.DistBackendError) as err:  # a rank failed after its last collective
            log.warning("ranks could not meet before leaving the process group: %s", err)
    dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one): the one that prints."""
    return env_world()[0] == 0


def weights_digest(module: torch.nn.Module) -> str:
    """A SHA-256 of every weight and buffer, to check that all ranks ended with the same model."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
