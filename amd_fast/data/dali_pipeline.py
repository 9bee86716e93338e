"""DALI loader: encoded videos from the shards -> DALI decode (NVDEC 'mixed' on a GPU) -> crops -> torch.

What runs where:

- Python, once per batch (no per-pixel work): which samples the batch holds (``shards.epoch_order``,
  the same order as the eager loader), each sample's clip plan (``sampling.plan_clip``: start frame,
  frame order, crop boxes, flips, drawn from ``(seed, epoch, rank, position)``), and the encoded bytes,
  read at the DALI index's offsets. They enter the graph through ``fn.external_source``.
- The DALI graph, per sample: ``fn.decoders.video`` decodes the clip's distinct frames (from the
  keyframe before the first one: the shards' GOP sets the waste, see ``--preset``),
  ``fn.sequence_rearrange`` repeats the last reachable frame where the video is too short, and per crop
  one ``fn.resize`` (the crop box as its ROI, reversed in x for a flip; bilinear, antialiased) emits a
  uint8 ``(T, S, S, 3)`` clip, in the decoder's own channels-last layout: no transpose pass. On CUDA
  everything after the bytes runs on the GPU.
- torch: the uint8 batch is copied once into a torch tensor on the device (device-to-device on CUDA),
  viewed as ``(clips, 3, T, S, S)`` with channels-last-3d strides and normalized there
  (``sampling.normalize_clips``), exactly as the eager loader does.

Several pipelines per rank (``data.dali_pipelines``; one NVDEC engine per pipeline in practice, and an
H100 has seven): batch ``k`` of the epoch is decoded by pipeline ``k % P``, and the batches are handed
out in order ``k = 0, 1, 2, ...``, so the stream is the same for any ``P`` and any number of threads.
Resume skips the consumed batches without decoding them. Because the graph only executes a plan
computed from the position, a batch is identical however it was reached.

Undecodable video: DALI fails the whole batch. Its samples are then decoded one by one in a small
repair pipeline; each that fails is replaced by the next sample in stored order (the eager loader's
rule, with the same plan draws), counted, and the repaired batch takes the failed one's place, so
every batch keeps ``batch_size`` videos and its position.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

from .config import DataConfig
from .sampling import ClipPlan, normalize_clips, plan_clip, sample_rng
from .shards import READ_ERRORS, ShardError, ShardSet, read_sample, read_samples
from .stream import BadSampleCounter, BadSampleError, BrokenShardsError, LoaderStateMixin

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 32  # as the eager loader's ClipDataset
# NVDEC engines per GPU (public spec sheets), for data.dali_pipelines=auto until the device check measures it.
NVDEC_ENGINES = {"H100": 7, "H200": 7, "GH200": 7, "A100": 5, "A800": 5}


def auto_pipelines(device: torch.device) -> int:
    """``data.dali_pipelines: auto``. CPU: 1 (DALI's CPU decoder is parallel across its threads already).
    CUDA: one pipeline per NVDEC engine the rank can have to itself: engines per GPU (H100/H200 7, A100 5,
    otherwise a guess of 2) divided by the ranks sharing the GPU. A documented guess, not yet measured."""
    if device.type != "cuda":
        return 1
    name = torch.cuda.get_device_name(device)
    engines = next((n for key, n in NVDEC_ENGINES.items() if key in name), 2)
    ranks_per_gpu = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")) // max(1, torch.cuda.device_count()))
    return max(1, engines // ranks_per_gpu)


def clip_graph(cfg: DataConfig, source, decode_device: str):
    """The DALI graph (call inside a ``pipeline_def``): external inputs -> (B, num_sample, T, S, S, 3) uint8."""
    from nvidia.dali import fn, types

    S = cfg.input_size
    inputs = fn.external_source(source=source, num_outputs=4 + 2 * cfg.num_sample, batch=True,
                                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32]
                                + [types.FLOAT, types.FLOAT] * cfg.num_sample)
    video, start, distinct, order = inputs[:4]
    # Decode only the distinct frames start, start+step, ... and repeat the last one in-graph. Why not frames
    # with repeats in them: DALI seeks again for every repeated index (5-8x slower on a short video), and
    # pad_mode='edge' repeats the video's last frame, not the last frame on the stride grid as the reference.
    frames = fn.decoders.video(video, start_frame=start, stride=cfg.sampling_rate, sequence_length=distinct,
                               pad_mode="edge",  # only if the shard's frame count over-counts the video
                               device=decode_device)
    frames = fn.sequence_rearrange(frames, new_order=order)
    crops = []
    for k in range(cfg.num_sample):  # repeated augmentation: one decode, own crop each
        roi_start, roi_end = inputs[4 + 2 * k: 6 + 2 * k]  # x reversed = mirrored (DALI flips a reversed ROI)
        crops.append(fn.resize(frames, size=[S, S], roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                               interp_type=types.INTERP_LINEAR, antialias=True))
    return fn.stack(*crops)


def plan_inputs(video: bytes, plan: ClipPlan) -> list:
    """One sample's external-source inputs, in clip_graph's order."""
    out = [np.frombuffer(video, dtype=np.uint8), np.int32(plan.start), np.int32(plan.distinct), plan.order]
    for (y0, x0, ch, cw), flip in zip(plan.boxes, plan.flips):
        xa, xb = (x0 + cw, x0) if flip else (x0, x0 + cw)
        out += [np.array([y0, xa], np.float32), np.array([y0 + ch, xb], np.float32)]
    return out


class _Feed:
    """The external source of one pipeline: its batches, in order, as DALI inputs. DALI calls it ahead of
    ``run()`` (prefetching); the sample indices and labels of each fed batch wait in ``pending``."""

    def __init__(self, loader: "DaliLoader", epoch: int, batches: Sequence[List[Tuple[int, int]]]):
        self.loader, self.epoch, self.batches = loader, epoch, deque(batches)
        self.pending: deque = deque()

    def __call__(self):
        if not self.batches:
            raise StopIteration
        batch = self.batches.popleft()
        per_sample, labels, taken = [], [], []
        # the batch's samples in one go: on object storage, remote_concurrency ranged GETs in flight
        read = read_samples([self.loader.samples[i] for _, i in batch], concurrency=self.loader.cfg.remote_concurrency)
        for (pos, i), got in zip(batch, read):
            inputs, label, j = self.loader.readable_inputs(self.epoch, pos, i, got)
            per_sample.append(inputs)
            labels.append(label)
            taken.append((pos, j))
        self.pending.append((taken, labels))
        return tuple(list(column) for column in zip(*per_sample))


class DaliLoader(LoaderStateMixin):
    """Iterable of ``{'video', 'label'}`` batches from ``data.dali_pipelines`` DALI pipelines (module doc)."""

    backend = "dali"

    def __init__(self, cfg: DataConfig, shards: ShardSet, rank: int, world_size: int, device: str,
                 bad: BadSampleCounter):
        self._init_state(cfg, shards, rank, world_size, device, bad)
        self.num_pipelines = (auto_pipelines(self.device) if cfg.dali_pipelines == "auto"
                              else int(cfg.dali_pipelines))
        self._repair = None

    # ---- inputs ---------------------------------------------------------------------------------------
    def sample_inputs(self, epoch: int, pos: int, i: int, read=None):
        """(DALI inputs, label) of sample ``i`` at position ``pos`` of ``epoch``; OSError / ShardError /
        struct.error if its members cannot be read. ``read``: its ``read_sample`` result (or the exception
        ``read_samples`` gave in its place), when the batch was read ahead."""
        if isinstance(read, BaseException):
            raise read
        info, video = read if read is not None else read_sample(self.samples[i])
        plan = plan_clip(self.cfg, info.frames, info.height, info.width, sample_rng(self.state.seed, epoch, self.rank, pos))
        return plan_inputs(video, plan), info.label

    def readable_inputs(self, epoch: int, pos: int, i: int, read=None):
        """``sample_inputs`` of the first sample from ``i`` on (stored order) whose members can be read;
        unreadable ones (a cut-off tar, an object that stays unavailable after its retries) are counted and
        replaced, as undecodable ones are."""
        for attempt in range(min(MAX_REPLACEMENTS, len(self.samples))):
            j = (i + attempt) % len(self.samples)
            try:
                inputs, label = self.sample_inputs(epoch, pos, j, read if attempt == 0 else None)
                return inputs, label, j
            except READ_ERRORS as e:
                where = f"{self.samples[j].tar}:{self.samples[j].key}"
                if self.cfg.on_bad_sample == "error":
                    raise BadSampleError(f"unreadable sample {where}: {e} (set data.on_bad_sample=skip to replace "
                                         "such samples and go on)") from None
                self.bad.add("unreadable sample (replaced by the next sample)", f"{where}: {e}")
        raise BrokenShardsError(f"{MAX_REPLACEMENTS} samples in a row could not be read (from "
                                f"{self.samples[i].tar}:{self.samples[i].key}); the shards look broken: check them "
                                "with `python -m amd_fast.shard --verify --out <shard folder>`")

    def _build(self, source, batch_size: int, prefetch: int):
        from nvidia.dali import pipeline_def

        on_gpu = self.device.type == "cuda"

        @pipeline_def(batch_size=batch_size, num_threads=self.cfg.dali_threads,
                      device_id=(self.device.index or 0) if on_gpu else None, prefetch_queue_depth=prefetch)
        def pipe():
            return clip_graph(self.cfg, source, "mixed" if on_gpu else "cpu")

        p = pipe()
        p.build()
        return p

    def _to_torch(self, video_tl, labels: Sequence[int], batch: Sequence[Tuple[int, int]]) -> dict:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = video_tl.as_tensor()  # (B, num_sample, T, S, S, 3) uint8
        video = torch.empty(list(t.shape()), dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(t, video, cuda_stream=stream)  # device-to-device on GPU, no host round trip
        video = normalize_clips(video.flatten(0, 1).permute(0, 4, 1, 2, 3), self.out_dtype)
        label = torch.tensor(labels, dtype=torch.int64).to(self.device, non_blocking=True)
        index = torch.tensor([i for _, i in batch], dtype=torch.int64)
        ns = self.cfg.num_sample
        return {"video": video, "label": label.repeat_interleave(ns), "index": index.repeat_interleave(ns)}

    # ---- an undecodable video -------------------------------------------------------------------------
    def _repair_batch(self, epoch: int, batch: List[Tuple[int, int]]) -> dict:
        """Decode a failed batch's samples one by one; replace each that fails by the next sample in stored
        order; decode the repaired batch (see module doc)."""
        if self._repair is None:
            self._repair = _RepairPipe(self)
        fixed = []
        for pos, i in batch:
            for attempt in range(min(MAX_REPLACEMENTS, len(self.samples))):
                j = (i + attempt) % len(self.samples)
                why = self._repair.check(epoch, pos, j)
                if why is None:
                    fixed.append((pos, j))
                    break
                where = f"{self.samples[j].tar}:{self.samples[j].key}"
                if self.cfg.on_bad_sample == "error":
                    raise BadSampleError(f"undecodable video {where}: {why} (set data.on_bad_sample=skip to "
                                         "replace such samples and go on)")
                self.bad.add("undecodable video (replaced by the next sample)", f"{where}: {why}")
            else:
                raise BrokenShardsError(
                    f"{MAX_REPLACEMENTS} samples in a row failed to decode in DALI (from "
                    f"{self.samples[i].tar}:{self.samples[i].key}); the shards look broken: check them with "
                    "`python -m amd_fast.shard --verify --out <shard folder>`")
        video, labels = self._repair.run(epoch, fixed)
        return self._to_torch(video, labels, fixed)

    # ---- the stream -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        st = self.state
        epoch, first = st.epoch, st.batch
        batches = self.epoch_batches(epoch, first)
        P = self.num_pipelines
        feeds = [_Feed(self, epoch, [b for k, b in enumerate(batches, start=first) if k % P == p]) for p in range(P)]
        pipes = [self._build(feed, self.cfg.batch_size, self.cfg.prefetch) for feed in feeds]
        try:
            for k in range(first, self._len):
                p = k % P
                try:
                    (video,) = pipes[p].run()
                    batch, labels = feeds[p].pending.popleft()
                    out = self._to_torch(video, labels, batch)
                except RuntimeError as e:  # DALI could not decode a video of this batch
                    if not feeds[p].pending:
                        raise
                    batch, _ = feeds[p].pending.popleft()
                    log.debug("DALI batch %d of epoch %d failed (%s); repairing it", k, epoch, str(e)[:200])
                    out = self._repair_batch(epoch, batch)
                st.batch += 1
                yield out
        finally:
            del pipes
        st.epoch, st.batch = epoch + 1, 0


class _RepairPipe:
    """A one-batch-at-a-time pipeline for a failed batch: checks samples alone, then decodes the repaired batch."""

    def __init__(self, loader: DaliLoader):
        self.loader = loader
        self.next: list = []
        self.pipe = loader._build(self._source, loader.cfg.batch_size, 1)

    def _source(self):
        return tuple(list(column) for column in zip(*self.next))

    def _run(self, epoch: int, batch):
        inputs, labels = zip(*(self.loader.sample_inputs(epoch, pos, i) for pos, i in batch))
        self.next = list(inputs)
        (video,) = self.pipe.run()
        return video, list(labels)

    def check(self, epoch: int, pos: int, i: int):
        """None if sample ``i`` decodes at ``pos``, else why not."""
        try:
            self._run(epoch, [(pos, i)])
            return None
        except (RuntimeError, OSError, ShardError, ValueError) as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            return lines[-1][:300] if lines else type(e).__name__

    def run(self, epoch: int, batch):
        return self._run(epoch, batch)
