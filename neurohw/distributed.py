"""torch.distributed for data-parallel training (`torchrun --nproc_per_node=K -m neurohw train ...`).

Every process holds the whole net; each mini-batch of the global size B is split into K contiguous
shards of B/K samples; after a learner has written its gradient (a batch mean) into `.grad`, the
gradients are averaged over processes, so every process applies the update of the global batch.
Randomness that must agree (shuffling, augmentation draws, the sign of β) comes from generators seeded
identically on every process and drawn for the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "DistContext":
        """Join the process group that torchrun describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)  # NCCL's buffers on this process's GPU
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    def shard(self, batch: int) -> slice:
        """This process's part of a global batch of `batch` samples."""
        local = batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
