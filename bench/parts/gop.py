"""GOP sweep: what the keyframe interval of the shards costs and buys, on the same realistic videos.

Every decoder (DALI's, NVDEC, PyAV with seeking) starts a clip at the keyframe at or before its first frame,
so a GOP of ``g`` adds ``start mod g`` frames of decode before a clip's ``span`` (AMD / VideoMAE: 16 frames at
stride 4, span 61); shorter GOPs cost bytes (a keyframe is several times larger than an inter frame). For each
GOP of ``--gops`` the realistic scenes (``parts/shards.gop_set``: VP9 on CPU, H.264 on CUDA) are encoded once
and read by the DALI and the eager loader. Reported per GOP and loader: clips/s, CPU seconds per clip, bytes per
video, and the decoded frames per delivered clip frame, computed (not measured) from the GOP, the span, the
videos' lengths and ``num_sample``: ``mean over valid starts of (span + start mod g) / (num_frames x num_sample)``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from bench.parts.loaders import _measure
from bench.parts.shards import gop_set, manifest_path

log = logging.getLogger("bench.gop")


def settings_for(args, device: torch.device) -> dict:
    quick = args.quick
    return {
        "gops": args.gops or ([1, 16] if quick else [1, 4, 8, 16, 32, 256]),
        "gop_codec": "h264" if device.type == "cuda" else "vp9",
        "gop_videos": 4 if quick else 12,
        "gop_loaders": ["dali", "eager"],
        "loader_batch_size": args.loader_batch_size or 4,
        "loader_batches": args.loader_batches or (2 if quick else 6),
        "input_size": args.input_size or (112 if quick else 224),
        "num_frames": args.num_frames or 16,
        "sampling_rate": args.sampling_rate or 4,
        "num_sample": args.num_sample or 4,
        "loader_repeats": args.repeats or (1 if quick else 2),
        "loader_warmup": 1 if args.warmup is None else args.warmup,
    }


def decoded_per_delivered(frames: list[int], gop: int, num_frames: int, stride: int, num_sample: int) -> float:
    """Mean decoded frames per delivered clip frame over the videos and their valid clip starts."""
    span = (num_frames - 1) * stride + 1
    per_video = []
    for n in frames:
        starts = np.arange(max(n - span + 1, 1))
        decoded = np.minimum(span, n) + starts % gop  # from the keyframe before the start to the clip's last frame
        per_video.append(decoded.mean())
    return float(np.mean(per_video)) / (num_frames * num_sample)


def run(args, device: torch.device, shards=None) -> tuple[list[dict], dict, list[str]]:
    from amd_fast.data import DataConfig
    from amd_fast.data.shards import open_shards, read_member
    from amd_fast.shard import read_manifest
    from amd_fast.shard.format import ClipInfo

    s = settings_for(args, device)
    entries = []
    for gop in s["gops"]:
        folder = gop_set(s["gop_codec"], gop, s["gop_videos"])
        m = read_manifest(manifest_path(folder, "train"))
        frames = [ClipInfo.unpack(read_member(x.tar, x.info)).frames for x in open_shards(folder, "train").samples]
        ratio = decoded_per_delivered(frames, gop, s["num_frames"], s["sampling_rate"], s["num_sample"])
        for name in s["gop_loaders"]:
            cfg = DataConfig(shards=str(folder), split="train", backend=name, device=str(device),
                             batch_size=s["loader_batch_size"], num_frames=s["num_frames"],
                             sampling_rate=s["sampling_rate"], input_size=s["input_size"], num_sample=s["num_sample"],
                             num_workers=1, dali_threads=1, dali_pipelines=1, seed=0)
            row = {"part": "gop", "gop": gop, "codec": s["gop_codec"], "loader": name, "videos": m["num_samples"],
                   "bytes_per_video": m["bytes"] / m["num_samples"], "mean_frames": float(np.mean(frames)),
                   "decoded_per_delivered_frame": ratio}
            log.info("gop %d, %s loader", gop, name)
            try:
                row.update(_measure(cfg, s, device))
            except Exception as err:
                row.update(clips_per_s=None, status=f"not measured ({type(err).__name__}: "
                                                     f"{str(err).splitlines()[0][:200]})")
            entries.append(row)
    notes = [f"GOP sweep: {s['gop_videos']} realistic scene videos (426x320, 250-300 frames, {s['gop_codec']}) per GOP, "
             f"one worker / one DALI thread, clips of {s['num_frames']} frames at stride {s['sampling_rate']} with "
             f"{s['num_sample']} crops per decode; decoded frames per delivered clip frame is computed from the GOP "
             "and the videos' lengths (keyframes at multiples of the GOP), not measured."]
    return entries, s, notes
