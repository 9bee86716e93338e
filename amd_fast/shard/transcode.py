"""Video bytes in, validated (and optionally re-encoded) video bytes out, with PyAV.

``copy`` keeps the source bytes and only demuxes them (counting frames exactly, one
video packet = one frame) and decodes the first frame, which catches zero-length,
garbage, truncated-header and undecodable files cheaply. Re-encoding decodes every
frame, so it catches everything the decoder notices.

Encoder settings favour speed (sharding is I/O + encode bound): VP9 uses libvpx's
realtime mode (``deadline=realtime``, ``cpu-used=8``, ``row-mt=1``, no lag), H.264 x264
``veryfast``/CRF 23, MJPEG q 3. Each worker encodes single-threaded; parallelism
comes from the worker processes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import av
import numpy as np

# extension -> container name written into the tar (``<key>.<container>``)
COPY_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".webm": "webm", ".mkv": "mkv", ".avi": "avi"}

# codec -> (PyAV encoder, container, muxer, pix_fmt, encoder options)
ENCODERS = {
    "vp9": ("libvpx-vp9", "webm", "webm", "yuv420p",
            {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0", "crf": "30", "b": "0"}),
    "h264": ("libx264", "mp4", "mp4", "yuv420p", {"preset": "veryfast", "crf": "23"}),
    "mjpeg": ("mjpeg", "avi", "avi", "yuvj420p", {"q:v": "3"}),
}


class VideoError(Exception):
    """An input video that cannot be used; the message is the failures-log reason."""


@dataclass
class EncodedVideo:
    data: bytes
    container: str  # mp4 | webm | mkv | avi
    codec: str  # codec name as FFmpeg reports it (h264, vp9, mjpeg, ...)
    frames: int
    fps: float
    width: int
    height: int


def _why(e: Exception) -> str:
    """FFmpeg's message without PyAV's '<none>' file-name suffix."""
    return getattr(e, "strerror", None) or str(e)


def _open(data: bytes):
    try:
        return av.open(io.BytesIO(data), "r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise VideoError(f"cannot open as a video: {_why(e)}") from None


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VideoError("missing file") from None
    except OSError as e:
        raise VideoError(f"unreadable: {e}") from None
    if not data:
        raise VideoError("zero-length file")
    return data


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _expected_frames(container, stream) -> int:
    """Frame count the headers promise (0 if they do not say); demuxers stop silently at a
    truncation, so comparing against this is how a cut-off webm/avi is caught."""
    if stream.frames:
        return int(stream.frames)
    fps = _fps(stream)
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base) * fps)
    if container.duration:
        return round(container.duration / 1e6 * fps)
    return 0


def probe_bytes(data: bytes, decode_all: bool = False) -> EncodedVideo:
    """Demux ``data``, count video frames, decode the first (or every) frame.

    Raises :class:`VideoError` for anything unusable. ``decode_all`` is what ``--verify`` uses;
    the frame count is then the number of decoded frames.
    """
    with _open(data) as c:
        if not c.streams.video:
            raise VideoError("no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO" if decode_all else "SLICE"
        packets = decoded = 0
        try:
            for packet in c.demux(stream):
                if packet.size == 0:  # flush packet
                    continue
                packets += 1
                if packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size > len(data):
                    raise VideoError(f"truncated: frame {packets} runs past the end of the file")
                if decode_all or decoded == 0:
                    decoded += len(packet.decode())
            if decode_all or decoded == 0:
                decoded += len(stream.decode(None))
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"undecodable: {_why(e)}") from None
        if packets == 0:
            raise VideoError("no video frames")
        if decoded == 0:
            raise VideoError("undecodable: no frame decoded")
        expected = _expected_frames(c, stream)
        if expected and packets < expected - max(1, expected // 50):
            raise VideoError(f"truncated: {packets} frames, the header says {expected}")
        cc = stream.codec_context
        return EncodedVideo(data=data, container="", codec=cc.name, frames=decoded if decode_all else packets,
                            fps=_fps(stream), width=cc.width, height=cc.height)


def copy_video(path: Path) -> EncodedVideo:
    """Keep the source bytes (``--codec copy``) after checking they demux and decode."""
    container = COPY_CONTAINERS.get(path.suffix.lower())
    if container is None:
        raise VideoError(f"container {path.suffix!r} not kept by --codec copy ({', '.join(COPY_CONTAINERS)}); "
                         "re-encode with --codec vp9|h264|mjpeg")
    v = probe_bytes(_read(path))
    v.container = container
    return v


def resized(width: int, height: int, short_side: Optional[int]) -> tuple:
    """Output size: short side = ``short_side`` (aspect kept), both even (yuv420p)."""
    if short_side is None:
        return width - width % 2, height - height % 2
    scale = short_side / min(width, height)
    w, h = round(width * scale), round(height * scale)
    return max(2, w - w % 2), max(2, h - h % 2)


def encode_frames(frames: Iterable, width: int, height: int, fps: float, codec: str, gop: Optional[int]) -> EncodedVideo:
    """Encode RGB ndarrays or ``av.VideoFrame`` s (resized to width x height) into ``codec``."""
    encoder, container, muxer, pix_fmt, options = ENCODERS[codec]
    buf = io.BytesIO()
    n = 0
    rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
    options = dict(options)
    if gop is not None and codec == "h264":
        options.update({"keyint_min": str(gop), "sc_threshold": "0"})  # fixed GOP, no scene-cut keyframes
    # bitexact: no random segment UIDs / version strings, so a rebuild (resume) is byte-identical.
    with av.open(buf, "w", format=muxer, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.thread_count = 1
        if gop is not None:
            stream.gop_size = gop
        for f in frames:
            if isinstance(f, np.ndarray):
                f = av.VideoFrame.from_ndarray(f, format="rgb24")
            if (f.width, f.height) != (width, height) or f.format.name != pix_fmt:
                f = f.reformat(width=width, height=height, format=pix_fmt,
                               interpolation="AREA" if f.width > width else "BILINEAR")
            f.pts, f.time_base = n, 1 / rate  # constant frame rate output, numbered from 0
            for p in stream.encode(f):
                out.mux(p)
            n += 1
        for p in stream.encode(None):
            out.mux(p)
    if n == 0:
        raise VideoError("no frame decoded")
    return EncodedVideo(data=buf.getvalue(), container=container, codec=codec, frames=n, fps=float(rate), width=width, height=height)


def transcode_video(path: Path, codec: str, short_side: Optional[int], gop: Optional[int]) -> EncodedVideo:
    """Decode every frame of ``path`` and re-encode it (``--codec vp9|h264|mjpeg``)."""
    data = _read(path)
    with _open(data) as c:
        if not c.streams.video:
            raise VideoError("no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "SLICE"
        w, h = resized(stream.codec_context.width, stream.codec_context.height, short_side)
        if w <= 0 or h <= 0:
            raise VideoError("no frame size in the stream header")
        try:
            return encode_frames(c.decode(stream), w, h, _fps(stream), codec, gop)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"decoding or re-encoding failed: {_why(e)}") from None
