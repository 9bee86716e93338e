"""Video decoders for the eager loader: encoded bytes + frame indices -> RGB frames.

Every decoder has the same contract: ``decode(data, indices) -> (len(indices), H, W, 3)`` uint8 (a numpy
array, or a torch tensor on the GPU for torchcodec's CUDA decode), frames in the order asked for; an index
past the last decodable frame repeats the last one (DALI's ``pad_mode='edge'``). Any failure is a
:class:`DecodeError`.

- ``pyav`` (default): FFmpeg through PyAV. Seeks to the keyframe at or before the clip's first frame and
  decodes forward, as DALI and decord do (decoding from frame 0 costs the whole video before the clip).
- ``torchcodec``: PyTorch's decoder (``pip install torchcodec``; needs FFmpeg's shared libraries, e.g.
  ``apt-get install ffmpeg``). On the CPU in DataLoader workers, or on the data device's GPU (NVDEC) when
  the loader runs in the main process (``data.num_workers=0``) on CUDA.
- ``decord``: the decoder VideoMAE / AMD's own loaders use (``pip install decord``; its wheel brings its own
  FFmpeg).

Whether a peer can decode here is decided once per process, at loader build time, by importing it and
decoding a 2-frame probe clip (:func:`decoder_problem`): torchcodec imports fine on a machine without FFmpeg's
shared libraries and only fails at its first decoder, so an import check would let a run start and then
lose every sample.

The last two are what a user would pick instead of amd_fast's loaders, so ``bench/throughput.py`` runs
them beside ours on the same clip contract.
"""
from __future__ import annotations

import functools
import io
import math
from fractions import Fraction
from typing import Callable, Dict, Optional, Sequence, Tuple

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


_INSTALL = {"torchcodec": "pip install torchcodec", "decord": "pip install decord"}
FFMPEG_MISSING = "FFmpeg shared libraries missing"
FFMPEG_FIX = "install them (apt-get install ffmpeg) or set data.eager_decoder=pyav"


class DecoderUnavailable(InputError):
    """A peer decoder cannot decode on this machine. ``reason`` is the short form the bench puts in its
    rows (``FFMPEG_MISSING``, ``not installed``, ...); the message names the fix."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def probe_video() -> bytes:
    """Two 64x64 frames of MPEG-4 Part 2 in mp4, encoded by PyAV's own FFmpeg (its built-in encoder, present
    in every FFmpeg build; 64 px: decord mis-sizes 16 px frames). What :func:`decoder_problem` decodes."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for _ in range(2):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


def _ffmpeg_libraries_found() -> bool:
    """Whether the dynamic loader finds FFmpeg's libavutil (what torchcodec links against; PyAV and decord
    bring their own copies)."""
    import ctypes.util

    return ctypes.util.find_library("avutil") is not None


def _import_peer(name: str) -> None:
    if name == "torchcodec":
        import torchcodec.decoders  # noqa: F401
    else:
        import decord  # noqa: F401


_PEER_DECODE = {"torchcodec": lambda data, idx: decode_torchcodec(data, idx, "cpu"),
                "decord": lambda data, idx: decode_decord(data, idx)}


@functools.lru_cache(maxsize=None)
def decoder_problem(name: str) -> Optional[Tuple[str, str]]:
    """None when decoder ``name`` decodes on this machine, else ``(reason, message)``: the short reason
    (for the bench's "not measured (...)") and a one-line message naming the fix.

    Importing a peer proves little (torchcodec imports without FFmpeg and fails at its first decoder), so
    this imports it *and* decodes :func:`probe_video` once; the answer is cached for the process (paid at
    loader build time, never per sample; about a second for torchcodec's failed library search)."""
    if name not in DECODERS:
        return "unknown decoder", f"data.eager_decoder={name!r}: choose one of {', '.join(DECODERS)}"
    if name == "pyav":
        return None
    try:
        _import_peer(name)
        got = _PEER_DECODE[name](probe_video(), [0, 1])
        if tuple(np.asarray(got).shape) != (2, 64, 64, 3):
            raise DecodeError(f"decoded {tuple(np.asarray(got).shape)} from a 2-frame 64x64 probe clip")
    except ImportError as e:
        return "not installed", (f"data.eager_decoder={name} is not installed ({_first_line(e)}); install it "
                                 f"({_INSTALL[name]}) or set data.eager_decoder=pyav")
    except Exception as e:  # torchcodec's RuntimeError / decord's OSError when shared libraries are missing
        if not _ffmpeg_libraries_found():
            return FFMPEG_MISSING, (f"data.eager_decoder={name} cannot run here: {FFMPEG_MISSING} "
                                    f"(libavutil, libavcodec, ... are not on this machine); {FFMPEG_FIX}")
        return "cannot decode here", (f"data.eager_decoder={name} cannot decode on this machine "
                                      f"({_first_line(e)}); reinstall it ({_INSTALL[name]}, matching your torch "
                                      f"version) or set data.eager_decoder=pyav")
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def get_decoder(name: str, *, threads: int = 1, device: str = "cpu") -> Callable:
    """The decode function ``name``, bound to its options. A decoder that cannot decode here (package
    missing, FFmpeg's shared libraries missing) is a :class:`DecoderUnavailable` (an InputError) naming the
    fix, decided once per process by :func:`decoder_problem`."""
    problem = decoder_problem(name)
    if problem is not None:
        if name not in DECODERS:
            raise InputError(problem[1])
        raise DecoderUnavailable(problem[1], problem[0])
    if name == "pyav":
        return lambda data, idx: decode_pyav(data, idx, threads)
    if name == "torchcodec":
        return lambda data, idx: decode_torchcodec(data, idx, device)
    return decode_decord
