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

from .format import CONTAINER_OF_SUFFIX


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


class _CheckedDemux:
    """The video packets of ``data``, checked the same way for every mode (copy, verify, re-encode):
    a packet that runs past the end of the file is a truncation; after the last packet, fewer packets
    than the headers promise (beyond a 2% tolerance for rounded durations) is one too. Demuxers stop
    silently at a cut, so these two checks are how a cut-off file is caught."""

    def __init__(self, container, stream, data: bytes):
        self.container, self.stream, self.size = container, stream, len(data)
        self.packets = 0

    def __iter__(self):
        for packet in self.container.demux(self.stream):
            if packet.size == 0:  # flush packet
                continue
            self.packets += 1
            if packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size > self.size:
                raise VideoError(f"truncated: frame {self.packets} runs past the end of the file")
            yield packet

    def check_complete(self) -> None:
        if self.packets == 0:
            raise VideoError("no video frames")
        expected = _expected_frames(self.container, self.stream)
        if expected and self.packets < expected - max(1, expected // 50):
            raise VideoError(f"truncated: {self.packets} frames, the header says {expected}")


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
        packets = _CheckedDemux(c, stream, data)
        decoded = 0
        try:
            for packet in packets:
                if decode_all or decoded == 0:
                    decoded += len(packet.decode())
            if decode_all or decoded == 0:
                decoded += len(stream.decode(None))
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"undecodable: {_why(e)}") from None
        packets.check_complete()
        if decoded == 0:
            raise VideoError("undecodable: no frame decoded")
        cc = stream.codec_context
        return EncodedVideo(data=data, container="", codec=cc.name, frames=decoded if decode_all else packets.packets,
                            fps=_fps(stream), width=cc.width, height=cc.height)


def copy_video(path: Path) -> EncodedVideo:
    """Keep the source bytes (``--codec copy``) after checking they demux and decode."""
    container = CONTAINER_OF_SUFFIX.get(path.suffix.lower())
    if container is None:
        raise VideoError(f"container {path.suffix!r} not kept by --codec copy ({', '.join(CONTAINER_OF_SUFFIX)}); "
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
    """Decode every frame of ``path`` and re-encode it (``--codec vp9|h264|mjpeg``), with the same
    truncation checks as ``--codec copy`` (a cut-off source fails instead of giving a shorter video)."""
    data = _read(path)
    with _open(data) as c:
        if not c.streams.video:
            raise VideoError("no video stream")
        stream = c.streams.video[0]
        stream.thread_type = "SLICE"
        w, h = resized(stream.codec_context.width, stream.codec_context.height, short_side)
        if w <= 0 or h <= 0:
            raise VideoError("no frame size in the stream header")
        packets = _CheckedDemux(c, stream, data)

        def frames():
            for packet in packets:
                yield from packet.decode()
            yield from stream.decode(None)  # frames the decoder still holds

        try:
            video = encode_frames(frames(), w, h, _fps(stream), codec, gop)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"decoding or re-encoding failed: {_why(e)}") from None
        packets.check_complete()
        if video.frames < packets.packets - max(1, packets.packets // 50):  # the same tolerance as above
            raise VideoError(f"undecodable: {packets.packets - video.frames} of {packets.packets} frames did not "
                             "decode")
        return video
