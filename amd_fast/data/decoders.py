"""Video decoders for the eager loader: encoded bytes + frame indices -> RGB frames.

Every decoder has the same contract: ``decode(data, indices) -> (len(indices), H, W, 3)`` uint8 (a numpy
array, or a torch tensor on the GPU for torchcodec's CUDA decode), frames in the order asked for; an index
past the last decodable frame repeats the last one (DALI's ``pad_mode='edge'``). Any failure is a
:class:`DecodeError`.

- ``pyav`` (default): FFmpeg through PyAV. Seeks to the keyframe at or before the clip's first frame and
  decodes forward, as DALI and decord do (decoding from frame 0 costs the whole video before the clip).
- ``torchcodec``: PyTorch's decoder (``pip install torchcodec``; needs FFmpeg 4-7 shared libraries, e.g.
  ``apt-get install ffmpeg``). On the CPU in DataLoader workers, or on the data device's GPU (NVDEC) when
  the loader runs in the main process (``data.num_workers=0``) on CUDA.
- ``decord``: the decoder VideoMAE / AMD's own loaders use (``pip install decord``).

The last two are what a user would pick instead of amd_fast's loaders, so ``bench/throughput.py`` runs
them beside ours on the same clip contract.
"""
from __future__ import annotations

import io
import math
from fractions import Fraction
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from amd_fast.errors import InputError

DECODERS = ("pyav", "torchcodec", "decord")


class DecodeError(RuntimeError):
    """A video (or the frames asked for) could not be decoded; the message says why."""


def _pad_edge(got: Dict[int, object], indices: Sequence[int]):
    """Frames at ``indices`` from ``got`` (decoded index -> frame); a missing index takes the nearest
    decoded frame before it (the video ended before it)."""
    if not got:
        raise DecodeError("no frame decoded")
    keys = sorted(got)
    out = []
    for i in indices:
        j = int(np.searchsorted(keys, i, side="right")) - 1
        out.append(got[keys[max(j, 0)]])
    return out


def decode_pyav(data: bytes, indices: Sequence[int], threads: int = 1, stats: Optional[dict] = None) -> np.ndarray:
    """PyAV: seek to the keyframe at or before the first wanted frame, decode forward to the last.

    Frame numbers come from each frame's pts (``round((pts - start) * time_base * fps)``, constant frame
    rate, as every shard this tool writes): the seek target is half a frame after the wanted frame's
    nominal time, so a rounded pts (webm's millisecond clock) never lands a GOP early. Streams without a
    frame rate or pts are decoded from the start, counting frames. ``threads``: FFmpeg threads (0 = auto).
    ``stats`` (optional dict) receives ``decoded``: the frames decoded, ``first``: the first one's number."""
    import av

    want = sorted({int(i) for i in indices})
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if threads != 1 else "SLICE"
            if threads:
                stream.thread_count = threads
            rate = stream.average_rate or stream.guessed_rate
            start_pts = stream.start_time or 0
            if rate and stream.time_base and want[0] > 0:
                target = start_pts + math.floor((Fraction(want[0]) + Fraction(1, 2)) / rate / stream.time_base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
                got = _decode_forward(container, stream, want, lambda k, f: _pts_index(f, start_pts, stream, rate),
                                      stats)
                if got is not None:
                    return np.stack(_pad_edge(got, indices))
                container.seek(start_pts, stream=stream, backward=True, any_frame=False)  # pts unusable
            got = _decode_forward(container, stream, want, lambda k, f: k, stats)
    except (av.error.FFmpegError, IndexError, ValueError, OverflowError) as e:
        raise DecodeError(str(e)) from e
    return np.stack(_pad_edge(got or {}, indices))


def _pts_index(frame, start_pts: int, stream, rate) -> Optional[int]:
    if frame.pts is None:
        return None
    return int(round((frame.pts - start_pts) * stream.time_base * rate))


def _decode_forward(container, stream, want, index_of: Callable, stats: Optional[dict]
                    ) -> Optional[Dict[int, np.ndarray]]:
    """Decode until the last wanted frame; None when frame numbers are unusable (no pts, or the first
    frame after a seek lies past the first wanted one)."""
    wanted, last, got = set(want), want[-1], {}
    k = -1
    for k, frame in enumerate(container.decode(stream)):
        i = index_of(k, frame)
        if i is None or (k == 0 and i > want[0]):
            return None
        if k == 0 and stats is not None:
            stats["first"] = i
        if i in wanted:
            got[i] = frame.to_ndarray(format="rgb24")
        if i >= last:
            break
    if stats is not None:
        stats["decoded"] = k + 1
    return got


def decode_torchcodec(data: bytes, indices: Sequence[int], device: str = "cpu"):
    """torchcodec: its own keyframe seeking (``seek_mode='approximate'``: no scan of the whole file)."""
    from torchcodec.decoders import VideoDecoder

    idx = [int(i) for i in indices]
    try:
        dec = VideoDecoder(data, seek_mode="approximate", num_ffmpeg_threads=1, dimension_order="NHWC",
                           device=device)
        try:
            frames = dec.get_frames_at(indices=idx).data
        except IndexError:  # approximate mode may count a frame less than the file has
            last = len(dec) - 1
            frames = dec.get_frames_at(indices=[min(i, last) for i in idx]).data
    except (RuntimeError, ValueError, IndexError) as e:
        raise DecodeError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    return frames if frames.is_cuda else frames.numpy()


def decode_decord(data: bytes, indices: Sequence[int]) -> np.ndarray:
    """decord: VideoReader over the bytes, one thread (the DataLoader workers are the parallelism)."""
    from decord import DECORDError, VideoReader, cpu

    try:
        vr = VideoReader(io.BytesIO(data), ctx=cpu(0), num_threads=1)
        idx = np.minimum(np.asarray(indices, dtype=np.int64), len(vr) - 1)
        return vr.get_batch(idx).asnumpy()
    except (DECORDError, RuntimeError, ValueError) as e:
        raise DecodeError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


_INSTALL = {"torchcodec": "pip install torchcodec (and FFmpeg's shared libraries: apt-get install ffmpeg)",
            "decord": "pip install decord"}


def get_decoder(name: str, *, threads: int = 1, device: str = "cpu") -> Callable:
    """The decode function ``name``, bound to its options; a missing package is an InputError naming the
    install command."""
    if name not in DECODERS:
        raise InputError(f"data.eager_decoder={name!r}: choose one of {', '.join(DECODERS)}")
    if name == "pyav":
        return lambda data, idx: decode_pyav(data, idx, threads)
    try:
        if name == "torchcodec":
            import torchcodec.decoders  # noqa: F401
        else:
            import decord  # noqa: F401
    except Exception as e:  # ImportError, or torchcodec's RuntimeError when FFmpeg's libraries are missing
        raise InputError(f"data.eager_decoder={name} is not usable here ({str(e).splitlines()[0][:200]}); "
                         f"install it: {_INSTALL[name]}") from None
    if name == "torchcodec":
        return lambda data, idx: decode_torchcodec(data, idx, device)
    return decode_decord
