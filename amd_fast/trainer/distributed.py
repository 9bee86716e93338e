"""Process group set-up from the torchrun environment; rank-0 logging.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them the run is a
single process and no process group is created. Backend: NCCL on CUDA, Gloo on CPU. Besides the main
group a small Gloo *control* group carries host-side flags (stop requests) and pickled objects (RNG
states for checkpoints), so those never queue behind, or synchronise with, GPU work.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control_group: Optional[Any] = None  # Gloo group for host-side collectives (None when single-process)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available else cpu; 'cuda' without CUDA is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available here; use train.device=cpu (or auto)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world == 1:
        return DistInfo(0, 1, 0, dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return DistInfo(rank, world, local_rank, dev, control)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def setup_logging(rank: int, level: int = logging.INFO) -> None:
    """Rank 0 logs at ``level``; other ranks only warnings and errors (prefixed with their rank)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if rank == 0 else \
        f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    if not root.handlers:  # keep a handler the caller configured (e.g. the demo's basicConfig)
        handler = logging.StreamHandler(sys.stderr)
        handler._amd_fast = True
        root.addHandler(handler)
    for h in root.handlers:
        if getattr(h, "_amd_fast", False):
            h.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root.setLevel(level if rank == 0 else logging.WARNING)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is set on any rank (a Gloo all-reduce on the CPU; no device sync)."""
    if not info.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control_group)
    return bool(t.item())


def gather_to_main(obj: Any, info: DistInfo) -> Optional[List[Any]]:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0, group=info.control_group)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier(group=info.control_group)
