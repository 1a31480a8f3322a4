"""DistributedDataParallel plumbing: one process per device, started by torchrun.

`torchrun --nproc_per_node N -m kit train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
training runs as a single process and every helper here is a no-op. Importing this module does
not import torch (`env_info` answers "which rank am I" for a command that may have nothing to do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """This process's rank as torchrun described it (RANK / WORLD_SIZE / LOCAL_RANK), joining
    nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed() -> DistInfo:
    """Join the process group torchrun described (NCCL on CUDA, gloo on CPU), if any."""
    info = env_info()
    if not info.distributed:
        return info
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return info


def device_for(info: DistInfo, requested: str | None = None) -> torch.device:
    """The rank's device: `requested` if given, else its own GPU, else the CPU."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (e.g. "stop now")."""
    if not info.distributed:
        return flag
    import torch.distributed as dist

    t = _flag_tensor(flag)
    dist.broadcast(t, src=0)
    return bool(t.item())


def any_flag(info: DistInfo, flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (all_reduce MAX)."""
    if not info.distributed:
        return flag
    import torch.distributed as dist

    t = _flag_tensor(flag)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_floats(info: DistInfo, values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (e.g. the budget calibration's timings)."""
    if not info.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    t = t.cuda() if dist.get_backend() == "nccl" else t
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


def shard(items, info: DistInfo):
    """This rank's share of a sequence: every world_size-th item from rank on (equal lengths)."""
    usable = len(items) - len(items) % info.world_size
    return items[info.rank : usable : info.world_size]


def cleanup(info: DistInfo) -> None:
    if not info.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _flag_tensor(flag: bool) -> torch.Tensor:
    """A one-element tensor where the backend can reduce it (NCCL needs it on the GPU)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)], dtype=torch.int64)
    return t.cuda() if dist.get_backend() == "nccl" else t
