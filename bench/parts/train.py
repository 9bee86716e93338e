"""Training part: steps/s, clips/s and data-wait fraction of the whole AMD step, fast vs all-eager.

Paths (``--train-paths``; all use the same model, masks, losses, optimizer, batch and shards):

* ``fast``  — DALI loader (``data.backend=dali``: NVDEC on CUDA, CPU decode on CPU), ops on
  their automatic choice (Triton on CUDA, eager on CPU), fused attention
  (``F.scaled_dot_product_attention``, timm's default).
* ``eager`` — the "all-eager" path: eager loader (webdataset + PyAV in DataLoader workers) and
  eager ops (``train.ops_impl=eager``); attention is *still fused*, so fast/eager isolates what this
  project adds (loader + kernels), not what PyTorch gives everyone.
* ``eager_naive_attn`` — as ``eager`` but timm's explicit ``softmax(q kᵀ) v`` attention, the way
  the AMD/VideoMAE reference computes it: the closest to the reference's own step.

One step = ``next(loader)`` + amd_fast's own ``Trainer.step`` (lr/wd schedules, seeded masks,
objective under bf16 autocast on CUDA — frozen teacher, student —, backward, grad clip, non-finite
guard, AdamW), the Trainer built from the model pair's ``configs/*.yaml`` (ViT pairs on CUDA,
``configs/tiny-cpu.yaml`` on CPU) with the bench's shards and random teacher weights.
The device is synchronised at the end of every timed step, so a step's wall time is its
real cost and the time spent blocked in ``next()`` is time the device sat idle waiting for
data: ``data_wait_fraction`` = Σ wait / Σ step time. steps/s = 1 / median step time (spread:
1 / slowest and 1 / fastest step); clips/s = steps/s x clips per step (videos x num_sample).
An untimed warm-up run comes first, so process-wide first-use costs don't land on one path.
"""
from __future__ import annotations

import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from amd_fast.errors import InputError
from bench import timing

log = logging.getLogger("bench.train")

ROOT = Path(__file__).resolve().parents[2]

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


# Model pairs -> (TRAIN's config file, extra overrides). The paper trains ViT-S and ViT-B students from a
# ViT-L teacher (configs/amd-vit{s,b}-k400.yaml); ViT-S from ViT-B is the cheaper teacher option.
MODELS = {
    "vit_small:vit_large": ("configs/amd-vits-k400.yaml", []),
    "vit_base:vit_large": ("configs/amd-vitb-k400.yaml", []),
    "vit_small:vit_base": ("configs/amd-vits-k400.yaml", ["model.teacher=vit_base", "model.teacher_align_layers=[6,12]"]),
    "vit_tiny_cpu:vit_mini_cpu": ("configs/tiny-cpu.yaml", []),
}
CUDA_MODELS = ("vit_small:vit_large", "vit_base:vit_large", "vit_small:vit_base")
CPU_MODELS = ("vit_tiny_cpu:vit_mini_cpu",)


def settings_for(args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "train_models": args.train_models or list(CUDA_MODELS if cuda else CPU_MODELS),
        "train_paths": args.train_paths or list(PATHS),
        "train_steps": args.train_steps or (20 if cuda else 10),
        "train_warmup": 3 if args.warmup is None else args.warmup,
        # None = the config file's own value (recorded per row)
        "train_batch_size": args.train_batch_size,
        "train_num_sample": args.train_num_sample,
        "train_workers": args.train_workers,
        "train_overrides": list(args.train_override or []),
    }


def build_config(model_pair: str, path: str, s: dict, device: torch.device, shards, split: str, run_dir: str):
    """TRAIN's Config for one (model pair, path): the pair's YAML + the bench's overrides."""
    from amd_fast.config import load_config

    if model_pair not in MODELS:
        raise InputError(f"--train-models: unknown pair {model_pair!r}; choose from {', '.join(MODELS)}")
    cfg_file, extra = MODELS[model_pair]
    o = [f"data.shards={shards}", f"data.split={split}", f"data.device={device}",
         f"data.backend={'dali' if path == 'fast' else 'eager'}",
         f"train.device={device.type}", f"train.ops_impl={'auto' if path == 'fast' else 'eager'}",
         "model.teacher_checkpoint=null",  # random teacher weights: same cost, no download needed
         f"log.dir={run_dir}", "log.tensorboard=false", "log.progress=false", f"checkpoint.dir={run_dir}/ckpt"]
    if s["train_batch_size"]:
        o.append(f"data.batch_size={s['train_batch_size']}")
    if s["train_num_sample"]:
        o.append(f"data.num_sample={s['train_num_sample']}")
    if s["train_workers"]:
        o += [f"data.num_workers={s['train_workers']}", f"data.dali_threads={s['train_workers']}"]
    return load_config(ROOT / cfg_file, extra + o + s["train_overrides"]), cfg_file


def _build_step(model_pair: str, path: str, s: dict, device: torch.device, shards, split: str, run_dir: str):
    """TRAIN's Trainer for one (model pair, path); returns (batches, step, info). The step is
    ``Trainer.step`` itself: schedules, seeded masks, objective under autocast, backward, clip,
    non-finite guard, AdamW step — exactly what ``python -m amd_fast.train`` runs per batch."""
    from amd_fast.trainer.distributed import DistInfo
    from amd_fast.trainer.loop import Trainer

    cfg, cfg_file = build_config(model_pair, path, s, device, shards, split, run_dir)
    trainer = Trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device))
    fused = path != "eager_naive_attn"
    n_attn = sum(set_fused_attention(m, fused) for m in (trainer.student, trainer.teacher) if m is not None)
    if n_attn == 0:
        raise RuntimeError("the models expose no timm 'fused_attn' switch, so the attention variant can't be set")
    trainer.student.train()
    step = trainer.step

    d, m = cfg.data, cfg.model
    info = {
        "config": cfg_file, "student": m.student, "teacher": m.teacher, "loader": trainer.loader.backend,
        "ops": trainer.ops_impl or ("triton" if device.type == "cuda" else "eager"),
        "attention": "fused (SDPA)" if fused else "explicit softmax(QK^T)V",
        "amp": "bf16" if trainer.amp else "off",
        "clip": f"{d.num_frames}x{d.input_size}px stride {d.sampling_rate}",
        "batch_videos": d.batch_size, "batch_clips": d.batch_size * d.num_sample,
        "workers": d.num_workers if d.backend == "eager" else d.dali_threads,
        "student_params": sum(p.numel() for p in trainer.student.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),  # the Trainer may set its own CPU thread count
    }
    return cycle(trainer.loader), step, info


def run(args, device: torch.device, shards) -> tuple[list[dict], dict, list[str]]:
    s = settings_for(args, device)
    unknown = [p for p in s["train_paths"] if p not in PATHS]
    if unknown:
        raise InputError(f"--train-paths: unknown {unknown}; choose from {','.join(PATHS)}")
    entries = []
    with tempfile.TemporaryDirectory(prefix="amd_fast-bench-") as run_dir:  # the Trainer's log/ckpt dirs
        # Process-wide first-use costs (thread pools, oneDNN/cuBLAS set-up, allocator growth, Triton
        # compile) would otherwise land on whichever path runs first: pay them once, untimed.
        log.info("train: untimed warm-up run (%s, %s)", s["train_models"][0], s["train_paths"][0])
        batches, step, _ = _build_step(s["train_models"][0], s["train_paths"][0], s, device, shards, args.split,
                                       run_dir)
        measure_steps(batches, step, device=device, warmup=s["train_warmup"], steps=1)
        del batches, step
        gc.collect()
        for model_pair in s["train_models"]:
            for path in s["train_paths"]:
                log.info("train %s, path %s: %d warm-up + %d timed steps", model_pair, path,
                         s["train_warmup"], s["train_steps"])
                row = {"part": "train", "model": model_pair, "path": path}
                batches, step, info = _build_step(model_pair, path, s, device, shards, args.split, run_dir)
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
                gc.collect()  # drop this path's Trainer, loader workers and DALI pipeline before the next
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    notes = [
        "Train: the step is amd_fast's Trainer.step built from the pair's configs/*.yaml (random teacher "
        "weights). fast = DALI loader + ops auto (Triton on CUDA, eager on CPU) + fused SDPA attention; "
        "eager (all-eager) = eager loader + eager ops, attention still fused; eager_naive_attn = all-eager with "
        "explicit softmax(QK^T)V attention as the AMD reference. Same config, shards, batch and seed otherwise.",
        "Train: device synchronised after each timed step; data wait = time blocked in next() / step time.",
    ]
    if device.type != "cuda":
        notes.append("Train on CPU: configs/tiny-cpu.yaml (tiny CPU architectures, not ViT-S/B/L: a ViT-L teacher "
                     "step takes minutes on 2 cores); on CPU fast differs from eager only by the loader, since "
                     "ops are eager on CPU.")
    return entries, s, notes
