"""Pick the loader backend from the config, the device and the shards' codecs.

The check runs *before* any DALI pipeline is built, over every sample of the split (the manifest's
per-codec counts), so one undecodable clip deep in a tar gives a message naming the count and the
fix instead of a failed batch, or a C++ assertion from inside DALI.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, Optional, Tuple

from .config import DataConfig
from amd_fast.errors import InputError

from .shards import ShardSet

log = logging.getLogger(__name__)

# DALI 2.4 fn.decoders.video. CPU: libavcodec VP8/VP9/MJPEG only. 'mixed' (NVDEC on H100/H200):
# H.264, HEVC, VP8, VP9, MPEG-4 (+ MJPEG via DALI's own path); AV1 needs Ampere GA10x/Ada/Blackwell
# NVDEC, which Hopper lacks, so we do not offer it.
DALI_CPU_CODECS = frozenset({"vp9", "vp8", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mpeg4", "mjpeg"})

_ALIASES = {"avc": "h264", "avc1": "h264", "libx264": "h264", "h265": "hevc", "libx265": "hevc",
            "libvpx-vp9": "vp9", "libvpx": "vp8", "vp09": "vp9", "vp08": "vp8", "mp4v": "mpeg4"}


class CodecError(InputError):
    """The chosen backend cannot decode the shards' codec (message names the fix)."""


def normalize_codec(name: str) -> str:
    n = str(name).strip().lower()
    return _ALIASES.get(n, n)


def shard_codecs(shards: ShardSet) -> Dict[str, int]:
    """Samples by codec over every sample of the split: the manifest's ``codecs`` counts (recorded by the
    shard tool, or by ``--verify`` for older manifests), else each sample's json read once per tar (by
    ``open_shards`` for a set without a manifest)."""
    if shards.codecs is not None:  # a manifest-less set: open_shards read every json already
        return dict(shards.codecs)
    counts = (shards.manifest or {}).get("codecs")
    if isinstance(counts, dict) and sum(counts.values()) >= shards.num_samples:
        return {normalize_codec(c): int(n) for c, n in counts.items()}
    log.warning("no codec counts in the manifest of these %d samples: reading every sample's json (run "
                "`python -m amd_fast.shard --verify --out <shard folder>` once to record them)", shards.num_samples)
    out: Dict[str, int] = {}
    by_tar: Dict[str, list] = {}
    for s in shards.samples:
        by_tar.setdefault(s.tar, []).append(s.json)
    for tar, members in by_tar.items():
        with open(tar, "rb") as f:
            for where in members:
                codec = "unknown"
                if where is not None:
                    f.seek(where[0])
                    try:
                        codec = normalize_codec(json.loads(f.read(where[1])).get("codec", "unknown"))
                    except ValueError:
                        pass
                out[codec] = out.get(codec, 0) + 1
    return out


def dali_available() -> Tuple[bool, str]:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA runtime inside the plugin
        return False, f"nvidia-dali is not importable ({e})"
    return True, ""


def dali_codec_problem(codecs: Dict[str, int], on_gpu: bool) -> Optional[str]:
    """Why DALI cannot decode these codecs (samples by codec) on this device, or None."""
    ok = DALI_GPU_CODECS if on_gpu else DALI_CPU_CODECS
    bad = {c: n for c, n in sorted(codecs.items()) if c not in ok}
    if not bad:
        return None
    total = sum(codecs.values())
    what = ", ".join(f"{n} of {total} samples are {c}" for c, n in bad.items())
    if on_gpu:
        fix = "re-shard with `python -m amd_fast.shard ... --preset nvdec` (H.264) or `--codec h264`"
    else:
        fix = "re-shard with `python -m amd_fast.shard ... --codec vp9` (or --preset cpu)"
    return (f"{what}, which DALI's {'GPU (NVDEC)' if on_gpu else 'CPU'} decoder cannot decode (it takes "
            f"{', '.join(sorted(ok))}); {fix}, or use data.backend=eager")


def choose_backend(cfg: DataConfig, shards: ShardSet, device: str) -> str:
    """'dali' or 'eager' for this config; raises CodecError when cfg.backend='dali' cannot work."""
    on_gpu = device.startswith("cuda")
    if cfg.backend == "eager":
        log.info("data loader: eager (asked for)")
        return "eager"
    if cfg.backend == "auto" and not on_gpu:
        # Measured on 320p VP9 (bench/results): DALI's CPU decoder costs ~1.6x the eager loader's CPU per clip
        # even before the eager loader's one-pass YUV crop path; DALI-CPU is used only when asked for.
        log.info("data loader: eager (auto): no CUDA device, and on CPUs the eager loader (%s, one-pass YUV "
                 "crop+scale+RGB) costs less CPU per clip than DALI's CPU decoder; data.backend=dali forces DALI",
                 cfg.eager_decoder)
        return "eager"
    codecs = shard_codecs(shards)
    ok, why = dali_available()
    problem = why if not ok else dali_codec_problem(codecs, on_gpu)
    if cfg.backend == "dali":
        if problem:
            raise CodecError(problem)
        log.info("data loader: DALI %s decode (asked for); codecs %s", "mixed/NVDEC" if on_gpu else "CPU",
                 sorted(codecs))
        return "dali"
    if problem:
        log.info("data loader: eager (auto), because %s", problem)
        return "eager"
    log.info("data loader: DALI (auto): %s decode handles codecs %s", "mixed/NVDEC" if on_gpu else "CPU",
             sorted(codecs))
    return "dali"
