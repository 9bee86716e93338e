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
