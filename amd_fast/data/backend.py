"""Pick the loader backend from the config, the device and the shards' codecs.

The check runs *before* any DALI pipeline is built, from the manifest options (or the per-sample
json when the shards kept their source codecs), so an undecodable codec gives a message naming
the fix instead of a C++ assertion from inside DALI.
"""
from __future__ import annotations

import json
import logging
from typing import Optional, Set, Tuple

from .config import DataConfig
from amd_fast.errors import InputError

from .shards import ShardSet, read_member

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


def shard_codecs(shards: ShardSet) -> Set[str]:
    """Codecs of the shards: the manifest's ``options.codec`` when the shards were re-encoded,
    else the json of the first sample of each tar (``codec=copy`` keeps the sources' codecs;
    we assume one codec per tar, as a dataset download normally is)."""
    opt = normalize_codec(((shards.manifest or {}).get("options") or {}).get("codec", "copy"))
    if opt not in ("copy", "", "none"):
        return {opt}
    codecs, seen = set(), set()
    for s in shards.samples:
        if s.tar in seen or s.json is None:
            continue
        seen.add(s.tar)
        try:
            codecs.add(normalize_codec(json.loads(read_member(s.tar, s.json)).get("codec", "unknown")))
        except ValueError:
            codecs.add("unknown")
    return codecs or {"unknown"}


def dali_available() -> Tuple[bool, str]:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA runtime inside the plugin
        return False, f"nvidia-dali is not importable ({e})"
    return True, ""


def dali_codec_problem(codecs: Set[str], on_gpu: bool) -> Optional[str]:
    """Why DALI cannot decode these codecs on this device, or None."""
    ok = DALI_GPU_CODECS if on_gpu else DALI_CPU_CODECS
    bad = sorted(c for c in codecs if c not in ok)
    if not bad:
        return None
    where = "GPU (NVDEC)" if on_gpu else "CPU"
    return (f"DALI's {where} video decoder cannot decode {', '.join(bad)} (it takes {', '.join(sorted(ok))}); "
            f"re-shard with `python -m amd_fast.shard ... --codec vp9` or use data.backend=eager")


def choose_backend(cfg: DataConfig, shards: ShardSet, device: str) -> str:
    """'dali' or 'eager' for this config; raises CodecError when cfg.backend='dali' cannot work."""
    on_gpu = device.startswith("cuda")
    codecs = shard_codecs(shards)
    if cfg.backend == "eager":
        log.info("data loader: eager (asked for); codecs %s", sorted(codecs))
        return "eager"
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
