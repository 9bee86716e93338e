"""Which shards the bench reads: ``--shards``, or sets it builds once with the shard tool users run.

* realistic (default for the loaders part): ``--src synthetic --synthetic-content scenes``: a camera
  panning over natural-statistics scenes, short side 320 (426x320), 250-300 frames at 25 fps (10-12 s),
  at camera-video bitrates (VP9 ~20-65 kB/s), encoded with the training preset of the device: ``--preset
  cpu`` (VP9, GOP 32) on CPU, where DALI's decoder has no H.264; on CUDA both ``--preset nvdec`` (H.264)
  and ``--preset cpu`` (VP9, the codec both DALI decoders take).
* quick (``--quick``): small moving-shape clips (128 px, 48 frames), seconds to build and to read.
* GOP sweep: the realistic scenes (fewer videos) re-encoded at each GOP of ``--gops``.

Folder names carry the build settings, so a rerun with the same settings reuses a set and never mixes
two. All are git-ignored under ``shards/``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from amd_fast.errors import InputError

log = logging.getLogger("bench.shards")

ROOT = Path(__file__).resolve().parents[2]

REALISTIC = dict(synthetic_content="scenes", synthetic_size=320, synthetic_frames=300, synthetic_min_frames=250)
QUICK = dict(synthetic_content="shapes", synthetic_size=128, synthetic_frames=48, gop=16)


def manifest_path(shards: Path, split: str) -> Path:
    shards = Path(shards)
    return shards if shards.is_file() else shards / f"{split}.manifest.json"


def _build(name: str, count: int, **options) -> Path:
    from amd_fast.shard import ShardOptions, build_shards

    out = ROOT / "shards" / name
    if not manifest_path(out, "train").exists():
        log.info("building bench shards %s (once; reused later)", out)
    build_shards(ShardOptions(src="synthetic", out=out, splits=("train",), samples_per_shard=32, seed=0,
                              progress=True, workers=os.cpu_count() or 1, synthetic_count=count, **options))
    return out


def realistic(codec: str, count: int = 24) -> Path:
    """The realistic set in ``codec`` ('vp9' -> --preset cpu, 'h264' -> --preset nvdec)."""
    from amd_fast.shard.options import DEFAULT_CLIP_SPAN, preset_gop

    preset, gop = {"vp9": "cpu", "h264": "nvdec"}[codec], preset_gop(DEFAULT_CLIP_SPAN)
    return _build(f"bench-scenes-320p-{codec}-gop{gop}-{count}", count, preset=preset, **REALISTIC)


def quick() -> Path:
    return _build("bench-shapes-128px-48f-80", 80, codec="vp9", **QUICK)


def gop_set(codec: str, gop: int, count: int) -> Path:
    """The realistic scenes at keyframe interval ``gop`` (short side 320, as the presets)."""
    return _build(f"bench-scenes-320p-{codec}-gop{gop}-{count}", count, codec=codec, short_side=320, gop=gop,
                  **REALISTIC)


def loader_sets(args, device: torch.device) -> dict:
    """codec -> shard folder the loaders part reads."""
    if args.shards is not None:
        m = manifest_path(args.shards, args.split)
        if not m.exists():
            raise InputError(f"--shards {args.shards}: no {m.name} there; build shards with "
                             f"`python -m amd_fast.shard ... --out {args.shards}` or pass the folder that holds the "
                             "manifest")
        return {"yours": Path(args.shards)}
    if args.quick:
        return {"vp9": quick()}
    codecs = ("h264", "vp9")  # H.264 on CPU too: the eager loader and the peers decode it (DALI-CPU cannot)
    return {c: realistic(c, args.loader_videos or 24) for c in codecs}


def resolve(args, device: torch.device) -> Path:
    """The shard folder the train part reads: ``--shards``; on CUDA the realistic H.264 set (what the fast
    path is for: NVDEC); on CPU (a tiny model at 64 px) the quick set."""
    if args.shards is not None:
        return loader_sets(args, device)["yours"]
    return realistic("h264", args.loader_videos or 24) if device.type == "cuda" and not args.quick else quick()
