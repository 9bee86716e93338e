"""Training part: steps/s, clips/s and data-wait fraction of the whole AMD step, fast vs all-eager.

Paths (``--train-paths``; all use the same model, masks, losses, optimizer, batch and shards):

* ``fast``  — DALI loader (``data.backend=dali``: NVDEC on CUDA, CPU decode on CPU), ops on
  their automatic choice (Triton on CUDA, eager on CPU), fused attention
  (``F.scaled_dot_product_attention``, timm's default).
* ``eager`` — the "all-eager" path: eager loader (webdataset + PyAV in DataLoader workers) and
  eager ops (``ops.impl=eager``); attention is *still fused*, so fast/eager isolates what this
  project adds (loader + kernels), not what PyTorch gives everyone.
* ``eager_naive_attn`` — as ``eager`` but timm's explicit ``softmax(q kᵀ) v`` attention, the way
  the AMD/VideoMAE reference computes it: the closest to the reference's own step.

One step = ``next(loader)`` + ``objective(video)`` (teacher forward under no_grad, student
forward) + backward + grad clip + optimizer step (+ zero_grad), under bf16 autocast on CUDA.
The device is synchronised at the end of every timed step, so a step's wall time is its
real cost and the time spent blocked in ``next()`` is time the device sat idle waiting for
data: ``data_wait_fraction`` = Σ wait / Σ step time. steps/s = 1 / median step time (spread:
1 / slowest and 1 / fastest step); clips/s = steps/s x clips per step (videos x num_sample).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import torch

from bench import timing

log = logging.getLogger("bench.train")

PATHS = ("fast", "eager", "eager_naive_attn")


def measure_steps(batches: Iterator[dict], step: Callable[[dict], object], *, device: torch.device, warmup: int,
                  steps: int) -> dict:
    """Time ``steps`` calls of ``step(next(batches))`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    timing.synchronize(device)
    waits, totals = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        step(batch)
        timing.synchronize(device)
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        totals.append(t2 - t0)
    t = timing.Timing(tuple(totals))
    return {
        "steps_per_s": 1.0 / t.median,
        "steps_per_s_spread": [1.0 / t.max, 1.0 / t.min],
        "step_ms_median": 1e3 * t.median,
        "step_ms_spread": [1e3 * t.min, 1e3 * t.max],
        "data_wait_fraction": sum(waits) / sum(totals),
        "data_wait_ms_median": 1e3 * timing.Timing(tuple(waits)).median,
        "steps": steps,
    }


def cycle(loader) -> Iterator[dict]:
    """Endless batches across epochs (small bench shards hold fewer batches than the run needs)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def set_fused_attention(model: torch.nn.Module, fused: bool) -> int:
    """Flip timm's per-module ``fused_attn`` switch (SDPA vs explicit softmax(q kᵀ) v); returns modules changed."""
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
            n += 1
    return n


# (label, student arch, teacher arch, student align layers, teacher align layers)
CUDA_MODELS = ("vit_small:vit_large", "vit_base:vit_large", "vit_small:vit_base")
CPU_MODELS = ("vit_tiny_cpu:vit_mini_cpu",)


def _align_layers(student: str, teacher: str) -> tuple[list[int], list[int]]:
    """AMD aligns the middle and last blocks of both nets (ViT-S/B 6,12 <-> ViT-L 12,24)."""
    from amd_fast.models import get_arch

    ds, dt = get_arch(student).depth, get_arch(teacher).depth
    return [ds // 2, ds], [dt // 2, dt]


def settings_for(args, device: torch.device) -> dict:
    from bench.parts.loaders import default_workers
    from bench.parts.loaders import settings_for as loader_settings

    cuda = device.type == "cuda"
    ls = loader_settings(args, device)  # the train part reads clips shaped exactly like the loaders part
    return {
        "train_models": args.train_models or list(CUDA_MODELS if cuda else CPU_MODELS),
        "train_paths": args.train_paths or list(PATHS),
        "train_steps": args.train_steps or (20 if cuda else 10),
        "train_warmup": 3 if args.warmup is None else args.warmup,
        "train_batch_size": args.train_batch_size or (16 if cuda else 2),
        "train_num_sample": args.train_num_sample or (4 if cuda else 1),
        "train_workers": args.train_workers or max(default_workers()),
        "train_input_size": ls["input_size"],
        "train_num_frames": ls["num_frames"],
        "train_sampling_rate": ls["sampling_rate"],
        "train_autocast": "bfloat16" if cuda else "off",
    }


def _build_step(model_pair: str, path: str, s: dict, device: torch.device, shards, split: str):
    """Loader, models, objective and optimizer for one (model pair, path); returns (batches, step, info)."""
    from amd_fast import ops
    from amd_fast.data import DataConfig, build_loader
    from amd_fast.masking import MaskConfig
    from amd_fast.models import AMDObjective, LossConfig, ModelConfig, build_student, build_teacher

    student_arch, _, teacher_arch = model_pair.partition(":")
    teacher_arch = teacher_arch or None
    s_layers, t_layers = _align_layers(student_arch, teacher_arch) if teacher_arch else ([], [])
    torch.manual_seed(0)  # same initial weights for every path
    mcfg = ModelConfig(student=student_arch, teacher=teacher_arch, input_size=s["train_input_size"],
                       num_frames=s["train_num_frames"], student_align_layers=s_layers or [1],
                       teacher_align_layers=t_layers or [1])
    student = build_student(mcfg).to(device).train()
    teacher = build_teacher(mcfg)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    fused = path != "eager_naive_attn"
    n_attn = sum(set_fused_attention(m, fused) for m in (student, teacher) if m is not None)
    if n_attn == 0:
        raise RuntimeError("the models expose no timm 'fused_attn' switch, so the attention variant can't be set")
    ops.set_default_impl(None if path == "fast" else "eager")  # fast: automatic = Triton on CUDA, eager on CPU
    objective = AMDObjective(student, teacher, MaskConfig(), LossConfig(), mcfg)
    # AdamW as the paper's scripts (betas 0.9/0.95, wd 0.05, clip 0.02); fused kernels on CUDA.
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=device.type == "cuda")
    dcfg = DataConfig(shards=str(shards), split=split, backend="dali" if path == "fast" else "eager",
                      device=str(device), batch_size=s["train_batch_size"], num_sample=s["train_num_sample"],
                      num_frames=s["train_num_frames"], sampling_rate=s["train_sampling_rate"],
                      input_size=s["train_input_size"], num_workers=s["train_workers"],
                      dali_threads=s["train_workers"], seed=0)
    loader = build_loader(dcfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: dict) -> None:
        with autocast:
            loss, _ = objective(batch["video"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.02)  # returns a tensor: no host sync
        opt.step()
        opt.zero_grad(set_to_none=True)

    info = {
        "student": student_arch, "teacher": teacher_arch, "loader": loader.backend,
        "ops": ops.resolve_impl("norm_pixel_loss", device) if path == "fast" else "eager",
        "attention": "fused (SDPA)" if fused else "explicit softmax(QK^T)V",
        "batch_videos": s["train_batch_size"], "batch_clips": s["train_batch_size"] * s["train_num_sample"],
        "student_params": sum(p.numel() for p in params),
    }
    return cycle(loader), step, info


def run(args, device: torch.device, shards) -> tuple[list[dict], dict, list[str]]:
    from amd_fast import ops

    s = settings_for(args, device)
    unknown = [p for p in s["train_paths"] if p not in PATHS]
    if unknown:
        raise SystemExit(f"--train-paths: unknown {unknown}; choose from {','.join(PATHS)}")
    entries = []
    try:
        # Process-wide first-use costs (thread pools, oneDNN/cuBLAS set-up, allocator growth, Triton compile)
        # would otherwise land on whichever path runs first: pay them once, untimed.
        log.info("train: untimed warm-up run (%s, %s)", s["train_models"][0], s["train_paths"][0])
        batches, step, _ = _build_step(s["train_models"][0], s["train_paths"][0], s, device, shards, args.split)
        measure_steps(batches, step, device=device, warmup=s["train_warmup"], steps=1)
        del batches, step
        for model_pair in s["train_models"]:
            for path in s["train_paths"]:
                log.info("train %s, path %s: %d warm-up + %d timed steps", model_pair, path, s["train_warmup"],
                         s["train_steps"])
                row = {"part": "train", "model": model_pair, "path": path}
                batches, step, info = _build_step(model_pair, path, s, device, shards, args.split)
                row.update(info)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                row.update(measure_steps(batches, step, device=device, warmup=s["train_warmup"],
                                         steps=s["train_steps"]))
                row["clips_per_s"] = row["steps_per_s"] * row["batch_clips"]
                row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                row["status"] = "measured"
                entries.append(row)
                del batches, step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        ops.set_default_impl(None)
    notes = [
        "Train: fast = DALI loader + ops auto (Triton on CUDA, eager on CPU) + fused SDPA attention; "
        "eager (all-eager) = eager loader + eager ops, attention still fused; eager_naive_attn = all-eager with "
        "explicit softmax(QK^T)V attention as the AMD reference. Same models, masks, losses, AdamW, batch, shards.",
        f"Train: {s['train_batch_size']} videos x {s['train_num_sample']} clips per step, "
        f"{s['train_num_frames']} frames x stride {s['train_sampling_rate']} at {s['train_input_size']}px, "
        f"{s['train_workers']} loader workers/threads, autocast {s['train_autocast']}; device synchronised after "
        "each timed step; data wait = time blocked in next() / step time.",
    ]
    if device.type != "cuda":
        notes.append("Train on CPU: tiny CPU architectures (not ViT-S/B/L: a ViT-L teacher step takes minutes on "
                     "2 cores); on CPU 'fast' differs from 'eager' only by the loader, since ops are eager on CPU.")
    return entries, s, notes
