"""Build options of the shard tool (one dataclass shared by the CLI and the Python API)."""
from __future__ import annotations

import dataclasses
import errno
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from amd_fast.errors import InputError

from . import storage
from .synthetic import CONTENTS, SyntheticSpec

class ShardOptionsError(InputError):
    """An invalid combination of shard-tool options (the message names the option and the fix)."""


SOURCES = ("synthetic", "kinetics400", "ssv2", "ucf101", "hmdb51", "csv", "folder")
CODECS = ("copy", "h264", "vp9", "mjpeg")
DISTRIBUTORS = ("local", "ray")

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

# Output short side, pixels. 16 is one ViT patch; 4096 is 4K, already far above any training crop (and
# encodes take seconds per frame beyond it). Both even: yuv420p halves the chroma planes.
SHORT_SIDE_RANGE = (16, 4096)
# Keyframe interval, frames. 100000 (about an hour at 25 fps) already means "one keyframe per video";
# the encoders take an int32, and a larger value made every video fail instead of being refused.
GOP_RANGE = (1, 100_000)
# A synthetic clip is rendered in memory (frames x height x width x 3 bytes) before it is encoded.
SYNTHETIC_CLIP_BYTES_MAX = 1 << 30
# Split names become file names (<split>-000000.tar, <split>.manifest.json): no separators, no dots.
SPLIT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
# Sources whose options name a folder or listing: --root / --list / --classes given to any other source
# would be ignored, so they are refused instead.
ROOT_SOURCES = ("kinetics400", "ssv2", "ucf101", "hmdb51", "csv", "folder")
CLASSES_SOURCES = ("kinetics400", "csv")


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
    - ``splits`` are matched case-insensitively and written lowercase (``Train`` builds ``train-*.tar``);
      a listing's split column (``--src csv``) and split sub-folders (``--src folder``) match the same way.
    - ``workers=0`` encodes in this process; more workers than CPU cores or than videos to encode are
      capped (logged). ``short_side`` is even, in 16..4096; ``gop`` in 1..100000.
    """

    src: str = "synthetic"
    root: Optional[Path] = None
    list_file: Optional[Path] = None
    classes_file: Optional[Path] = None
    out: "Optional[Path | str]" = None  # a folder, or an fsspec URL (s3://bucket/prefix)
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
    # How the build runs (none of these change the bytes): see amd_fast/shard/ray_build.py.
    distributor: str = "local"  # local: a process pool on this machine; ray: shard-sized tasks on a Ray cluster
    ray_address: Optional[str] = None  # "auto" / "host:port": an existing cluster; None: start one for the build
    max_task_retries: int = 3  # Ray: a shard task whose worker or node died is run again this many times
    video_timeout_s: float = 600.0  # one video's transcode is stopped (and logged as failed) after this; 0 = never
    out_url: Optional[str] = None  # set by resolved() when --out is a URL; ``out`` is then the local staging folder

    def resolved(self) -> "ShardOptions":
        """A validated copy with defaults filled in (codec, out, splits, absolute paths)."""
        o = dataclasses.replace(self)
        if o.src not in SOURCES:
            raise ShardOptionsError(f"unknown --src {o.src!r}; choose one of {', '.join(SOURCES)}")
        from_preset = {}  # option -> value the preset filled in (named in errors: the user did not type them)
        if o.preset is not None:
            if o.preset not in PRESETS:
                raise ShardOptionsError(f"unknown --preset {o.preset!r}; choose one of {', '.join(PRESETS)}")
            if o.clip_span < 1:
                raise ShardOptionsError("--clip-span must be >= 1 (frames a training clip covers)")
            for key, value in {**PRESETS[o.preset], "gop": preset_gop(o.clip_span)}.items():
                if getattr(o, key) is None:
                    setattr(o, key, value)
                    from_preset[key] = value
        elif o.clip_span != DEFAULT_CLIP_SPAN:
            raise ShardOptionsError("--clip-span only sets the keyframe interval of a --preset; add --preset "
                                    "nvdec|cpu, or give the interval directly with --gop N")
        if o.codec is None:
            o.codec = "vp9" if o.src == "synthetic" else "copy"
        if o.codec not in CODECS:
            raise ShardOptionsError(f"unknown --codec {o.codec!r}; choose one of {', '.join(CODECS)}")
        if o.src == "synthetic" and o.codec == "copy":
            raise ShardOptionsError("--src synthetic generates frames, so it needs an encoder: --codec vp9|h264|mjpeg")
        if o.codec == "copy" and (o.short_side or o.gop):
            flags = {k: f"--{k.replace('_', '-')} {getattr(o, k)}" for k in ("short_side", "gop") if getattr(o, k)}
            given = [f for k, f in flags.items() if k not in from_preset]
            by_preset = [f for k, f in flags.items() if k in from_preset]
            what = "; ".join(([f"--preset {o.preset} sets {' and '.join(by_preset)}"] if by_preset else [])
                             + ([f"{' and '.join(given)} given"] if given else []))
            fix = (f"drop --codec copy (the preset encodes {PRESETS[o.preset]['codec']}), or drop --preset {o.preset} "
                   "to keep the source bytes" if by_preset else "add --codec vp9 (or h264/mjpeg)")
            raise ShardOptionsError(f"{what}: that needs re-encoding, but --codec copy keeps the "
                                    f"source bytes; {fix}")
        o.splits = _split_names(o.splits) if o.splits is not None else DEFAULT_SPLITS[o.src]
        if storage.is_url(o.out):  # object storage: build in a local staging folder, upload (storage.py)
            o.out_url = str(o.out).rstrip("/")
            storage.filesystem(o.out_url)  # a missing backend (s3fs, gcsfs) is refused before any work
            o.out = storage.stage_dir_for(o.out_url)
            if o.verify:
                raise ShardOptionsError(f"--verify reads the shards from a local folder; build to {o.out_url} "
                                        "without --verify, then verify a local copy (or build to a folder)")
        o.out = Path(o.out).expanduser() if o.out is not None else Path("shards") / o.src
        _check_out(o.out)
        for name, flag in (("root", "--root"), ("list_file", "--list"), ("classes_file", "--classes")):
            v = getattr(o, name)
            if v is not None:
                setattr(o, name, _resolve(Path(v), flag))
        if o.root is not None and o.src not in ROOT_SOURCES:
            raise ShardOptionsError(f"--src {o.src} reads no dataset folder, so --root would be ignored; drop it")
        if o.list_file is not None and o.src != "csv":
            raise ShardOptionsError(f"--list is read by --src csv only, so --src {o.src} would ignore it; drop --list "
                                    "(or use --src csv)")
        if o.classes_file is not None and o.src not in CLASSES_SOURCES:
            raise ShardOptionsError(f"--src {o.src} takes its class list from the dataset itself, so --classes "
                                    f"would be ignored; drop it (it applies to {' and '.join(CLASSES_SOURCES)})")
        if o.src in ROOT_SOURCES and o.src != "csv" and o.root is None:
            raise ShardOptionsError(f"--src {o.src} needs --root DIR (the dataset folder)")
        if o.root is not None and o.root.exists() and not o.root.is_dir():
            raise ShardOptionsError(f"--root {o.root} is a file; give the dataset folder"
                                    + (" (the listing goes to --list)" if o.src == "csv" else ""))
        if o.src == "csv" and o.list_file is None:
            raise ShardOptionsError("--src csv needs --list FILE (a CSV with a header 'path,label[,split]')")
        if o.list_file is not None and o.list_file.is_dir():
            raise ShardOptionsError(f"--list {o.list_file} is a folder; give the CSV file (header 'path,label[,split]')")
        if o.workers < 0:
            raise ShardOptionsError(f"--workers {o.workers}: give the number of encoder processes (>= 1), or 0 to "
                                    "encode in this process")
        if o.distributor not in DISTRIBUTORS:
            raise ShardOptionsError(f"unknown --distributor {o.distributor!r}; choose one of {', '.join(DISTRIBUTORS)}")
        if o.distributor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise ShardOptionsError("--distributor ray needs Ray: pip install 'amd_fast[ray]'") from None
        elif o.ray_address is not None:
            raise ShardOptionsError("--ray-address is used by --distributor ray only; add --distributor ray or drop it")
        if o.max_task_retries < 0:
            raise ShardOptionsError("--max-task-retries must be >= 0")
        if not o.video_timeout_s >= 0:
            raise ShardOptionsError("--video-timeout-s must be >= 0 seconds (0: no limit)")
        if o.samples_per_shard < 1:
            raise ShardOptionsError("--samples-per-shard must be >= 1")
        if o.shard_bytes is not None and o.shard_bytes < 1:
            raise ShardOptionsError("--shard-bytes must be >= 1")
        lo, hi = SHORT_SIDE_RANGE
        if o.short_side is not None and not (lo <= o.short_side <= hi and o.short_side % 2 == 0):
            raise ShardOptionsError(f"--short-side {o.short_side}: must be an even number of pixels in {lo}..{hi} "
                                    "(yuv420p needs even sizes; 320 suits 224-pixel training crops)")
        lo, hi = GOP_RANGE
        if o.gop is not None and not lo <= o.gop <= hi:
            raise ShardOptionsError(f"--gop {o.gop}: the keyframe interval must be in {lo}..{hi} frames")
        if o.limit is not None and o.limit < 1:
            raise ShardOptionsError("--limit must be >= 1")
        if o.max_failures is not None and o.max_failures < 0:
            raise ShardOptionsError("--max-failures must be >= 0 (0: stop at the first video that fails)")
        if o.seed < 0:
            raise ShardOptionsError(f"--seed {o.seed}: must be >= 0")
        if o.src == "synthetic":
            if o.synthetic_count < 2 or o.synthetic_frames < 2 or o.synthetic_size < 16:
                raise ShardOptionsError("synthetic needs count >= 2, frames >= 2, size >= 16")
            if not 2 <= o.synthetic_classes <= 360:
                raise ShardOptionsError("synthetic classes must be in 2..360 (one motion direction each)")
            if o.synthetic_size % 2 or o.synthetic_size > SHORT_SIDE_RANGE[1]:
                raise ShardOptionsError(f"--synthetic-size {o.synthetic_size}: must be even (yuv420p) and at most "
                                        f"{SHORT_SIDE_RANGE[1]}")
            if o.synthetic_content not in CONTENTS:
                raise ShardOptionsError(f"unknown --synthetic-content {o.synthetic_content!r}; choose one of "
                                        f"{', '.join(CONTENTS)}")
            if o.synthetic_min_frames is not None and not 2 <= o.synthetic_min_frames <= o.synthetic_frames:
                raise ShardOptionsError("--synthetic-min-frames must be in 2..--synthetic-frames")
            w, h = o.synthetic_spec().frame_size()
            if o.synthetic_frames * w * h * 3 > SYNTHETIC_CLIP_BYTES_MAX:
                raise ShardOptionsError(f"a synthetic clip of {o.synthetic_frames} frames at {w}x{h} is "
                                        f"{o.synthetic_frames * w * h * 3 / 2**30:.1f} GiB in memory (at most 1 GiB); "
                                        "lower --synthetic-frames or --synthetic-size")
        if o.src in ("hmdb51", "ucf101"):
            if o.fold not in (1, 2, 3):
                raise ShardOptionsError("--fold must be 1, 2 or 3 (the official HMDB51/UCF101 splits)")
        elif o.fold != 1:
            raise ShardOptionsError(f"--fold picks an official split of ucf101/hmdb51; --src {o.src} has none, "
                                    "drop --fold")
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


def _split_names(splits: Sequence[str]) -> tuple:
    """--splits as written -> lowercase names, each once (split names match case-insensitively)."""
    if not splits:
        raise ShardOptionsError("--splits names no split; give at least one (e.g. --splits train,val), or drop "
                                "--splits for the source's default")
    names = []
    for raw in splits:
        name = str(raw).strip().lower()
        if not SPLIT_NAME.fullmatch(name):
            raise ShardOptionsError(f"--splits: {str(raw)!r} is not a split name (letters, digits, '_' and '-'; it "
                                    "becomes part of the shard file names)")
        if name in names:
            raise ShardOptionsError(f"--splits names {name!r} twice (split names match case-insensitively)")
        names.append(name)
    return tuple(names)


def _check_out(out: Path) -> None:
    """--out must be (or become) a folder: a file there, or on the way there, is refused before any work."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"is under {p}, which is a file"
                raise ShardOptionsError(f"--out {out} {what}; pick a folder for the shards")
            return


def _resolve(path: Path, flag: str) -> Path:
    try:
        return path.expanduser().resolve()
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        raise ShardOptionsError(f"{flag} {path}: a symlink loop; point {flag} at the real path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ShardOptionsError(f"{flag} {path}: a symlink loop; point {flag} at the real path") from None
        raise
