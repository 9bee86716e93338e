"""Build options of the shard tool (one dataclass shared by the CLI and the Python API)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from amd_fast.errors import InputError

from .synthetic import CONTENTS, SyntheticSpec

class ShardOptionsError(InputError):
    """An invalid combination of shard-tool options (the message names the option and the fix)."""


SOURCES = ("synthetic", "kinetics400", "ssv2", "ucf101", "hmdb51", "csv", "folder")
CODECS = ("copy", "h264", "vp9", "mjpeg")

# Splits built when --splits is not given. UCF101/HMDB51 ship train/test only.
DEFAULT_SPLITS = {
    "synthetic": ("train", "val"),
    "kinetics400": ("train", "val"),
    "ssv2": ("train", "val"),
    "ucf101": ("train", "test"),
    "hmdb51": ("train", "test"),
    "csv": ("train",),
    "folder": ("train",),
}

# Options that change the bytes of the shards. A rerun whose values differ from the
# finished shards' would mix two datasets under one manifest, so it is refused
# unless --overwrite. (workers, max_failures, verify, progress only change how we build.)
CONTENT_FIELDS = (
    "src", "root", "list_file", "classes_file", "samples_per_shard", "shard_bytes", "codec",
    "short_side", "gop", "limit", "seed", "fold", "preset",
    "synthetic_count", "synthetic_frames", "synthetic_size", "synthetic_classes", "synthetic_content",
    "synthetic_min_frames",
)

# Re-encoding presets for decode-efficient training shards (the options a preset sets are filled in only
# where the command line leaves them unset). Every choice and its cost, measured by `bench/throughput.py
# --parts gop` (README "Decode-efficient shards"):
# - codec: h264 for NVDEC (DALI 'mixed' on a GPU, the fastest decoder we have); vp9 for DALI's CPU
#   decoder, which has no H.264. yuv420p and a constant frame rate always (encode_frames numbers frames).
# - short side 320: VideoMAE's Kinetics preprocessing; 224 crops are cut from it, and decoding 320p
#   instead of the sources' 360p-1080p costs 1.3-11x fewer pixels per frame.
# - GOP: a clip must be decoded from the keyframe before its first frame, so a GOP of g adds (g-1)/2
#   frames on average to the clip's span, and keyframes cost bytes and decode time (several inter frames
#   each). preset_gop() picks the power of two nearest span/2: span 61 (16 frames at stride 4) -> GOP 32,
#   +25% decoded frames where YouTube GOPs of ~250 frames add +150%. Measured on 320p VP9 scenes
#   (bench/results/cpu-2026-11-26.md, GOP sweep): GOP 32 gave the most clips/s per CPU-second of 1-256
#   and 391 kB per 11 s video; GOP 16: 3% slower, 544 kB; intra-only: 2.5x slower, 7.2 MB.
PRESETS = {
    "nvdec": {"codec": "h264", "short_side": 320},
    "cpu": {"codec": "vp9", "short_side": 320},
}
DEFAULT_CLIP_SPAN = 61  # frames a VideoMAE / AMD Kinetics clip covers: (16 - 1) * 4 + 1


def preset_gop(clip_span: int) -> int:
    """Keyframe interval for clips spanning ``clip_span`` frames: the power of two nearest span / 2 (2..64)."""
    return int(min(64, max(2, 2 ** round(math.log2(max(clip_span, 1) / 2)))))


@dataclass
class ShardOptions:
    """What to shard and how. Defaults follow the CLI (``python -m amd_fast.shard --help``).

    - ``codec=None`` means vp9 for ``synthetic`` and ``copy`` for real datasets (no quality loss,
      fastest; re-encode with ``vp9`` when DALI must decode on CPU, which cannot do H.264).
    - ``shard_bytes`` (if set) closes a shard once the *source* bytes assigned to it reach the
      value; the assignment must be known before encoding for resume to work, so with a
      re-encoding codec the tar size is only approximately ``shard_bytes``.
    - ``max_failures=None`` allows up to 5 % of a split's videos (rounded up) to be skipped.
    - ``synthetic_count`` is the total number of synthetic clips; a quarter (rounded down) goes
      to ``val`` (and ``test`` if asked), the rest to ``train``.
    """

    src: str = "synthetic"
    root: Optional[Path] = None
    list_file: Optional[Path] = None
    classes_file: Optional[Path] = None
    out: Optional[Path] = None
    splits: Optional[Sequence[str]] = None
    samples_per_shard: int = 256
    shard_bytes: Optional[int] = None
    workers: int = 2
    codec: Optional[str] = None
    short_side: Optional[int] = None
    gop: Optional[int] = None
    limit: Optional[int] = None
    seed: int = 0
    fold: int = 1
    overwrite: bool = False
    max_failures: Optional[int] = None
    verify: bool = False
    progress: bool = True
    preset: Optional[str] = None
    clip_span: int = DEFAULT_CLIP_SPAN
    synthetic_count: int = 320
    synthetic_frames: int = 32
    synthetic_size: int = 80
    synthetic_classes: int = 4
    synthetic_content: str = "shapes"
    synthetic_min_frames: Optional[int] = None

    def resolved(self) -> "ShardOptions":
        """A validated copy with defaults filled in (codec, out, splits, absolute paths)."""
        o = dataclasses.replace(self)
        if o.src not in SOURCES:
            raise ShardOptionsError(f"unknown --src {o.src!r}; choose one of {', '.join(SOURCES)}")
        if o.preset is not None:
            if o.preset not in PRESETS:
                raise ShardOptionsError(f"unknown --preset {o.preset!r}; choose one of {', '.join(PRESETS)}")
            if o.clip_span < 1:
                raise ShardOptionsError("--clip-span must be >= 1 (frames a training clip covers)")
            for key, value in {**PRESETS[o.preset], "gop": preset_gop(o.clip_span)}.items():
                if getattr(o, key) is None:
                    setattr(o, key, value)
        if o.codec is None:
            o.codec = "vp9" if o.src == "synthetic" else "copy"
        if o.codec not in CODECS:
            raise ShardOptionsError(f"unknown --codec {o.codec!r}; choose one of {', '.join(CODECS)}")
        if o.src == "synthetic" and o.codec == "copy":
            raise ShardOptionsError("--src synthetic generates frames, so it needs an encoder: --codec vp9|h264|mjpeg")
        if o.codec == "copy" and (o.short_side or o.gop):
            raise ShardOptionsError("--short-side/--gop need re-encoding; add --codec vp9 (or h264/mjpeg)")
        o.splits = tuple(o.splits) if o.splits else DEFAULT_SPLITS[o.src]
        o.out = Path(o.out) if o.out is not None else Path("shards") / o.src
        for name in ("root", "list_file", "classes_file"):
            v = getattr(o, name)
            if v is not None:
                setattr(o, name, Path(v).expanduser().resolve())
        if o.src in ("kinetics400", "ssv2", "ucf101", "hmdb51", "folder") and o.root is None:
            raise ShardOptionsError(f"--src {o.src} needs --root DIR (the dataset folder)")
        if o.src == "csv" and o.list_file is None:
            raise ShardOptionsError("--src csv needs --list FILE (a CSV with a header 'path,label[,split]')")
        if o.samples_per_shard < 1:
            raise ShardOptionsError("--samples-per-shard must be >= 1")
        if o.shard_bytes is not None and o.shard_bytes < 1:
            raise ShardOptionsError("--shard-bytes must be >= 1")
        if o.short_side is not None and (o.short_side < 2 or o.short_side % 2):
            raise ShardOptionsError("--short-side must be an even number >= 2 (yuv420p needs even sizes)")
        if o.gop is not None and o.gop < 1:
            raise ShardOptionsError("--gop must be >= 1")
        if o.limit is not None and o.limit < 1:
            raise ShardOptionsError("--limit must be >= 1")
        if o.src == "synthetic":
            if o.synthetic_count < 2 or o.synthetic_frames < 2 or o.synthetic_size < 16:
                raise ShardOptionsError("synthetic needs count >= 2, frames >= 2, size >= 16")
            if not 2 <= o.synthetic_classes <= 360:
                raise ShardOptionsError("synthetic classes must be in 2..360 (one motion direction each)")
            if o.synthetic_size % 2:
                raise ShardOptionsError("synthetic size must be even (yuv420p)")
            if o.synthetic_content not in CONTENTS:
                raise ShardOptionsError(f"unknown --synthetic-content {o.synthetic_content!r}; choose one of "
                                        f"{', '.join(CONTENTS)}")
            if o.synthetic_min_frames is not None and not 2 <= o.synthetic_min_frames <= o.synthetic_frames:
                raise ShardOptionsError("--synthetic-min-frames must be in 2..--synthetic-frames")
        if o.src in ("hmdb51", "ucf101") and o.fold not in (1, 2, 3):
            raise ShardOptionsError("--fold must be 1, 2 or 3 (the official HMDB51/UCF101 splits)")
        return o

    def max_failures_for(self, n_videos: int) -> int:
        if self.max_failures is not None:
            return self.max_failures
        return math.ceil(0.05 * n_videos)

    def content_dict(self) -> dict:
        """The options that determine shard contents, JSON-ready (paths as strings)."""
        d = {}
        for k in CONTENT_FIELDS:
            v = getattr(self, k)
            d[k] = str(v) if isinstance(v, Path) else v
        if self.src != "synthetic":
            for k in list(d):
                if k.startswith("synthetic_"):
                    del d[k]
        return d

    def synthetic_spec(self) -> Optional[SyntheticSpec]:
        """What ``--src synthetic`` renders (None for the other sources)."""
        if self.src != "synthetic":
            return None
        return SyntheticSpec(self.synthetic_content, self.synthetic_classes, self.synthetic_frames,
                             self.synthetic_size, self.synthetic_min_frames)
