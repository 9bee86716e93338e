"""Loading part: clips/s of the DALI pipeline vs the eager loader, plus the decode limit.

Both loaders get the *same* ``DataConfig`` (shards, split, clip sampling, multi-scale crop,
output size, dtype, device, seed) except ``backend``; the worker count ``w`` is
``num_workers=w`` DataLoader processes for eager and ``dali_threads=w`` for DALI, the knob a
user turns for each. The timing itself is :func:`amd_fast.data.loader_speed.measure_clips_per_s`
(warm-up batches excluded, clock stopped after a device sync), called ``repeats`` times with a
fresh loader each time; the median and min/max of those calls are reported.
"""
from __future__ import annotations

import gc
import logging
import os

import torch

from bench import timing
from bench.parts import decode
from bench.parts.shards import manifest_path

log = logging.getLogger("bench.loaders")

BACKENDS = ("dali", "eager")


def default_workers() -> list[int]:
    cpus = os.cpu_count() or 1
    return [w for w in (1, 2, 4, 8, 16) if w <= cpus] or [1]


def settings_for(args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "loader_workers": args.loader_workers or default_workers(),
        "loader_batch_size": args.loader_batch_size or (16 if cuda else 4),
        "loader_batches": args.loader_batches or (20 if cuda else 12),
        "input_size": args.input_size or (224 if cuda else 112),
        "num_frames": args.num_frames or 16,
        "sampling_rate": args.sampling_rate or (4 if cuda else 2),
        "decode_videos": args.decode_videos or 16,
        "loader_repeats": args.repeats or 3,
        "loader_warmup": 2 if args.warmup is None else args.warmup,
    }


def run(args, device: torch.device, shards) -> tuple[list[dict], dict, list[str]]:
    from amd_fast.data import DataConfig
    from amd_fast.data.loader_speed import measure_clips_per_s

    s = settings_for(args, device)
    entries, notes = [], []
    for workers in s["loader_workers"]:
        for backend in BACKENDS:
            cfg = DataConfig(shards=str(shards), split=args.split, backend=backend, device=str(device),
                             batch_size=s["loader_batch_size"], num_frames=s["num_frames"],
                             sampling_rate=s["sampling_rate"], input_size=s["input_size"],
                             num_workers=workers, dali_threads=workers, seed=0)
            log.info("loader %s, %d workers/threads: %d x %d batches of %d videos", backend, workers,
                     s["loader_repeats"], s["loader_batches"], s["loader_batch_size"])
            try:
                runs = []
                for _ in range(s["loader_repeats"]):
                    runs.append(measure_clips_per_s(cfg, batches=s["loader_batches"], warmup=s["loader_warmup"]))
                    gc.collect()  # the finished loader's workers / DALI threads must not compete with the next
            except Exception as err:  # e.g. CodecError: DALI on CPU with H.264 shards
                reason = f"not measured ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                log.warning("loader %s: %s", backend, reason)
                entries.append({"part": "loaders", "kind": "clips", "backend": backend, "workers": workers,
                                "clips_per_s": None, "status": reason})
                continue
            t = timing.Timing(tuple(r["clips_per_s"] for r in runs))
            entries.append({
                "part": "loaders", "kind": "clips", "backend": backend, "workers": workers,
                "batch_size": s["loader_batch_size"], "clips_per_s": t.median, "clips_per_s_spread": [t.min, t.max],
                "data_wait_ms_per_batch": sorted(r["data_wait_ms_per_batch"] for r in runs)[len(runs) // 2],
                "startup_s": sorted(r["warmup_s"] for r in runs)[len(runs) // 2],
                "bad_samples": max(r["bad_samples"] for r in runs), "repeats": t.n, "status": "measured",
            })
    dec_entries, dec_notes = decode.run(manifest_path(shards, args.split), device=device, n_videos=s["decode_videos"],
                                        threads=max(s["loader_workers"]), warmup=1, repeats=s["loader_repeats"])
    entries += dec_entries
    notes += dec_notes
    notes.append(f"Loaders: same DataConfig for both backends (clip {s['num_frames']} frames x stride "
                 f"{s['sampling_rate']}, multi-scale crop to {s['input_size']}px, float32, ImageNet-normalized, on "
                 f"{device}); 'workers' = eager DataLoader processes or DALI CPU threads.")
    return entries, s, notes
