"""Which shards the loaders and train parts read: ``--shards`` or a small synthetic set built once.

The synthetic set is made by :func:`amd_fast.shard.build_shards` (the same code users run),
VP9 so that both DALI decoders (CPU and NVDEC) can read it. Its folder name carries the
build settings, so a rerun with the same settings reuses it and never mixes two datasets.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from amd_fast.errors import InputError

log = logging.getLogger("bench.shards")

ROOT = Path(__file__).resolve().parents[2]

# Clips long enough for the sampled span (num_frames x sampling_rate) with room to jitter,
# and a short side a little above the crop, as in Kinetics shards resized to short side 256.
SYNTHETIC = {
    "cuda": dict(synthetic_count=160, synthetic_frames=80, synthetic_size=256, gop=16),
    "cpu": dict(synthetic_count=80, synthetic_frames=48, synthetic_size=128, gop=16),
}


def manifest_path(shards: Path, split: str) -> Path:
    shards = Path(shards)
    return shards if shards.is_file() else shards / f"{split}.manifest.json"


def resolve(args, device: torch.device) -> Path:
    """The shard folder to read; builds the synthetic one if ``--shards`` was not given."""
    if args.shards is not None:
        m = manifest_path(args.shards, args.split)
        if not m.exists():
            raise InputError(
                f"--shards {args.shards}: no {m.name} there; build shards with "
                f"`python -m amd_fast.shard ... --out {args.shards}` or pass the folder that holds the manifest")
        return Path(args.shards)
    from amd_fast.shard import ShardOptions, build_shards

    spec = SYNTHETIC[device.type]
    out = ROOT / "shards" / (f"bench-synthetic-{spec['synthetic_size']}px-{spec['synthetic_frames']}f"
                             f"-{spec['synthetic_count']}")
    if not manifest_path(out, args.split).exists():
        log.info("building synthetic VP9 bench shards in %s (once; reused later)", out)
    opts = ShardOptions(src="synthetic", out=out, splits=("train", "val"), codec="vp9",
                        samples_per_shard=32, seed=0, progress=True, workers=os.cpu_count() or 1, **spec)
    manifests = build_shards(opts)  # resumes / no-ops when already complete
    if args.split not in manifests:
        raise InputError(f"--split {args.split}: the synthetic bench shards have {sorted(manifests)}; "
                         "use --split train")
    return out
