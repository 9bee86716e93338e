"""The decode limit: frames/s of the video codec alone on the bench shards, for context.

No sampling, cropping, resizing, normalisation or batching: every frame of each video
is decoded and dropped. A loader can't beat this number per decoding core, so it tells
whether the loaders are decode-bound or overhead-bound.

* ``pyav``: PyAV (FFmpeg's libavcodec, what the eager loader uses) in this process,
  once with one codec thread (per-core speed) and once with FFmpeg's automatic
  threading. Frames stay in the codec's YUV format (``to_ndarray`` is loader work).
* ``dali``: DALI's ``fn.decoders.video`` fed by ``fn.readers.webdataset`` over the same
  tars (``cpu`` backend on CPU, ``mixed`` = NVDEC on CUDA), decoding whole videos.
"""
from __future__ import annotations

import io
import logging
import tarfile
import time
from pathlib import Path

import torch

from amd_fast.errors import InputError
from amd_fast.shard.format import VIDEO_EXTS
from bench import timing

log = logging.getLogger("bench.decode")

def shard_files(manifest: Path) -> tuple[list[Path], list[Path], dict]:
    """(tars, DALI index files, manifest dict) of one split, paths resolved next to the manifest."""
    from amd_fast.shard import read_manifest

    m = read_manifest(manifest)
    base = Path(manifest).parent
    tars = [base / s["tar"] for s in m["shards"]]
    idxs = [base / s["index"] for s in m["shards"]]
    return tars, idxs, m


def read_videos(tars: list[Path], limit: int) -> list[bytes]:
    """The encoded bytes of the first ``limit`` videos of the split (read once, outside the timing)."""
    out = []
    for tar in tars:
        with tarfile.open(tar) as tf:
            for member in tf:
                if member.isfile() and member.name.rsplit(".", 1)[-1] in VIDEO_EXTS:
                    out.append(tf.extractfile(member).read())
                    if len(out) == limit:
                        return out
    return out


def _pyav_decode_all(videos: list[bytes], threads: int) -> int:
    import av

    frames = 0
    for data in videos:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            if threads == 1:
                stream.codec_context.thread_count = 1
            else:
                stream.thread_type = "AUTO"  # frame + slice threading, FFmpeg picks the count
            for _ in container.decode(stream):
                frames += 1
    return frames


def measure_pyav(videos: list[bytes], *, threads: int, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        _pyav_decode_all(videos[:2], threads)
    samples, frames = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = _pyav_decode_all(videos, threads)
        samples.append(frames / (time.perf_counter() - t0))
    return _entry("pyav", samples, videos=len(videos), frames=frames, threads="1" if threads == 1 else "auto")


def measure_dali(tars: list[Path], idxs: list[Path], *, device: torch.device, n_videos: int, threads: int,
                 warmup: int, repeats: int) -> dict:
    from nvidia.dali import fn, pipeline_def

    dali_device = "mixed" if device.type == "cuda" else "cpu"

    device_id = (device.index or 0) if device.type == "cuda" else None  # None = CPU-only pipeline

    # One video per thread per batch: DALI parallelises over the samples of a batch.
    @pipeline_def(batch_size=threads, num_threads=threads, device_id=device_id, prefetch_queue_depth=2)
    def decode_pipe():
        enc = fn.readers.webdataset(paths=[str(t) for t in tars], index_paths=[str(i) for i in idxs],
                                    ext=[";".join(VIDEO_EXTS)], random_shuffle=False, name="reader")
        return fn.decoders.video(enc, device=dali_device)

    pipe = decode_pipe()
    pipe.build()

    def run(n_batches: int) -> int:
        frames = 0
        for _ in range(n_batches):
            (out,) = pipe.run()
            frames += sum(int(s[0]) for s in out.shape())  # shapes are host metadata: no device sync
        if device.type == "cuda":
            out.as_cpu()  # wait for the last decode to finish before stopping the clock
        return frames

    run(max(1, warmup))
    n_batches = max(1, -(-n_videos // threads))
    samples, frames = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = run(n_batches)
        samples.append(frames / (time.perf_counter() - t0))
    del pipe
    return _entry("dali", samples, videos=n_batches * threads, frames=frames, threads=str(threads),
                  dali_backend=dali_device)


def _entry(backend: str, fps_samples: list[float], **extra) -> dict:
    t = timing.Timing(tuple(fps_samples))
    return {"part": "loaders", "kind": "decode", "backend": backend, "frames_per_s": t.median,
            "frames_per_s_spread": [t.min, t.max], "repeats": t.n, "status": "measured", **extra}


def run(manifest: Path, *, device: torch.device, n_videos: int, threads: int, warmup: int,
        repeats: int) -> tuple[list[dict], list[str]]:
    tars, idxs, _ = shard_files(manifest)
    videos = read_videos(tars, n_videos)
    if not videos:
        raise InputError(f"{manifest}: no video members ({', '.join(VIDEO_EXTS)}) in its tars")
    entries, notes = [], []
    for th in (1, 0):
        log.info("decode limit: PyAV, %s codec threads, %d videos", th or "auto", len(videos))
        entries.append(measure_pyav(videos, threads=th, warmup=warmup, repeats=repeats))
    log.info("decode limit: DALI %s decoder, %d videos", "mixed" if device.type == "cuda" else "cpu", len(videos))
    try:
        entries.append(measure_dali(tars, idxs, device=device, n_videos=len(videos), threads=threads,
                                    warmup=warmup, repeats=repeats))
    except Exception as err:  # e.g. H.264 shards on CPU: DALI's CPU decoder has no H.264
        reason = f"not measured (DALI decode failed: {type(err).__name__}: {str(err).splitlines()[0][:160]})"
        log.warning("decode limit, DALI: %s", reason)
        entries.append({"part": "loaders", "kind": "decode", "backend": "dali", "frames_per_s": None,
                        "status": reason})
        notes.append("DALI's CPU decoder reads VP9/VP8/MJPEG only; re-shard with --codec vp9 to measure it on CPU.")
    return entries, notes
