"""Eager loader: PyAV decoding + torch transforms in ``torch.utils.data.DataLoader`` workers.

The bench's baseline and the fallback for codecs DALI cannot decode here (H.264 on CPU). Same
contract and outputs as the DALI loader (sampling.py): same rank split (the contiguous part of
the samples DALI's ``shard_id/num_shards`` gives), same clip indices, crop and resize
(bilinear, antialiased, rounded to uint8 like DALI's resize), same normalization (on the
device, after the uint8 clip crossed the process boundary: 4x less IPC than float).

Samples are read by random access at the byte offsets of the DALI ``.idx`` files rather than by
streaming the tars with ``webdataset``: it gives the identical per-rank split as DALI, a full
per-epoch permutation of the rank's samples from ``(seed, epoch, rank)``, and an exact resume
that skips consumed batches without decoding them. Worker split: the DataLoader hands whole
batches to workers. Every random draw of a sample comes from ``(seed, epoch, rank, position)``,
so batches do not depend on the number of workers. A video that fails to decode is replaced by
the next sample in stored order and counted (see ClipDataset), so batch shapes stay static.
"""
from __future__ import annotations

import io
import logging
import struct
from typing import Iterator, List

import numpy as np
import torch
import torch.nn.functional as F

from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD
from amd_fast.shard.format import ClipInfo

from .config import DataConfig
from .sampling import FIX_OFFSETS, center_crop_box, clip_indices, clip_start, multiscale_crop_box, scale_pairs
from .shards import Sample, ShardError, ShardSet, epoch_part, rank_batches, rank_range, read_member
from .stream import BadSampleCounter, BadSampleError, BrokenShardsError, LoaderStateMixin, StreamState

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DecodeError(RuntimeError):
    pass


def decode_frames(data: bytes, indices: np.ndarray) -> np.ndarray:
    """RGB frames (len(indices), H, W, 3) uint8 at ``indices`` (decode order = frame order).
    An index past the last decodable frame repeats the last one (DALI pad_mode='edge')."""
    import av

    want = set(int(i) for i in indices)
    last = max(want)
    got = {}
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for k, frame in enumerate(container.decode(stream)):
                if k in want:
                    got[k] = frame.to_ndarray(format="rgb24")
                if k >= last:
                    break
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise DecodeError(str(e)) from e
    if not got:
        raise DecodeError("no frame decoded")
    top = max(got)  # every wanted index <= top was decoded
    return np.stack([got.get(int(i), got[top]) for i in indices])


def crop_resize(frames: torch.Tensor, box, size: int, flip: bool) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, size, size) uint8: crop ``box``, antialiased bilinear resize."""
    y0, x0, ch, cw = box
    x = frames[:, y0:y0 + ch, x0:x0 + cw].permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    if flip:
        x = x.flip(-1)
    return x.permute(1, 0, 2, 3)


class ClipDataset(torch.utils.data.Dataset):
    """Map-style: item ``(epoch, position, sample_index)`` -> num_sample uint8 clips + label.

    A video that fails to decode (or whose members are cut off) is replaced by the next sample in
    stored order, as VideoMAE retries another sample, so every batch has ``batch_size`` videos (static
    shapes for torch.compile, equal step counts across DDP ranks); each failure is reported in ``bad``
    for the main process to count. Only when ``MAX_REPLACEMENTS`` samples in a row fail is the item
    marked ``broken``: the main process then stops with :class:`BrokenShardsError`."""

    MAX_REPLACEMENTS = 32

    def __init__(self, cfg: DataConfig, samples: List[Sample], rank: int, seed: int):
        self.cfg, self.samples, self.rank, self.seed = cfg, samples, rank, seed
        self.pairs = scale_pairs(len(cfg.scales), cfg.max_distort)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        epoch, pos, i = item
        rng = np.random.default_rng([self.seed, epoch, self.rank, pos])
        bad = []
        for attempt in range(min(self.MAX_REPLACEMENTS, len(self.samples))):
            s = self.samples[(i + attempt) % len(self.samples)]
            try:
                out = self._load(s, rng)
                out["bad"] = bad
                return out
            except (DecodeError, OSError, struct.error, ShardError) as e:
                bad.append((f"{s.tar}:{s.key}", str(e)))
                if self.cfg.on_bad_sample == "error":
                    break
        return {"bad": bad, "broken": True}

    def _load(self, s: Sample, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        info = ClipInfo.unpack(read_member(s.tar, s.info))
        label, n = info.label, info.frames
        start = clip_start(n, cfg.num_frames, cfg.sampling_rate, rng.random(), cfg.train)
        idx = clip_indices(n, start, cfg.num_frames, cfg.sampling_rate)
        frames = torch.from_numpy(decode_frames(read_member(s.tar, s.video), idx))
        h, w = frames.shape[1:3]
        clips = []
        for _ in range(cfg.num_sample):  # repeated augmentation on the same decoded frames
            if cfg.train:
                box = multiscale_crop_box(h, w, cfg.input_size, cfg.scales, cfg.max_distort,
                                          int(rng.integers(len(self.pairs))), int(rng.integers(len(FIX_OFFSETS))))
                flip = bool(cfg.flip and rng.random() < 0.5)
            else:
                box, flip = center_crop_box(h, w), False
            clips.append(crop_resize(frames, box, cfg.input_size, flip))
        return {"video": torch.stack(clips), "label": label}


def collate(items):
    out = {"bad": [b for it in items for b in it["bad"]]}
    if any(it.get("broken") for it in items):
        out["broken"] = True  # the main process raises; never a short batch
        return out
    out["video"] = torch.cat([it["video"] for it in items])  # (b*num_sample, 3, T, S, S), video-major
    out["label"] = torch.tensor([it["label"] for it in items], dtype=torch.int64)
    return out


def _worker_init(_):
    torch.set_num_threads(1)  # workers are the parallelism; avoid oversubscribing the cores


class EagerLoader(LoaderStateMixin):
    """Iterable of ``{'video', 'label'}`` batches from a DataLoader (see module doc)."""

    backend = "eager"

    def __init__(self, cfg: DataConfig, shards: ShardSet, rank: int, world_size: int, device: str,
                 bad: BadSampleCounter):
        self.cfg, self.rank, self.bad = cfg, rank, bad
        self.device = torch.device(device)
        self.samples, self.world_size = shards.samples, world_size
        self.state = StreamState(seed=cfg.seed)
        self.num_rank_samples, self._len = rank_batches(len(self.samples), world_size, cfg.batch_size,
                                                        cfg.drop_last)
        self._dtype = _TORCH_DTYPES[cfg.dtype]
        self._mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=self.device).view(1, 3, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor([255 * s for s in IMAGENET_STD], device=self.device).view(1, 3, 1, 1, 1)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices (into all samples) this rank reads in ``epoch``, in reading order: its part for
        the epoch, permuted (train+shuffle), cut or padded to the common per-rank length."""
        lo, hi = rank_range(len(self.samples), epoch_part(self.rank, epoch, self.world_size), self.world_size)
        order = np.arange(lo, hi)
        if self.cfg.train and self.cfg.shuffle:
            order = np.random.default_rng([self.state.seed, epoch, self.rank]).permutation(order)
        n = self.num_rank_samples
        if len(order) >= n:
            return order[:n]
        # pad as DALI's reader does: it reads on into the next part's first samples
        return np.concatenate([order, np.arange(hi, hi + n - len(order)) % len(self.samples)])

    def _batches(self, epoch: int, first: int):
        order, b = self.epoch_order(epoch), self.cfg.batch_size
        for k in range(first, self._len):
            yield [(epoch, int(p), int(order[p])) for p in range(k * b, min((k + 1) * b, len(order)))]

    def __iter__(self) -> Iterator[dict]:
        st, cfg = self.state, self.cfg
        epoch = st.epoch
        loader = torch.utils.data.DataLoader(
            ClipDataset(cfg, self.samples, self.rank, st.seed), batch_sampler=list(self._batches(epoch, st.batch)),
            num_workers=cfg.num_workers, collate_fn=collate, pin_memory=self.device.type == "cuda",
            prefetch_factor=cfg.prefetch if cfg.num_workers > 0 else None,
            worker_init_fn=_worker_init if cfg.num_workers > 0 else None)
        for batch in loader:
            st.batch += 1
            for where, why in batch["bad"]:
                if cfg.on_bad_sample == "error":
                    raise BadSampleError(f"undecodable video {where}: {why} "
                                       f"(set data.on_bad_sample=skip to skip such samples)")
                self.bad.add("undecodable video (replaced by the next sample)", f"{where}: {why}")
            if batch.get("broken"):
                raise BrokenShardsError(
                    f"{ClipDataset.MAX_REPLACEMENTS} samples in a row failed to load (last: {batch['bad'][-1][0]}: "
                    f"{batch['bad'][-1][1]}); the shards look broken: check them with `python -m amd_fast.shard "
                    "--verify --out <shard folder>` and rebuild the bad ones")
            yield {"video": self._normalize(batch["video"]), "label": batch["label"].to(self.device, non_blocking=True)
                   .repeat_interleave(cfg.num_sample)}
        st.epoch, st.batch = epoch + 1, 0

    def _normalize(self, video_u8: torch.Tensor) -> torch.Tensor:
        x = video_u8.to(self.device, non_blocking=True).float()
        x = (x - self._mean) * self._inv_std
        return x if self._dtype == torch.float32 else x.to(self._dtype)
