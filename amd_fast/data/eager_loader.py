"""Eager loader: a video decoder (PyAV by default) + torch transforms in ``torch.utils.data.DataLoader`` workers.

The bench's baseline and the fallback for codecs DALI cannot decode here (H.264 on CPU). Same contract
and outputs as the DALI loader: the same per-rank sample order (``shards.epoch_order``), the same clip
plan per position (``sampling.plan_clip``: frame indices, crop boxes, flips), the same resize (bilinear,
antialiased, rounded to uint8 like DALI's resize) and the same normalization (on the device, after the
uint8 clip crossed the process boundary: 4x less IPC than float). ``data.eager_decoder`` picks the
decoder (``decoders.py``: pyav, torchcodec, decord), all seeking to the keyframe before the clip.

Samples are read by random access at the byte offsets of the DALI ``.idx`` files rather than by
streaming the tars with ``webdataset``: it gives the identical per-rank split as DALI, a full
per-epoch permutation of the rank's samples from ``(seed, epoch, rank)``, and an exact resume that
skips consumed batches without decoding them. Worker split: the DataLoader hands whole batches to
workers; every draw of a position comes from ``(seed, epoch, rank, position)``, so batches do not
depend on the number of workers. A video that fails to decode is replaced by the next sample in
stored order and counted (see ClipDataset), so batch shapes stay static.
"""
from __future__ import annotations

import logging
import struct
from typing import Iterator, List

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig
from .decoders import DecodeError, get_decoder
from .sampling import normalize_clips, plan_clip, sample_rng
from .shards import Sample, ShardError, ShardSet, read_clip_info, read_member
from .stream import BadSampleCounter, BadSampleError, BrokenShardsError, LoaderStateMixin

log = logging.getLogger(__name__)


def crop_resize(frames: torch.Tensor, box, size: int, flip: bool) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8: crop ``box``, antialiased bilinear resize, flip.

    Resized in uint8 with the frames channels-last (a permuted view of the decoder's HWC output): torch's
    vectorised uint8 path, 10-15x faster on a CPU core than converting to float first (same result up to
    rounding: at most 1 grey level). The clip stays channels-last, as DALI's."""
    y0, x0, ch, cw = box
    x = frames[:, y0:y0 + ch, x0:x0 + cw].permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if flip:
        x = x.flip(-1)
    return x.permute(0, 2, 3, 1).contiguous()


class ClipDataset(torch.utils.data.Dataset):
    """Map-style: item ``(epoch, position, sample_index)`` -> num_sample uint8 clips + label.

    A video that fails to decode (or whose members are cut off) is replaced by the next sample in
    stored order, as VideoMAE retries another sample, so every batch has ``batch_size`` videos (static
    shapes for torch.compile, equal step counts across DDP ranks); each failure is reported in ``bad``
    for the main process to count. Only when ``MAX_REPLACEMENTS`` samples in a row fail is the item
    marked ``broken``: the main process then stops with :class:`BrokenShardsError`."""

    MAX_REPLACEMENTS = 32

    def __init__(self, cfg: DataConfig, samples: List[Sample], rank: int, seed: int, device: str):
        self.cfg, self.samples, self.rank, self.seed = cfg, samples, rank, seed
        self.device = device  # where torchcodec decodes when the loader runs in the main process
        self._decode = None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        epoch, pos, i = item
        if self._decode is None:  # per process: workers build their own (decoders do not pickle)
            threads = 1 if self.cfg.num_workers > 0 else 0  # in workers, the workers are the parallelism
            on_gpu = self.cfg.num_workers == 0 and self.device.startswith("cuda")
            self._decode = get_decoder(self.cfg.eager_decoder, threads=threads,
                                       device=self.device if on_gpu else "cpu")
        bad = []
        for attempt in range(min(self.MAX_REPLACEMENTS, len(self.samples))):
            s = self.samples[(i + attempt) % len(self.samples)]
            try:
                out = self._load(s, sample_rng(self.seed, epoch, self.rank, pos))
                out["bad"], out["index"] = bad, (i + attempt) % len(self.samples)
                return out
            except (DecodeError, OSError, struct.error, ShardError) as e:
                bad.append((f"{s.tar}:{s.key}", str(e)))
                if self.cfg.on_bad_sample == "error":
                    break
        return {"bad": bad, "broken": True}

    def _load(self, s: Sample, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        info = read_clip_info(s)
        plan = plan_clip(cfg, info.frames, info.height, info.width, rng)
        frames = torch.as_tensor(self._decode(read_member(s.tar, s.video), plan.indices))
        if tuple(frames.shape[1:3]) != (info.height, info.width):
            raise DecodeError(f"frames are {frames.shape[2]}x{frames.shape[1]}, the shard records "
                              f"{info.width}x{info.height}")
        clips = [crop_resize(frames, box, cfg.input_size, flip) for box, flip in zip(plan.boxes, plan.flips)]
        return {"video": torch.stack(clips), "label": info.label}


def collate(items):
    out = {"bad": [b for it in items for b in it["bad"]]}
    if any(it.get("broken") for it in items):
        out["broken"] = True  # the main process raises; never a short batch
        return out
    out["video"] = torch.cat([it["video"] for it in items])  # (b*num_sample, T, S, S, 3), video-major
    out["label"] = torch.tensor([it["label"] for it in items], dtype=torch.int64)
    out["index"] = torch.tensor([it["index"] for it in items], dtype=torch.int64)
    return out


def _worker_init(_):
    torch.set_num_threads(1)  # workers are the parallelism; avoid oversubscribing the cores


class EagerLoader(LoaderStateMixin):
    """Iterable of ``{'video', 'label'}`` batches from a DataLoader (see module doc)."""

    backend = "eager"

    def __init__(self, cfg: DataConfig, shards: ShardSet, rank: int, world_size: int, device: str,
                 bad: BadSampleCounter):
        self._init_state(cfg, shards, rank, world_size, device, bad)
        get_decoder(cfg.eager_decoder)  # a missing decoder package is an error now, not in a worker

    def __iter__(self) -> Iterator[dict]:
        st, cfg = self.state, self.cfg
        epoch = st.epoch
        batches = [[(epoch, pos, int(i)) for pos, i in batch] for batch in self.epoch_batches(epoch, st.batch)]
        on_gpu_decode = cfg.eager_decoder == "torchcodec" and cfg.num_workers == 0 and self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            ClipDataset(cfg, self.samples, self.rank, st.seed, str(self.device)), batch_sampler=batches,
            num_workers=cfg.num_workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda" and not on_gpu_decode,
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
            video = batch["video"].to(self.device, non_blocking=True).permute(0, 4, 1, 2, 3)  # channels-last view
            video = normalize_clips(video, self.out_dtype)
            yield {"video": video, "label": batch["label"].to(self.device, non_blocking=True)
                   .repeat_interleave(cfg.num_sample), "index": batch["index"].repeat_interleave(cfg.num_sample)}
        st.epoch, st.batch = epoch + 1, 0
