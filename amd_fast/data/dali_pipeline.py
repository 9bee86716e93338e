"""DALI loader: fn.readers.webdataset -> clip sampling -> video decode -> multi-scale crop -> normalize.

Everything per-sample happens inside the DALI graph (no Python per sample): the clip's frame
indices are computed with DALI arithmetic from the ``.clipinfo`` int32 record (frames, width,
height, label); decoding is ``fn.decoders.video(start_frame, stride, sequence_length)`` on the
CPU or, with CUDA, 'mixed' (NVDEC) so the clips stay on the GPU; the batch is copied
device-to-device into a torch tensor with DALI's PyTorch plugin (``feed_ndarray`` on torch's
current stream, as DALIGenericIterator does). The math follows sampling.py exactly.

Epochs: a fresh pipeline per epoch, seeded from (seed, epoch, rank), reading one contiguous part
of the samples (``shard_id=(rank+epoch) % world, num_shards=world``: parts rotate per epoch as
DALI's own reader does) shuffled in a buffer of ``shuffle_buffer`` samples (DALI shuffles locally:
the tar order inside a part stays the stored order). Resume: the epoch's pipeline is rebuilt from
the same seeds and the consumed batches are run again and dropped (deterministic; costs their
decode time once).

Undecodable video: DALI fails the whole batch (one decoder error per batch); that batch is dropped,
the video counted (named from DALI's error) and the next batch taken in its place, so the epoch
still has len() batches on every rank (DDP stays in step; at the epoch's end the reader wraps into
the next part, so a few samples may repeat).
"""
from __future__ import annotations

import logging
import re
import zlib
from typing import Iterator, List

import numpy as np
import torch

from .config import DataConfig
from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD

from .sampling import FIX_OFFSETS, SNAP_PX, scale_pairs
from amd_fast.shard.format import INFO_EXT, INFO_FRAMES, INFO_HEIGHT, INFO_LABEL, INFO_WIDTH, VIDEO_EXTS

from .shards import ShardSet, epoch_part, rank_batches
from .stream import BadSampleCounter, BadSampleError, BrokenShardsError, LoaderStateMixin, StreamState

log = logging.getLogger(__name__)

READER_NAME = "shards"
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (seed, epoch, rank, ...), stable across runs and Python versions."""
    return zlib.crc32(np.asarray(parts, dtype=np.int64).tobytes()) & 0x7FFFFFFF


def clip_graph(cfg: DataConfig, tars: List[str], indexes: List[str], part: int, world_size: int,
               reader_seed: int, decode_device: str):
    """Build the DALI graph (call inside a ``pipeline_def``). Returns (video, label) where video is
    (num_sample, 3, T, S, S) per sample, float32/float16, normalized."""
    from nvidia.dali import fn, types
    import nvidia.dali.math as dmath

    T, step, S = cfg.num_frames, cfg.sampling_rate, cfg.input_size
    shuffle = cfg.shuffle and cfg.train
    video, info = fn.readers.webdataset(
        paths=tars, index_paths=indexes, ext=[";".join(VIDEO_EXTS), INFO_EXT],
        dtypes=[types.UINT8, types.INT32], missing_component_behavior="skip",
        shard_id=part, num_shards=world_size, random_shuffle=shuffle,
        initial_fill=cfg.shuffle_buffer, seed=reader_seed, name=READER_NAME)
    label, n, width, height = info[INFO_LABEL], info[INFO_FRAMES], info[INFO_WIDTH], info[INFO_HEIGHT]

    # Clip start and indices (sampling.clip_start / clip_indices).
    room = dmath.max(n - T * step + 1, 1)
    if cfg.train:
        u = fn.random.uniform(range=[0.0, 1.0])
        start = dmath.min(fn.cast(dmath.floor(u * fn.cast(room, dtype=types.FLOAT)), dtype=types.INT32), room - 1)
    else:
        start = dmath.max(n - T * step + 1, 0) // 2
    kmax = dmath.max(n - 1 - start, 0) // step
    # Decode only the distinct frames start, start+step, ... (<= T of them), then repeat the last one
    # in-graph. Why not frames=[..., last, last]: DALI seeks again for every repeated index (5-8x
    # slower on a short video), and pad_mode='edge' repeats the video's last frame, not the last
    # frame on the stride grid as the reference does.
    distinct = dmath.min(kmax + 1, T)
    frames = fn.decoders.video(video, start_frame=start, stride=step, sequence_length=distinct,
                               pad_mode="edge",  # only if `frames` over-counts the video: never black
                               device=decode_device)
    frames = fn.sequence_rearrange(frames, new_order=dmath.min(types.Constant(np.arange(T, dtype=np.int32)), kmax))

    short = dmath.min(width, height)
    short_f = fn.cast(short, dtype=types.FLOAT)
    pairs = scale_pairs(len(cfg.scales), cfg.max_distort)
    crops = []
    for _ in range(cfg.num_sample):  # repeated augmentation: same decoded frames, own crop each
        if cfg.train:
            code = fn.cast(fn.random.uniform(values=[float(i * len(cfg.scales) + j) for i, j in pairs]),
                           dtype=types.INT32)
            si, sj = code // len(cfg.scales), code % len(cfg.scales)
            ch = _snap(_scaled(short_f, si, cfg.scales), S)
            cw = _snap(_scaled(short_f, sj, cfg.scales), S)
            off = fn.cast(fn.random.uniform(values=[float(a * 5 + b) for a, b in FIX_OFFSETS]), dtype=types.INT32)
            y0 = (off % 5) * ((height - ch) // 4)
            x0 = (off // 5) * ((width - cw) // 4)
            mirror = fn.random.coin_flip(probability=0.5) if cfg.flip else 0
        else:
            ch = cw = short
            y0, x0 = (height - short) // 2, (width - short) // 2
            mirror = 0
        y0f, x0f = fn.cast(y0, dtype=types.FLOAT), fn.cast(x0, dtype=types.FLOAT)
        roi_start = fn.stack(y0f, x0f)
        roi_end = fn.stack(y0f + fn.cast(ch, dtype=types.FLOAT), x0f + fn.cast(cw, dtype=types.FLOAT))
        resized = fn.resize(frames, size=[S, S], roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                            interp_type=types.INTERP_LINEAR, antialias=True)
        crops.append(fn.crop_mirror_normalize(
            resized, dtype=types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT, output_layout="CFHW",
            mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD], mirror=mirror))
    return fn.stack(*crops), label


def _scaled(short_f, scale_index, scales):
    """int(short_side * scales[scale_index]) with a per-sample index (select by comparison)."""
    from nvidia.dali import fn, types

    factor = sum((scale_index == k) * float(s) for k, s in enumerate(scales))
    return fn.cast(short_f * factor, dtype=types.INT32)  # truncation, as int() in the reference


def _snap(size, input_size):
    import nvidia.dali.math as dmath

    return size + (dmath.abs(size - input_size) < SNAP_PX) * (input_size - size)


_DALI_FILE_RE = re.compile(r'for "([^"]+)"')


class DaliLoader(LoaderStateMixin):
    """Iterable of ``{'video', 'label'}`` batches from a DALI pipeline (see module doc)."""

    backend = "dali"

    def __init__(self, cfg: DataConfig, shards: ShardSet, rank: int, world_size: int, device: str,
                 bad: BadSampleCounter):
        self.cfg, self.shards, self.rank, self.world_size = cfg, shards, rank, world_size
        self.device = torch.device(device)
        self.bad = bad
        self.state = StreamState(seed=cfg.seed)
        self.num_rank_samples, self._len = rank_batches(shards.num_samples, world_size, cfg.batch_size,
                                                        cfg.drop_last)
        self._out_dtype = _TORCH_DTYPES[cfg.dtype]

    def _build(self, epoch: int):
        from nvidia.dali import pipeline_def

        on_gpu = self.device.type == "cuda"
        seed = derive_seed(self.state.seed, epoch, self.rank)

        @pipeline_def(batch_size=self.cfg.batch_size, num_threads=self.cfg.dali_threads,
                      device_id=(self.device.index or 0) if on_gpu else None, seed=seed,
                      prefetch_queue_depth=self.cfg.prefetch)
        def pipe():
            return clip_graph(self.cfg, self.shards.tars, self.shards.indexes,
                              epoch_part(self.rank, epoch, self.world_size), self.world_size,
                              reader_seed=derive_seed(self.state.seed, epoch, self.rank, 1),
                              decode_device="mixed" if on_gpu else "cpu")

        p = pipe()
        p.build()
        return p

    def _run(self, pipe, count: bool = True):
        """One batch of DALI outputs, or None when a video in it failed to decode (counted)."""
        try:
            return pipe.run()
        except RuntimeError as e:
            msg = str(e)
            m = _DALI_FILE_RE.search(msg)
            where = m.group(1) if m else msg.strip().splitlines()[-1][:300]
            if self.cfg.on_bad_sample == "error":
                raise BadSampleError(f"undecodable video {where} (set data.on_bad_sample=skip to drop its batch "
                                   f"and go on)") from e
            if count:
                self.bad.add("batch with an undecodable video (DALI drops the batch; counted per batch)", where, n=1)
            return None

    def _good_batches(self, pipe, count: bool = True):
        """Successful pipeline runs. A failed batch is replaced by the next one (the reader wraps into
        the next part at the epoch's end), so every rank still yields len() batches per epoch."""
        failures = 0
        while True:
            out = self._run(pipe, count)
            if out is not None:
                failures = 0
                yield out
                continue
            failures += 1
            if failures > 8:
                raise BrokenShardsError(f"{failures} DALI batches in a row failed to decode; the shards look broken: "
                                        "check them with `python -m amd_fast.shard --verify --out <shard folder>`")

    def _to_torch(self, outputs):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        video_tl, label_tl = outputs
        video_t = video_tl.as_tensor()
        shape = list(video_t.shape())  # (B, num_sample, 3, T, S, S)
        dali_dtype = torch.float16 if self.cfg.dtype == "float16" else torch.float32
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        video = torch.empty(shape, dtype=dali_dtype, device=self.device)
        feed_ndarray(video_t, video, cuda_stream=stream)  # device-to-device on GPU, no host round trip
        labels = torch.from_numpy(np.asarray(label_tl.as_tensor()).astype(np.int64).reshape(-1))
        video = video.flatten(0, 1)
        if video.dtype != self._out_dtype:
            video = video.to(self._out_dtype)
        labels = labels.to(self.device, non_blocking=True).repeat_interleave(self.cfg.num_sample)
        return video, labels

    def __iter__(self) -> Iterator[dict]:
        st = self.state
        epoch = st.epoch
        pipe = self._build(epoch)
        try:
            replay = self._good_batches(pipe, count=False)
            for _ in range(st.batch):  # resume: rerun and drop this epoch's consumed batches
                next(replay)
            batches = self._good_batches(pipe)
            while st.batch < self._len:
                video, label = self._to_torch(next(batches))
                st.batch += 1
                if st.batch == self._len and not self.cfg.drop_last:
                    keep = (self.num_rank_samples - (self._len - 1) * self.cfg.batch_size) * self.cfg.num_sample
                    video, label = video[:keep], label[:keep]  # DALI wraps around to fill the last batch
                yield {"video": video, "label": label}
        finally:
            del pipe
        st.epoch, st.batch = epoch + 1, 0
