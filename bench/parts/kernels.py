"""Kernels part: forward+backward time of each memory-bound op, three ways, at ViT-S/ViT-B shapes.

Implementations compared on identical inputs:

* ``amd_reference`` — the op written as the AMD reference code writes it
  (``bench/amd_reference.py``: boolean-mask indexing, full-clip patchify, per-layer losses);
* ``eager`` — our eager PyTorch code (``amd_fast.ops.<op>(..., impl='eager')``);
* ``triton`` — our Triton kernel (``impl='triton'``), timed only on CUDA. On CPU the row is
  kept with the modeled bytes and ``status = 'not measured (...)'``: the Triton interpreter
  runs kernels as numpy loops, its timings say nothing about kernel speed.

Shapes (the paper's K400 recipes): clip 16x224x224, tubelet 2, patch 16 -> 8x14x14 = 1568
tokens; student mask 0.9 / teacher 0.75 (t_consist) -> 160 student-visible, 232 "diff",
1408 masked tokens. ``vit_s``: student ViT-S (384) with teacher ViT-L (1024); ``vit_b``:
student ViT-B (768) with teacher ViT-L (1024). Alignment: 2 layer pairs (student 6,12 <->
teacher 12,24), direct (visible tokens) and generated (diff tokens), l2, on teacher-width
features. Batch B = 32 on CUDA (per-GPU batch of the paper's scripts x num_sample 4 /
... see ``settings``); on CPU a small default so the run stays short (``--kernel-batch``).

Per row: median / min / max ms of ``repeats`` fwd+bwd calls after ``warmup`` calls, the
op's modeled HBM bytes (``amd_fast.kernels`` models: the minimum traffic a fused kernel
needs), achieved GB/s = modeled bytes / time (same numerator for all three, so the GB/s
ratio is the speed ratio), the fraction of the device's published peak bandwidth, and
peak memory above the inputs (``torch.cuda.max_memory_allocated``; CUDA only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from bench import timing

log = logging.getLogger("bench.kernels")

OPS = ("masked_gather", "align_loss", "norm_pixel_loss")
IMPLS = ("amd_reference", "eager", "triton")
NOT_MEASURED_CPU = "not measured (no CUDA; interpreter timings are not kernel speed)"
CPU_PEAK_MEM = ("peak memory not measured on CPU: torch's CPU allocator keeps no peak counter and "
                "tracemalloc does not see it")


@dataclass(frozen=True)
class KernelShape:
    name: str
    student_dim: int
    teacher_dim: int
    frames: int = 16
    size: int = 224
    tubelet: int = 2
    patch: int = 16
    student_ratio: float = 0.9
    teacher_ratio: float = 0.75
    align_pairs: int = 2

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames // self.tubelet, self.size // self.patch, self.size // self.patch)

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_values(self) -> int:
        return 3 * self.tubelet * self.patch * self.patch


SHAPES = {
    "vit_s": KernelShape("vit_s", student_dim=384, teacher_dim=1024),
    "vit_b": KernelShape("vit_b", student_dim=768, teacher_dim=1024),
}


@dataclass
class Case:
    """One op at one shape: a fwd+bwd callable per implementation, and the modeled bytes."""

    fns: dict[str, Callable[[], None]]
    bytes_modeled: int
    detail: str


def settings_for(args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "kernel_batch": args.kernel_batch or (32 if cuda else 2),
        "kernel_shapes": args.kernel_shapes or list(SHAPES),
        "kernel_ops": args.kernel_ops or list(OPS),
        "kernel_dtype": "bfloat16" if cuda else "float32",
        "kernel_repeats": args.repeats or 5,
        "kernel_warmup": 2 if args.warmup is None else args.warmup,
    }


def _masks(shape: KernelShape, batch: int, device: torch.device):
    from amd_fast.masking import MaskConfig, generate_masks

    gen = torch.Generator(device=device).manual_seed(0)
    cfg = MaskConfig(type="t_consist", student_ratio=shape.student_ratio, teacher_ratio=shape.teacher_ratio)
    return generate_masks(cfg, batch, grid=shape.grid, device=device, generator=gen)


def _bool_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """(B, K) sorted ids -> (B, N) bool, the form the reference code indexes with."""
    return torch.zeros(idx.shape[0], n, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)
