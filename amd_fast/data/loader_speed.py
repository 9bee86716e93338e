"""Clips/s of the data loaders on given shards (reused by bench/).

``python -m amd_fast.data.loader_speed --shards shards/synthetic --backend dali eager``

Per backend: build the loader, run ``warmup`` batches (pipeline start, worker spawn, first
decode), then time ``batches`` batches. Reported: clips/s (= videos x num_sample per second),
videos/s, and the mean data-wait per batch, i.e. the time ``next()`` blocks, which is what a
training step waits for when the model is faster than the loader. On CUDA the clock stops after
a ``torch.cuda.synchronize()`` so asynchronous copies are counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from typing import Dict, Optional, Sequence

import torch

from . import build_loader
from .config import DataConfig

log = logging.getLogger(__name__)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_clips_per_s(cfg: DataConfig, *, batches: int = 20, warmup: int = 3, rank: int = 0,
                        world_size: int = 1) -> Dict[str, float]:
    """Throughput of ``build_loader(cfg)``; cycles epochs when ``warmup + batches`` exceeds one."""
    loader = build_loader(cfg, rank, world_size)
    device = cfg.resolved_device()

    def stream():
        while True:
            yield from loader

    it = stream()
    t_build = time.perf_counter()
    for _ in range(warmup):
        next(it)
    _sync(device)
    clips = 0
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(batches):
        tw = time.perf_counter()
        b = next(it)
        _sync(device)
        wait += time.perf_counter() - tw
        clips += b["video"].shape[0]
    elapsed = time.perf_counter() - t0
    return {
        "backend": loader.backend,
        "clips_per_s": clips / elapsed,
        "videos_per_s": clips / cfg.num_sample / elapsed,
        "data_wait_ms_per_batch": 1000 * wait / batches,
        "warmup_s": t0 - t_build,
        "batches": batches,
        "clips": clips,
        "bad_samples": sum(loader.bad_samples.values()),
    }


def compare(cfg: DataConfig, backends: Sequence[str] = ("dali", "eager"), **kw) -> Dict[str, dict]:
    """measure_clips_per_s for each backend on the same config."""
    return {b: measure_clips_per_s(dataclasses.replace(cfg, backend=b), **kw) for b in backends}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True, help="manifest, shard folder or tar")
    ap.add_argument("--split", default="train")
    ap.add_argument("--backend", nargs="+", default=["dali", "eager"], choices=["dali", "eager", "auto"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--sampling-rate", type=int, default=4)
    ap.add_argument("--num-sample", type=int, default=1)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--dali-threads", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = DataConfig(shards=a.shards, split=a.split, device=a.device, batch_size=a.batch_size,
                     num_frames=a.num_frames, sampling_rate=a.sampling_rate, num_sample=a.num_sample,
                     input_size=a.input_size, num_workers=a.num_workers, dali_threads=a.dali_threads, dtype=a.dtype)
    results = compare(cfg, a.backend, batches=a.batches, warmup=a.warmup)
    print(f"{'backend':>8} {'clips/s':>9} {'videos/s':>9} {'wait ms/batch':>14} {'warmup s':>9}")
    for name, r in results.items():
        print(f"{name:>8} {r['clips_per_s']:9.1f} {r['videos_per_s']:9.1f} {r['data_wait_ms_per_batch']:14.1f} "
              f"{r['warmup_s']:9.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
