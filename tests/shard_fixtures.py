"""Session-scoped shard fixtures shared by the shard, data, train and bench tests.

Both build real shards with :func:`amd_fast.shard.build_shards` from ``--src synthetic``
(learnable moving-shape clips), so every consumer reads exactly what users get.

- ``synthetic_shards``: VP9 webm, 32 frames, 80x80, gop 8; ``train`` = 24 clips in 3 tars,
  ``val`` = 8 clips in 1 tar. DALI decodes VP9 on CPU, so loader tests run everywhere.
- ``synthetic_shards_h264``: same layout with H.264 mp4 and fewer clips (12 train in 2 tars,
  4 val), for the "DALI on CPU cannot decode H.264" paths.

Each returns the output directory, holding ``train.manifest.json`` and ``val.manifest.json``.
"""
from __future__ import annotations

from pathlib import Path

import pytest


def _build(out: Path, *, codec: str, count: int, per_shard: int) -> Path:
    from amd_fast.shard import ShardOptions, build_shards

    opts = ShardOptions(
        src="synthetic",
        out=out,
        splits=("train", "val"),
        codec=codec,
        samples_per_shard=per_shard,
        synthetic_count=count,
        synthetic_frames=32,
        synthetic_size=80,
        gop=8,
        seed=0,
        workers=0,  # in-process: a pool would cost more than it saves on 32 tiny clips
        progress=False,
    )
    manifests = build_shards(opts)
    assert set(manifests) == {"train", "val"}
    return out


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """Dir with train (24 clips, 3 tars) and val (8 clips) VP9 shards + manifests."""
    return _build(tmp_path_factory.mktemp("shards_vp9"), codec="vp9", count=32, per_shard=8)


@pytest.fixture(scope="session")
def synthetic_shards_h264(tmp_path_factory) -> Path:
    """Dir with train (12 clips, 2 tars) and val (4 clips) H.264 mp4 shards + manifests."""
    return _build(tmp_path_factory.mktemp("shards_h264"), codec="h264", count=16, per_shard=6)


def make_video(path: Path, *, frames: int = 8, size: int = 32, codec: str = "h264", seed: int = 0) -> Path:
    """Write a tiny real video (H.264 mp4 by default; 'vp9' -> webm, 'mjpeg' -> avi) with PyAV."""
    import av
    import numpy as np

    encoder, pix = {"h264": ("libx264", "yuv420p"), "vp9": ("libvpx-vp9", "yuv420p"),
                    "mjpeg": ("mjpeg", "yuvj420p")}[codec]
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder, rate=25, options={"deadline": "realtime", "cpu-used": "8"} if codec == "vp9" else {})
        s.width = s.height = size
        s.pix_fmt = pix
        for _ in range(frames):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path
