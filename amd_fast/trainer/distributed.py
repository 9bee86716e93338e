"""Process group set-up from the torchrun environment; rank-0 logging; host-side collectives.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them the run is a
single process and no process group is created. Backend: NCCL on CUDA, Gloo on CPU. Besides the main
group a small Gloo *control* group carries host-side flags (stop requests) and pickled objects (RNG
states for checkpoints), so those never queue behind, or synchronise with, GPU work.

Every collective has a timeout (``train.dist_timeout_s``): a rank that stalls or dies makes the others
fail with :class:`CollectiveTimeout` after that long instead of hanging forever (NCCL: async error
handling on, so its watchdog aborts a stuck collective).
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from amd_fast.errors import InputError, RunFailed

log = logging.getLogger(__name__)


class CollectiveTimeout(RunFailed):
    """A collective did not complete within ``train.dist_timeout_s``: some rank stalled or died."""


class DeviceError(InputError):
    """The configured device cannot be used here (the message names the fix)."""


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control_group: Optional[Any] = None  # Gloo group for host-side collectives (None when single-process)
    timeout_s: float = 300.0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def nvidia_gpus_present() -> Optional[str]:
    """Evidence of NVIDIA GPUs on this machine, whatever torch thinks (device nodes / driver), or None."""
    for p in ("/proc/driver/nvidia/version", "/dev/nvidia0"):
        if Path(p).exists():
            return p
    return None


def _cuda_unusable_reason() -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.cuda.init()
        except Exception as e:  # the real reason (driver too old, no device visible, ...)
            return str(e).strip().splitlines()[0]
    return "; ".join(str(w.message).splitlines()[0] for w in caught) or "torch.cuda.is_available() is False"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else cpu; 'cuda' without CUDA is an error.

    'auto' on a machine that has NVIDIA GPUs torch cannot use (e.g. a driver older than this torch
    build's CUDA needs) is an error too, rather than a silent, many times slower CPU run:
    ``train.device=cpu`` says that CPU is meant."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        else:
            evidence = nvidia_gpus_present()
            if evidence:
                raise DeviceError(
                    f"this machine has NVIDIA GPUs ({evidence}) but torch {torch.__version__} (CUDA "
                    f"{torch.version.cuda}) cannot use them: {_cuda_unusable_reason()}. Install a torch build "
                    "that matches the driver (or update the driver), or set train.device=cpu to train on the "
                    "CPU on purpose")
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("train.device=cuda but CUDA is not available here; use train.device=cpu (or auto)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the torchrun process group if there is one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world == 1:
        return DistInfo(0, 1, 0, dev, timeout_s=timeout_s)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # watchdog aborts a timed-out collective
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    control = dist.new_group(backend="gloo", timeout=timeout)
    return DistInfo(rank, world, local_rank, dev, control, timeout_s)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_timeout(e: BaseException) -> bool:
    """Whether ``e`` is a collective that timed out (Gloo / NCCL word it differently)."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in text or "timeout" in text)


def timeout_error(e: BaseException, what: str, info: DistInfo) -> CollectiveTimeout:
    return CollectiveTimeout(
        f"rank {info.rank}: {what} did not complete within train.dist_timeout_s={info.timeout_s:g} s "
        f"({str(e).strip().splitlines()[0][:200]}): another rank stalled or died. The last checkpoint is "
        "kept; restart the job (checkpoint.resume=auto continues from it)")


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


class StopVote:
    """All ranks agree on stopping (SIGTERM on any rank) without making the host wait every step.

    Each step posts this rank's flag in an asynchronous Gloo all-reduce (MAX) on the control group and
    reads the result of the *previous* step's vote, which has long completed by then (DDP's gradient
    sync already keeps the ranks within a step of each other). Every rank therefore sees the same
    decision at the same step, one step after the signal arrived.
    """

    def __init__(self, info: DistInfo):
        self.info = info
        self._pending = None

    def vote(self, stop: bool) -> bool:
        """Post ``stop``; returns the all-rank decision of the previous vote (single process: ``stop``)."""
        if not self.info.distributed:
            return stop
        decided = self._result()
        flag = torch.tensor([int(stop)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.info.control_group, async_op=True)
        self._pending = (work, flag)
        return decided

    def drain(self) -> bool:
        """Wait for the last posted vote (before the final checkpoint), returning its decision."""
        return self._result()

    def _result(self) -> bool:
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return bool(flag.item())


def gather_to_main(obj: Any, info: DistInfo) -> Optional[List[Any]]:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0, group=info.control_group)
    return out
