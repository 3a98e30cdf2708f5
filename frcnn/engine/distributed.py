"""Data-parallel training under `torchrun`: the process group, and each rank's share of a batch.

Every rank sees the same global order of images (a function of seed and epoch), so a run on one
process and on several visit the same batches, and a resumed run continues where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0



def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    return info



class EpochBatches:
    """Batches of dataset indices for one epoch, sharded across ranks, resumable mid-epoch.

    The permutation depends on (seed, epoch) only, so every rank — and a resumed run — sees the
    same global order. Global batch b holds indices [b*B*world, (b+1)*B*world); rank r takes its
    r-th slice of B. The last incomplete global batch is dropped so ranks stay in step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, dist_info: DistInfo,
                 start_batch: int = 0, order: list[int] | None = None) -> None:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        self.perm = (torch.randperm(n, generator=g).tolist() if order is None else order)
        self.global_batch = batch_size * dist_info.world_size
        self.batch_size = batch_size
        self.rank = dist_info.rank
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(len(self.perm) // self.global_batch - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start_batch, len(self.perm) // self.global_batch):
            lo = b * self.global_batch + self.rank * self.batch_size
            yield self.perm[lo: lo + self.batch_size]



def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return n // (batch_size * world_size)
