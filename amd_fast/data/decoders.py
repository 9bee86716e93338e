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
- ``spdl``: Meta's SPDL (``pip install spdl``; needs FFmpeg's shared libraries, 4 to 8): its sampled decode
  and filter graph to RGB.

Whether a peer can decode here is decided once per process, at loader build time, by importing it and
decoding a 2-frame probe clip (:func:`decoder_problem`): torchcodec imports fine on a machine without FFmpeg's
shared libraries and only fails at its first decoder, so an import check would let a run start and then
lose every sample.

The last three are what a user would pick instead of amd_fast's loaders, so ``bench/throughput.py`` runs
them beside ours on the same clip contract.

What the eager loader calls is the *clip* decoder (:func:`get_clip_decoder`): encoded bytes + a
:class:`~amd_fast.data.sampling.ClipPlan` -> the plan's ``num_sample`` crops, each resized to the input size,
written into a uint8 ``(num_sample, T, S, S, 3)`` buffer (a slice of the batch, in shared memory in a worker).

- PyAV (:func:`decode_pyav_clips`): each wanted frame, still YUV, goes once through one FFmpeg filter chain per
  crop (:class:`CropChains`, kept across videos and re-pointed by filter commands): ``crop`` (exact, in the YUV
  planes: no copy), ``scale`` to S x S (swscale bilinear, which widens its kernel when it shrinks: antialiased
  like torch's and DALI's resize), ``hflip`` when the plan flips, then a same-size ``scale`` to rgb24. Why two
  scales: measured on 320p VP9 (2-core EPYC), swscale's scaled YUV->RGB output path costs 2.5x its YUV->YUV
  scale plus its unscaled YUV->RGB converter; a chain costs ~0.065 ms per 224 px crop-frame, against ~0.28 ms
  for full-frame RGB + a torch resize per crop. The full frame is never converted to RGB, and pixels are
  touched in Python only by one contiguous copy of each finished crop into the batch buffer.
- The peers (torchcodec, decord) return full RGB frames by their own API; their crops are cut and resized by
  :func:`crop_resize` (torch, uint8) as before, which is also the reference the PyAV path is tested against
  (pixels may differ only by the resampling filter: mean absolute difference well under one grey level).
"""
from __future__ import annotations

import functools
import io
import math
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from amd_fast.errors import InputError

DECODERS = ("pyav", "torchcodec", "decord", "spdl")


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
    got = _decode_wanted(data, indices, threads, stats, lambda frame, i: frame.to_ndarray(format="rgb24"))
    return np.stack(_pad_edge(got, indices))


def _decode_wanted(data: bytes, indices: Sequence[int], threads: int, stats: Optional[dict],
                   keep: Callable, skip_unwanted: bool = False) -> Dict[int, object]:
    """Decoded frame number -> ``keep(frame, number)`` for every wanted frame reached (see :func:`decode_pyav`).
    ``skip_unwanted``: let the decoder drop unwanted non-reference frames (H.264/HEVC B-frames; no other
    frame depends on them, so the wanted ones decode to the same pixels): ~13% less decode on the nvdec
    preset's H.264, nothing on VP9, whose frames are all references."""
    import av

    want = sorted({int(i) for i in indices})
    try:
        with _open_input(data) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if threads != 1 else "SLICE"
            if threads:
                stream.thread_count = threads
            rate = stream.average_rate or stream.guessed_rate
            start_pts = stream.start_time or 0
            if rate and stream.time_base and want[0] > 0:
                target = start_pts + math.floor((Fraction(want[0]) + Fraction(1, 2)) / rate / stream.time_base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
                frames_per_tick = float(stream.time_base * rate)  # exact enough: CFR pts never sit on a .5 tie
                pts_index = lambda pts: round((pts - start_pts) * frames_per_tick)  # noqa: E731
                got = _decode_forward(container, stream, want, lambda k, f: None if f.pts is None else pts_index(f.pts),
                                      stats, keep, pts_index if skip_unwanted else None)
                if got is not None:
                    return got
                container.seek(start_pts, stream=stream, backward=True, any_frame=False)  # pts unusable
            got = _decode_forward(container, stream, want, lambda k, f: k, stats, keep)
    except (av.error.FFmpegError, IndexError, ValueError, OverflowError) as e:
        raise DecodeError(str(e)) from e
    return got or {}


# ``avformat_find_stream_info`` (run by every ``av.open``) opens a decoder and decodes the first keyframe only to
# learn the pixel format: 1.6 ms per 320p H.264 video, 2.2 ms per VP9 one (measured, 2-core EPYC), ~7% of a clip's
# CPU. The decoded frames tell us their format, so the container is opened with no decoder allowed to that probe
# (``codec_whitelist=none``): its headers alone (0.07-0.13 ms). The decoder the frames come from is opened later by
# PyAV, without this option. A container whose headers leave the video stream unknown is opened again the usual way.
_HEADERS_ONLY = {"codec_whitelist": "none"}


def _open_input(data: bytes):
    import av

    container = av.open(io.BytesIO(data), options=_HEADERS_ONLY)
    video = container.streams.video
    if video and video[0].codec_context is not None and video[0].codec_context.width > 0:
        return container
    container.close()
    return av.open(io.BytesIO(data))


def _decode_forward(container, stream, want, index_of: Callable, stats: Optional[dict], keep: Callable,
                    pts_index: Optional[Callable] = None) -> Optional[Dict[int, object]]:
    """Decode until the last wanted frame, keeping ``keep(frame, number)`` of each wanted one; None when frame numbers
    are unusable (no pts, or the first frame after a seek lies past the first wanted one). With ``pts_index``
    (packet pts -> frame number), unwanted non-reference frames are not decoded."""
    wanted, last, got = set(want), want[-1], {}
    k = -1
    for k, frame in enumerate(_frames(container, stream, wanted, pts_index)):
        i = index_of(k, frame)
        if i is None or (k == 0 and i > want[0]):
            return None
        if k == 0 and stats is not None:
            stats["first"] = i
        if i in wanted:
            got[i] = keep(frame, i)
        if i >= last:
            break
    if stats is not None:
        stats["decoded"] = k + 1
    return got


def _frames(container, stream, wanted, pts_index: Optional[Callable]):
    if pts_index is None:
        yield from container.decode(stream)
        return
    codec = stream.codec_context
    for packet in container.demux(stream):
        # per packet, before it is decoded: AVCodecContext.skip_frame may change between packets
        wanted_here = packet.pts is None or pts_index(packet.pts) in wanted
        codec.skip_frame = "DEFAULT" if wanted_here else "NONREF"
        yield from codec.decode(packet)


class CropChains:
    """FFmpeg filter chains that turn a YUV frame into a plan's crops: one chain per crop, ``buffer -> crop (exact, in
    the YUV planes: no copy) -> scale to size x size (swscale bilinear) -> hflip (on when the plan flips) -> scale
    (same size) -> rgb24``; see the module doc for why this shape. One thread: the loader's workers are the
    parallelism, and FFmpeg's filter threads cost more CPU than they save here.

    The chains are kept across videos: :meth:`plan` moves each chain's crop box and flip by filter commands
    (``crop`` takes w/h/x/y, every filter takes ``enable``), and swscale re-initialises itself only when a crop's
    size changes. Building a graph per video and its first frame (graph set-up, fresh frame pools, swscale
    set-up) cost ~1 ms of CPU per clip on 320p H.264, a fifth of the clip (measured, 2-core EPYC); the output is
    bit-identical to a fresh graph's (tested). Chains are kept per frame geometry (size, pixel format, colour
    space, range), for the last few geometries seen."""

    GEOMETRIES = 4

    def __init__(self, size: int):
        self.size = int(size)
        self._by_geometry: Dict[tuple, List[tuple]] = {}  # geometry -> [(graph, src, crop, flip, sink)], LRU order
        self._chains: List[tuple] = []
        self._boxes: Tuple = ()

    @staticmethod
    def _geometry(frame) -> tuple:
        return (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range)

    def _chain(self, frame) -> tuple:
        import av.filter

        g = av.filter.Graph()
        g.threads = 1
        args = (f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}:time_base=1/1000"
                ":pixel_aspect=1/1")
        if frame.colorspace not in (None, 2):  # 2: unspecified (swscale then assumes BT.601, as to_ndarray does)
            args += f":colorspace={int(frame.colorspace)}"
        if frame.color_range:
            args += f":range={int(frame.color_range)}"
        S = self.size
        src = g.add("buffer", args)
        crop = g.add("crop", f"{frame.width}:{frame.height}:0:0:exact=1")
        flip = g.add("hflip", "enable=0")
        nodes = [crop, g.add("scale", f"{S}:{S}:flags=bilinear"),
                 g.add("format", "yuv444p" if frame.format.name.startswith(("yuv444", "gbr")) else "yuv420p"),
                 flip, g.add("scale", ""), g.add("format", "rgb24")]  # same size: swscale's fast unscaled converter
        prev = src
        for node in nodes:
            prev.link_to(node)
            prev = node
        sink = g.add("buffersink")
        prev.link_to(sink)
        g.configure()
        return g, src, crop, flip, sink

    def plan(self, frame, boxes: Sequence[Tuple[int, int, int, int]], flips: Sequence[bool]) -> None:
        """Point the chains at ``boxes`` (y0, x0, h, w) and ``flips`` for the frames of one video like ``frame``."""
        key = self._geometry(frame)
        chains = self._by_geometry.pop(key, [])
        self._by_geometry[key] = chains  # most recently used last
        while len(self._by_geometry) > self.GEOMETRIES:
            del self._by_geometry[next(iter(self._by_geometry))]
        while len(chains) < len(boxes):
            chains.append(self._chain(frame))
        for (_, _, crop, flip, _), (y0, x0, h, w), mirror in zip(chains, boxes, flips):
            for name, value in (("w", w), ("h", h), ("x", x0), ("y", y0)):
                crop.process_command(name, str(value))
            flip.process_command("enable", "1" if mirror else "0")
        self._chains = chains[:len(boxes)]

    def __call__(self, frame) -> List[np.ndarray]:
        """The crops of ``frame``: ``len(boxes)`` arrays (size, size, 3) uint8."""
        out = []
        for _, src, _, _, sink in self._chains:
            src.push(frame)
            out.append(sink.pull().to_ndarray())
        return out

    def reset(self) -> None:
        """Drop every chain (after a failure a chain may hold a frame it was never asked for)."""
        self._by_geometry.clear()
        self._chains = []


def decode_pyav_clips(data: bytes, plan, size: int, out: np.ndarray, threads: int = 1,
                      expect_hw: Optional[Tuple[int, int]] = None, stats: Optional[dict] = None,
                      chains: Optional[CropChains] = None) -> None:
    """Write ``plan``'s crops of ``data`` into ``out`` ((num_sample, T, size, size, 3) uint8): decode from the
    keyframe before the clip (as :func:`decode_pyav`), each wanted frame cropped, scaled and converted once, in
    YUV, by ``chains`` (a :class:`CropChains` kept by the caller across videos; a fresh one when None).
    ``expect_hw``: the frame size the shard records (a mismatch is a DecodeError: the plan's boxes would be
    wrong)."""
    chains = chains if chains is not None and chains.size == size else CropChains(size)
    indices = [int(i) for i in plan.indices]
    first = True

    def keep(frame, i: int) -> bool:
        # each finished crop goes into every clip position showing frame i at once (the one copy), so a chain
        # reuses its few output buffers instead of holding a clip's worth
        nonlocal first
        if expect_hw is not None and (frame.height, frame.width) != tuple(expect_hw):
            raise DecodeError(f"frames are {frame.width}x{frame.height}, the shard records "
                              f"{expect_hw[1]}x{expect_hw[0]}")
        if first:
            chains.plan(frame, plan.boxes, plan.flips)
            first = False
        crops = chains(frame)
        for k, want in enumerate(indices):
            if want == i:
                for j, crop in enumerate(crops):
                    out[j, k] = crop
        return True

    try:
        got = _decode_wanted(data, indices, threads, stats, keep, skip_unwanted=True)
    except BaseException:
        chains.reset()
        raise
    # positions past the last decodable frame take the frame _pad_edge picks (DALI's pad_mode='edge')
    for k, source in enumerate(_pad_edge({i: i for i in got}, indices)):
        if source != indices[k]:
            out[:, k] = out[:, indices.index(source)]


def crop_resize(frames, box, size: int, flip: bool):
    """(T, H, W, 3) uint8 tensor -> (T, size, size, 3) uint8: crop ``box``, antialiased bilinear resize, flip.

    The peers' crop path, and the reference the PyAV graph is tested against. Resized in uint8 with the
    frames channels-last (a permuted view of the decoder's HWC output): torch's vectorised uint8 path, 10-15x
    faster on a CPU core than converting to float first (same result up to rounding: at most 1 grey level)."""
    import torch.nn.functional as F

    y0, x0, ch, cw = box
    x = frames[:, y0:y0 + ch, x0:x0 + cw].permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if flip:
        x = x.flip(-1)
    return x.permute(0, 2, 3, 1)


def frames_to_clips(decode: Callable, data: bytes, plan, size: int, out, expect_hw: Optional[Tuple[int, int]] = None
                    ) -> None:
    """The clip path of a frame decoder (the peers; PyAV's full-frame reference): full RGB frames by
    ``decode(data, indices)``, then :func:`crop_resize` per crop, written into ``out`` (a uint8 tensor,
    (num_sample, T, size, size, 3), on the frames' device)."""
    import torch

    frames = torch.as_tensor(decode(data, plan.indices))
    if expect_hw is not None and tuple(frames.shape[1:3]) != tuple(expect_hw):
        raise DecodeError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the shard records "
                          f"{expect_hw[1]}x{expect_hw[0]}")
    for j, (box, flip) in enumerate(zip(plan.boxes, plan.flips)):
        out[j].copy_(crop_resize(frames, box, size, flip))


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


def decode_spdl(data: bytes, indices: Sequence[int]) -> np.ndarray:
    """SPDL (Meta's ``spdl.io``): demux, then ``sample_decode_video`` of the distinct wanted frames (its own
    seeking) through its filter graph to rgb24 (``get_video_filter_desc``), then ``convert_frames`` into one
    buffer, as its documentation shows for sampled clips. Needs FFmpeg's shared libraries."""
    import spdl.io

    try:
        packets = spdl.io.demux_video(data)
        n = len(packets)
        want = sorted({min(int(i), n - 1) for i in indices})
        frames = spdl.io.sample_decode_video(packets, want, filter_desc=spdl.io.get_video_filter_desc(pix_fmt="rgb24"))
        arr = spdl.io.to_numpy(spdl.io.convert_frames(frames))
    except (RuntimeError, ValueError, IndexError) as e:
        raise DecodeError(_first_line(e)) from e
    got = dict(zip(want, arr))
    return np.stack(_pad_edge(got, [min(int(i), n - 1) for i in indices]))


_INSTALL = {"torchcodec": "pip install torchcodec", "decord": "pip install decord", "spdl": "pip install spdl"}
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
    elif name == "spdl":
        import spdl.io

        spdl.io.demux_video  # noqa: B018 - resolves the lazy native module: fails without FFmpeg's libraries
    else:
        import decord  # noqa: F401


_PEER_DECODE = {"torchcodec": lambda data, idx: decode_torchcodec(data, idx, "cpu"),
                "decord": lambda data, idx: decode_decord(data, idx),
                "spdl": lambda data, idx: decode_spdl(data, idx)}


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
    _check_usable(name)
    if name == "pyav":
        return lambda data, idx: decode_pyav(data, idx, threads)
    if name == "torchcodec":
        return lambda data, idx: decode_torchcodec(data, idx, device)
    if name == "spdl":
        return decode_spdl
    return decode_decord


def _check_usable(name: str) -> None:
    problem = decoder_problem(name)
    if problem is not None:
        if name not in DECODERS:
            raise InputError(problem[1])
        raise DecoderUnavailable(problem[1], problem[0])


def get_clip_decoder(name: str, *, threads: int = 1, device: str = "cpu") -> Callable:
    """``fn(data, plan, size, out, expect_hw)`` writing a plan's crops into ``out`` (a uint8 tensor
    (num_sample, T, size, size, 3)): PyAV's one-pass graph (:func:`decode_pyav_clips`), or a peer's frames
    through :func:`frames_to_clips`. Same availability check as :func:`get_decoder`."""
    if name == "pyav":
        _check_usable(name)
        chains = CropChains(0)  # kept across this decoder's videos (resized on first use)

        def pyav_clips(data, plan, size, out, expect_hw=None):
            nonlocal chains
            if chains.size != size:
                chains = CropChains(size)
            decode_pyav_clips(data, plan, size, out.numpy(), threads, expect_hw, chains=chains)
        return pyav_clips
    decode = get_decoder(name, threads=threads, device=device)
    return lambda data, plan, size, out, expect_hw=None: frames_to_clips(decode, data, plan, size, out, expect_hw)
