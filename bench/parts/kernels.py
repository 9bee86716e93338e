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
features. Batch B = 32 clips on every device (for scale: the paper's scripts step 16 videos x
num_sample 4 = 64 clips per GPU; ``--kernel-batch`` changes it, and the B used is in every row).
On CUDA each timed sample averages 10 back-to-back calls (launch latency hidden); the
implementations' repeats are interleaved so load changes hit all of them alike.

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

from amd_fast.errors import InputError
from bench import timing

log = logging.getLogger("bench.kernels")

OPS = ("masked_gather", "masked_gather_strided", "align_loss", "norm_pixel_loss")
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
    "vit_l": KernelShape("vit_l", student_dim=1024, teacher_dim=1024),  # ViT-L widths (the teacher's gather)
}


@dataclass
class Case:
    """One op at one shape: a fwd+bwd callable per implementation, and the modeled bytes."""

    fns: dict[str, Callable[[], None]]
    bytes_modeled: int  # fused kernel's minimum traffic: the GB/s numerator for every impl
    bytes_reference: int  # modeled traffic of the AMD-style code, for context
    detail: str


def settings_for(args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        # the AMD shape (16 x 224^2) at B=32 on every device; on CUDA also B=64 (16 videos x 4 clips per GPU)
        "kernel_batches": args.kernel_batch or ([32, 64] if cuda else [32]),
        "kernel_shapes": args.kernel_shapes or (list(SHAPES) if cuda else ["vit_s", "vit_b"]),
        "kernel_ops": args.kernel_ops or list(OPS),
        "kernel_dtype": "bfloat16" if cuda else "float32",
        "kernel_repeats": args.repeats or 5,
        "kernel_warmup": 2 if args.warmup is None else args.warmup,
        "kernel_inner": 10 if cuda else 1,  # calls per timed sample (CUDA: hide launch latency)
    }


def _masks(shape: KernelShape, batch: int, device: torch.device):
    from amd_fast.masking import MaskConfig, generate_masks

    gen = torch.Generator(device=device).manual_seed(0)
    cfg = MaskConfig(type="t_consist", student_ratio=shape.student_ratio, teacher_ratio=shape.teacher_ratio)
    return generate_masks(cfg, batch, grid=shape.grid, device=device, generator=gen)


def _bool_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """(B, K) sorted ids -> (B, N) bool, the form the reference code indexes with."""
    return torch.zeros(idx.shape[0], n, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _case_masked_gather(shape: KernelShape, batch: int, device, dtype, strided: bool = False) -> Case:
    """Student input: (B, 1568, D_s) patch tokens + fixed sinusoid pos -> the 160 visible tokens.

    ``strided``: the tokens as a Conv3d over a channels-first clip leaves them, (B, N, C) with strides
    (N*C, 1, N), each token's C values N elements apart: what the model passed before its clips became
    channels-last (``masked_gather.strided_bytes_moved`` models the sectors such a gather pulls)."""
    from amd_fast import ops
    from bench import amd_reference as ref

    masks = _masks(shape, batch, device)
    n, d = shape.tokens, shape.student_dim
    if strided:
        x = torch.randn(batch, d, n, device=device, dtype=dtype).transpose(1, 2).requires_grad_(True)
    else:
        x = torch.randn(batch, n, d, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(1, n, d, device=device, dtype=dtype)  # VideoMAE/AMD: fixed sinusoid table, no grad
    vis = masks.vis_idx
    grad = torch.randn(batch, vis.shape[1], d, device=device, dtype=dtype)
    student_masked = ~_bool_mask(vis, n)  # reference convention: True = masked (hidden from the student)

    def run(f):
        def call():
            x.grad = None
            f().backward(grad)
        return call

    return Case(
        fns={
            "amd_reference": run(lambda: ref.masked_gather(x, student_masked, pos)),
            "eager": run(lambda: ops.masked_gather(x, vis, pos=pos, impl="eager")),
            "triton": run(lambda: ops.masked_gather(x, vis, pos=pos, impl="triton")),
        },
        bytes_modeled=_modeled_bytes("masked_gather", batch=batch, tokens=n, kept=vis.shape[1], dim=d, dtype=dtype),
        bytes_reference=_modeled_bytes("masked_gather", "strided_bytes_moved" if strided else "reference_bytes_moved",
                                       batch=batch, tokens=n, kept=vis.shape[1], dim=d, dtype=dtype),
        detail=f"x ({batch},{n},{d}){' strided (N*C, 1, N)' if strided else ''} + pos -> ({batch},{vis.shape[1]},{d})",
    )


def _case_align_loss(shape: KernelShape, batch: int, device, dtype) -> Case:
    """Direct (160 tokens) and generated (232 tokens) alignment, 2 layer pairs each, l2, teacher width."""
    from amd_fast import ops
    from bench import amd_reference as ref

    masks = _masks(shape, batch, device)
    d = shape.teacher_dim
    k_dir, k_gen = masks.vis_idx.shape[1], masks.diff_idx.shape[1]
    students = [torch.randn(batch, k, d, device=device, dtype=dtype, requires_grad=True)
                for k in (k_dir,) * shape.align_pairs + (k_gen,) * shape.align_pairs]
    teachers = [torch.randn_like(s, requires_grad=False) for s in students]
    half = shape.align_pairs

    def run(loss_fn):
        def call():
            for s in students:
                s.grad = None
            loss_fn().backward()
        return call

    def ours(impl):
        return lambda: (ops.align_loss(students[:half], teachers[:half], kind="l2", impl=impl)
                        + ops.align_loss(students[half:], teachers[half:], kind="l2", impl=impl))

    def reference():
        return (ref.align_loss(students[:half], teachers[:half], kind="l2")
                + ref.align_loss(students[half:], teachers[half:], kind="l2"))

    return Case(
        fns={"amd_reference": run(reference), "eager": run(ours("eager")), "triton": run(ours("triton"))},
        bytes_modeled=sum(_modeled_bytes("align_loss", batch=batch, tokens=k, dim=d, pairs=half, dtype=dtype)
                          for k in (k_dir, k_gen)),
        bytes_reference=sum(_modeled_bytes("align_loss", "reference_bytes_moved", batch=batch, tokens=k, dim=d,
                                           pairs=half, dtype=dtype) for k in (k_dir, k_gen)),
        detail=f"{half}x({batch},{k_dir},{d}) direct + {half}x({batch},{k_gen},{d}) generated, l2",
    )


def _case_norm_pixel_loss(shape: KernelShape, batch: int, device, dtype) -> Case:
    """Clip (B,3,16,224,224) fp32 + decoder output at the 1408 masked tokens (B,1408,1536) -> loss."""
    from amd_fast import ops
    from bench import amd_reference as ref

    masks = _masks(shape, batch, device)
    n, pv = shape.tokens, shape.patch_values
    video = torch.randn(batch, 3, shape.frames, shape.size, shape.size, device=device, dtype=torch.float32)
    mask_idx = masks.mask_idx
    pred = torch.randn(batch, mask_idx.shape[1], pv, device=device, dtype=dtype, requires_grad=True)
    student_masked = _bool_mask(mask_idx, n)
    kw = dict(tubelet=shape.tubelet, patch=shape.patch)

    def run(loss_fn):
        def call():
            pred.grad = None
            loss_fn().backward()
        return call

    return Case(
        fns={
            "amd_reference": run(lambda: ref.norm_pixel_loss(video, student_masked, pred, **kw)),
            "eager": run(lambda: ops.norm_pixel_loss(video, mask_idx, pred, impl="eager", **kw)),
            "triton": run(lambda: ops.norm_pixel_loss(video, mask_idx, pred, impl="triton", **kw)),
        },
        bytes_modeled=_modeled_bytes("norm_pixel_loss", batch=batch, masked=mask_idx.shape[1], patch_values=pv,
                                     video_dtype=torch.float32, dtype=dtype),
        bytes_reference=_modeled_bytes("norm_pixel_loss", "reference_bytes_moved", batch=batch,
                                       masked=mask_idx.shape[1], patch_values=pv, tokens=n,
                                       video_dtype=torch.float32, dtype=dtype),
        detail=f"video ({batch},3,{shape.frames},{shape.size},{shape.size}) fp32, pred ({batch},{mask_idx.shape[1]},{pv})",
    )


CASES = {"masked_gather": _case_masked_gather,
         "masked_gather_strided": lambda *a: _case_masked_gather(*a, strided=True),
         "align_loss": _case_align_loss, "norm_pixel_loss": _case_norm_pixel_loss}


def _modeled_bytes(op: str, model: str = "bytes_moved", **kw) -> int:
    """Modeled HBM bytes of one fwd+bwd of ``op``, from the kernel module's own model
    (``bytes_moved``: the fused kernel; ``reference_bytes_moved``: the AMD-style code)."""
    import importlib

    module = importlib.import_module(f"amd_fast.kernels.{op.replace('_strided', '')}")
    return int(getattr(module, model)(**kw))


def run(args, device: torch.device, shards=None) -> tuple[list[dict], dict, list[str]]:
    s = settings_for(args, device)
    unknown = [o for o in s["kernel_ops"] if o not in OPS] + [x for x in s["kernel_shapes"] if x not in SHAPES]
    if unknown:
        raise InputError(f"--kernel-ops/--kernel-shapes: unknown {unknown}; ops: {','.join(OPS)}; "
                         f"shapes: {','.join(SHAPES)}")
    dtype = _dtype(s["kernel_dtype"])
    peak_bw = timing.peak_bandwidth(device)
    copy_bw = timing.copy_bandwidth(device) if device.type == "cuda" else None
    s["copy_bandwidth_bytes_per_s"] = copy_bw
    entries, notes = [], []
    for batch, shape_name, op in ((b, x, o) for b in s["kernel_batches"] for x in s["kernel_shapes"]
                                  for o in s["kernel_ops"]):
        shape = SHAPES[shape_name]
        try:
            case = CASES[op](shape, batch, device, dtype)
        except ImportError as err:  # a module this op needs is missing from this checkout
            reason = f"not measured (cannot import {err.name or err}: {err})"
            log.warning("kernel %s %s: %s", op, shape_name, reason)
            entries += [{"part": "kernels", "op": op, "shape": shape_name, "impl": impl, "batch": batch,
                         "ms_median": None, "status": reason} for impl in IMPLS]
            continue
        measured = {impl: fn for impl, fn in case.fns.items() if impl != "triton" or device.type == "cuda"}
        log.info("kernel %s %s: %s (B=%d)", op, shape_name, ", ".join(measured), batch)
        timings = timing.time_interleaved(measured, device=device, warmup=s["kernel_warmup"],
                                          repeats=s["kernel_repeats"], inner=s["kernel_inner"])
        for impl in IMPLS:
            row = {"part": "kernels", "op": op, "shape": shape_name, "impl": impl, "batch": batch,
                   "dtype": s["kernel_dtype"], "inputs": case.detail, "bytes_modeled": case.bytes_modeled,
                   "bytes_modeled_reference": case.bytes_reference,
                   "ms_median": None, "ms_spread": None, "gbps": None, "bw_fraction": None,
                   "peak_mem_bytes": None}
            if impl not in timings:
                row["status"] = NOT_MEASURED_CPU
                entries.append(row)
                continue
            t = timings[impl]
            row.update(t.to_ms())
            row["gbps"] = case.bytes_modeled / t.median / 1e9
            if peak_bw:
                row["bw_fraction"] = case.bytes_modeled / t.median / peak_bw
            if copy_bw:
                row["copy_fraction"] = case.bytes_modeled / t.median / copy_bw
            if device.type == "cuda":
                row["peak_mem_bytes"] = timing.cuda_peak_memory(case.fns[impl], device)
            row["status"] = "measured"
            entries.append(row)
        del case
    notes.append(f"Kernels: forward+backward per call, B={s['kernel_batches']}, features {s['kernel_dtype']}, clip "
                 "float32; GB/s = modeled bytes (minimum fused traffic, same for all impls) / median time"
                 + (f"; copy bandwidth (device-to-device copy_ of 1 GiB, this run) {copy_bw / 1e9:.0f} GB/s"
                    if copy_bw else "") + ". masked_gather_strided: the same gather from tokens laid out as a Conv3d "
                 "over a channels-first clip leaves them (the model's input before its clips became channels-last).")
    if device.type != "cuda":
        notes.append("Kernels: " + CPU_PEAK_MEM + "; peak bandwidth of a CPU is not known here, so only achieved "
                     "GB/s is reported.")
    return entries, s, notes
