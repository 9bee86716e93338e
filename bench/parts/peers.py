"""The peer loaders as their own documentation shows them, reading the same clips as amd_fast's loaders.

The bench's ``torchcodec``, ``decord`` and ``spdl`` rows measure what a user following each project's own
documentation would write, not amd_fast's harness with the decoder swapped (those are the ``eager+<decoder>``
rows of :mod:`bench.parts.loaders`):

* ``torchcodec`` — torchcodec's training recipe: a map-style ``Dataset`` whose ``__getitem__`` decodes one video
  with ``torchcodec.decoders.VideoDecoder(bytes, seek_mode="approximate", num_ffmpeg_threads=1,
  dimension_order="NCHW")`` and ``get_frames_at(indices)``, then crops each clip with
  ``torchvision.transforms.v2.functional.resized_crop(..., antialias=True)`` (+ ``horizontal_flip``) and returns
  a per-sample tensor; torch's default collate; ``DataLoader(num_workers=W)``.
* ``decord`` — the VideoMAE / AMD reference loaders' way: ``decord.VideoReader(io.BytesIO(bytes), num_threads=1)``,
  ``get_batch(indices).asnumpy()``, torch / torchvision crops, default collate, DataLoader workers.
* ``amd-reference`` — the AMD reference's own pretraining loader (MCG-NJU/AMD ``dataset/datasets.py`` ``VideoMAE`` with
  ``dataset/build.py``'s ``DataAugmentationForMAE``), its per-sample work as written there: decord
  ``VideoReader(num_threads=1)`` + ``get_batch``, one PIL image per frame, and per crop ``GroupMultiScaleCrop``
  (PIL ``crop`` + ``resize(BILINEAR)`` per frame), ``Stack`` (``np.concatenate`` on channels),
  ``ToTorchFormatTensor`` (float / 255), ``GroupNormalize`` (a ``sub_``/``div_`` per channel plane), the view to
  (3, T, S, S), and its ``multiple_pretrain_samples_collate`` (the crops of a batch stacked by default collate):
  float32 clips, normalized in the worker. Left out: its tube-mask draw (a shuffle of a few hundred booleans).
* ``spdl`` — SPDL's pipeline (its recommended replacement for the DataLoader): ``PipelineBuilder().add_source(items)
  .pipe(load, concurrency=W).aggregate(B).pipe(collate).add_sink(...)``, a thread pool (no worker processes);
  ``load`` = ``spdl.io.demux_video`` + ``sample_decode_video(packets, indices, filter_desc=get_video_filter_desc(
  pix_fmt="rgb24"))`` + ``convert_frames`` + ``to_torch``, crops with torch. ``workers`` = its concurrency.

Same clips as ours, for a fair comparison: the items are an :class:`~amd_fast.data.eager_loader.EagerLoader`'s
own ``epoch_batches`` (same samples, same per-rank epoch order, same batches) and each position's clip plan is
``plan_clip(cfg, ..., sample_rng(seed, epoch, rank, position))`` (frames, crop boxes, flips); every crop is resized
to ``cfg.input_size`` and a batch is delivered as uint8 ``(B * num_sample, 3, T, S, S)`` on the device, as our
loader delivers it with ``dtype=uint8`` (``amd-reference``: float32, normalized, as the reference delivers it). The batches of several epochs go to one DataLoader (one batch sampler
over them), so worker start-up is paid once, in the warm-up, as with our loader's persistent workers. A sample
that fails to decode fails the run (the documented recipes do not replace samples): the bench's row then says
"not measured (...)".
"""
from __future__ import annotations

import io
import logging
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

PEERS = ("torchcodec", "decord", "spdl", "amd-reference")  # the decoder each uses: bench.parts.loaders.LOADERS

Item = Tuple[int, int, int]  # (epoch, position in the epoch, sample index)


def _plan(cfg, info, seed: int, epoch: int, rank: int, pos: int):
    from amd_fast.data.sampling import plan_clip, sample_rng

    return plan_clip(cfg, info.frames, info.height, info.width, sample_rng(seed, epoch, rank, pos))


def _crops(frames_tchw: torch.Tensor, plan, size: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> (num_sample, 3, T, S, S) uint8: torchvision's resized_crop (antialiased bilinear)
    and horizontal_flip per crop box of the plan."""
    from torchvision.transforms.v2 import functional as F

    out = []
    for (y0, x0, h, w), flip in zip(plan.boxes, plan.flips):
        x = F.resized_crop(frames_tchw, y0, x0, h, w, [size, size], antialias=True)
        if flip:
            x = F.horizontal_flip(x)
        out.append(x.permute(1, 0, 2, 3))  # (3, T, S, S): the model's channels-first clip
    return torch.stack(out)


class _PeerDataset(torch.utils.data.Dataset):
    """Map-style dataset over ``(epoch, position, sample)`` items: one sample's crops per ``__getitem__``."""

    def __init__(self, cfg, samples, items: List[Item], rank: int, seed: int):
        self.cfg, self.samples, self.items, self.rank, self.seed = cfg, samples, items, rank, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> torch.Tensor:
        from amd_fast.data.shards import read_sample

        epoch, pos, i = self.items[k]
        info, data = read_sample(self.samples[i])
        plan = _plan(self.cfg, info, self.seed, epoch, self.rank, pos)
        return _crops(self.decode(data, [int(x) for x in plan.indices]), plan, self.cfg.input_size)

    def decode(self, data: bytes, indices: List[int]) -> torch.Tensor:
        raise NotImplementedError


class TorchcodecDataset(_PeerDataset):
    def decode(self, data, indices):
        from torchcodec.decoders import VideoDecoder

        dec = VideoDecoder(data, seek_mode="approximate", num_ffmpeg_threads=1, dimension_order="NCHW")
        last = len(dec) - 1  # approximate mode reads the count from the header
        return dec.get_frames_at(indices=[min(i, last) for i in indices]).data  # (T, 3, H, W)


class DecordDataset(_PeerDataset):
    def decode(self, data, indices):
        import decord

        vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
        idx = np.minimum(np.asarray(indices, dtype=np.int64), len(vr) - 1)
        return torch.from_numpy(vr.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)  # (T, 3, H, W) view


class AmdReferenceDataset(_PeerDataset):
    """See the module doc: the reference's ``VideoMAE.__getitem__`` + ``DataAugmentationForMAE``, on our plan's frames
    and crop boxes (the reference draws the same kind of box, ``GroupMultiScaleCrop``; pretraining never flips)."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __getitem__(self, k: int) -> List[torch.Tensor]:
        import decord
        from PIL import Image

        from amd_fast.data.shards import read_sample

        epoch, pos, i = self.items[k]
        info, data = read_sample(self.samples[i])
        plan = _plan(self.cfg, info, self.seed, epoch, self.rank, pos)
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1, ctx=decord.cpu(0))
        frame_ids = np.minimum(np.asarray(plan.indices, dtype=np.int64), len(vr) - 1)
        video = vr.get_batch(list(frame_ids)).asnumpy()
        images = [Image.fromarray(video[t]).convert("RGB") for t in range(len(frame_ids))]
        S, T = self.cfg.input_size, len(frame_ids)
        crops = []
        for (y0, x0, h, w), flip in zip(plan.boxes, plan.flips):
            group = [img.crop((x0, y0, x0 + w, y0 + h)).resize((S, S), Image.BILINEAR) for img in images]
            if flip:
                group = [img.transpose(Image.FLIP_LEFT_RIGHT) for img in group]
            x = torch.from_numpy(np.concatenate(group, axis=2)).permute(2, 0, 1).contiguous().float().div(255.)
            for plane, m, s in zip(x, self.MEAN * T, self.STD * T):
                plane.sub_(m).div_(s)
            crops.append(x.view((T, 3) + x.size()[-2:]).transpose(0, 1))
        return crops


def _reference_collate(batch: List[List[torch.Tensor]]) -> torch.Tensor:
    """The reference's ``multiple_pretrain_samples_collate``: every crop of the batch, default-collated."""
    return torch.utils.data.default_collate([crop for crops in batch for crop in crops])


def spdl_load(cfg, samples, rank: int, seed: int, item: Item) -> torch.Tensor:
    """SPDL's stage: one sample -> its (num_sample, 3, T, S, S) crops (demux, sampled decode to rgb24, torch)."""
    import spdl.io

    from amd_fast.data.shards import read_sample

    epoch, pos, i = item
    info, data = read_sample(samples[i])
    plan = _plan(cfg, info, seed, epoch, rank, pos)
    packets = spdl.io.demux_video(data)
    n = len(packets)
    idx = np.minimum(plan.indices, n - 1)
    want = np.unique(idx)  # sample_decode_video takes distinct, sorted indices
    frames = spdl.io.sample_decode_video(packets, want.tolist(),
                                         filter_desc=spdl.io.get_video_filter_desc(pix_fmt="rgb24"))
    buf = spdl.io.to_torch(spdl.io.convert_frames(frames))  # (distinct, H, W, 3)
    clip = buf[torch.from_numpy(np.searchsorted(want, idx))].permute(0, 3, 1, 2)
    return _crops(clip, plan, cfg.input_size)


def _items(cfg, n_batches: int) -> Tuple[object, List[List[Item]]]:
    """Our eager loader (for its samples, rank, seed) and the first ``n_batches`` batches of its epochs, as
    ``(epoch, position, sample)`` items: exactly the batches ``build_loader(cfg)`` yields, in order."""
    import dataclasses

    from amd_fast.data import build_loader

    ref = build_loader(dataclasses.replace(cfg, backend="eager", eager_decoder="pyav"))
    batches, epoch = [], 0
    while len(batches) < n_batches:
        batches += [[(epoch, p, i) for p, i in b] for b in ref.epoch_batches(epoch)]
        epoch += 1
    return ref, batches[:n_batches]


def batches(name: str, cfg, n_batches: int, workers: int) -> Iterator[torch.Tensor]:
    """The first ``n_batches`` batches of peer ``name`` used as documented: (B * num_sample, 3, T, S, S) uint8 on
    ``cfg``'s device, the same clips as ``build_loader(cfg)`` (``cfg.dtype='uint8'``) yields."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
    ref, items = _items(cfg, n_batches)
    device = torch.device(cfg.resolved_device())
    if name == "spdl":
        yield from _spdl_batches(cfg, ref, items, max(workers, 1), device)  # threads: at least one
        return
    flat = [it for b in items for it in b]
    bounds = np.cumsum([0] + [len(b) for b in items])
    sampler = [list(range(bounds[k], bounds[k + 1])) for k in range(len(items))]
    cls = {"torchcodec": TorchcodecDataset, "decord": DecordDataset, "amd-reference": AmdReferenceDataset}[name]
    loader = torch.utils.data.DataLoader(cls(cfg, ref.samples, flat, ref.rank, ref.state.seed),
                                         batch_sampler=sampler, num_workers=workers,
                                         collate_fn=_reference_collate if name == "amd-reference" else None,
                                         pin_memory=device.type == "cuda")
    for b in loader:  # default collate: (B, num_sample, 3, T, S, S); the reference's: (B * num_sample, ...)
        yield (b if b.dim() == 5 else b.flatten(0, 1)).to(device, non_blocking=True)


def _spdl_batches(cfg, ref, items, workers: int, device) -> Iterator[torch.Tensor]:
    from spdl.pipeline import PipelineBuilder

    logging.getLogger("spdl.pipeline").setLevel(logging.WARNING)  # its per-stage statistics at stop: not ours
    flat = [it for b in items for it in b]
    size = len(items[0])
    load = lambda item: spdl_load(cfg, ref.samples, ref.rank, ref.state.seed, item)  # noqa: E731
    collate = lambda clips: torch.stack(clips).flatten(0, 1)  # noqa: E731
    pipeline = (PipelineBuilder().add_source(flat)
                .pipe(load, concurrency=workers, output_order="input")
                .aggregate(size)
                .pipe(collate)
                .add_sink(3)
                .build(num_threads=workers))
    with pipeline.auto_stop():
        for b in pipeline.get_iterator():
            yield b.to(device, non_blocking=True)


def measure_clips_per_s(name: str, cfg, *, batches_: int, warmup: int, workers: int) -> dict:
    """Like :func:`amd_fast.data.loader_speed.measure_clips_per_s`, for peer ``name``: ``warmup`` batches (worker
    or thread-pool start, first decodes) excluded, then ``batches_`` timed; CPU time of the whole process tree
    and of this process alone, per delivered clip."""
    from amd_fast.data.loader_speed import measure_stream

    # a stream longer than what is timed (as our loader's endless one): a peer whose pipeline runs ahead (SPDL's
    # sink buffer, DataLoader prefetch) must still be working inside the timed window; closed below
    it = batches(name, cfg, 2 * (warmup + batches_) + 8, workers)
    try:
        out = measure_stream(it, cfg, batches=batches_, warmup=warmup, clips_of=lambda b: b.shape[0])
    finally:
        it.close()  # stops the DataLoader's workers / SPDL's pipeline before the next measurement
    return {"backend": name, **out, "bad_samples": 0}


def first_batch(name: str, cfg, workers: int = 0) -> torch.Tensor:
    """One batch of peer ``name`` (for checking it reads the same clips as ours)."""
    it = batches(name, cfg, 1, workers)
    try:
        return next(it)
    finally:
        it.close()


__all__: Sequence[str] = ("PEERS", "batches", "first_batch", "measure_clips_per_s", "spdl_load")
