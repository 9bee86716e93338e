"""Video clip loaders for AMD/VideoMAE pretraining: DALI (GPU or CPU decode) and eager (PyAV).

``build_loader(cfg, rank, world_size)`` returns an iterable of
``{'video': (B*num_sample, 3, T, S, S) float on cfg.device (ImageNet-normalized), 'label': (B*num_sample,) int64,
'index': (B*num_sample,) int64 on the CPU (the sample's position in the split: evaluation counts each once)}``
(the video with channels-last-3d strides, i.e. T, H, W, C in memory: the decoders' own layout, and the one
in which the models' Conv3d patch embedding yields token-major ``(B, N, C)`` output without a copy)
with ``len()`` (batches per epoch, the same on every rank),
``set_epoch(e)``, ``state_dict()`` / ``load_state_dict()`` ({epoch, batch, seed, backend}),
``backend`` ('dali' | 'eager') and ``bad_samples`` (counts by reason).

Usage::

    loader = build_loader(DataConfig(shards="shards/k400", batch_size=8), rank, world_size)
    loader.load_state_dict(ckpt["data"])          # optional: resume mid-epoch
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)                    # no-op for the epoch a restored state is in
        for batch in loader: ...
        # checkpoint: {"data": loader.state_dict(), ...}

Each ``iter(loader)`` is one epoch; the state counts the batches handed out, so save it after the
step that used the last batch. Resume is deterministic: the epoch's order is rebuilt from
(seed, epoch, rank); the eager loader skips the consumed batches without decoding them, the DALI
loader reruns and drops them (one pass of decode time for the consumed part of the epoch).
``DataConfig(train=False)`` is the eval/probe mode: middle clip, centre crop, stored order.
Backends: ``backend='auto'`` takes DALI when its decoder on this device takes the shards' codec
(CPU: vp9/vp8/mjpeg; CUDA 'mixed': also h264/hevc/mpeg4), else eager; the reason is logged.
"""
from __future__ import annotations

import logging
from typing import Union

from amd_fast.errors import InputError

from .backend import CodecError, choose_backend
from .config import DataConfig, warn_oversubscription
from .shards import ShardError, open_shards
from .stream import BadSampleCounter

log = logging.getLogger(__name__)

__all__ = ["DataConfig", "build_loader", "CodecError", "ShardError"]


def build_loader(cfg: Union[DataConfig, dict, None] = None, rank: int = 0, world_size: int = 1, **kwargs):
    """The loader ``cfg.backend`` asks for ('auto': DALI when it can decode the shards' codec on this
    device, else eager; the choice and its reason are logged). Raises ShardError for missing /
    truncated shards and CodecError when ``backend='dali'`` cannot decode the codec."""
    if cfg is None:
        cfg = DataConfig.from_kwargs(**kwargs)
    elif isinstance(cfg, dict):
        cfg = DataConfig.from_kwargs(**{**cfg, **kwargs})
    elif kwargs:
        raise TypeError("pass either a DataConfig or keyword arguments, not both")
    cfg.validate()
    device = cfg.resolved_device()
    cfg.configure_remote()  # URL shards: concurrency, timeouts, retries, cache (inherited by forked workers)
    shards = open_shards(cfg.shards, cfg.split)

    bad = BadSampleCounter()
    if shards.incomplete:
        if cfg.on_bad_sample == "error":
            raise ShardError(f"{len(shards.incomplete)} sample(s) lack their video or label, e.g. "
                             f"{shards.incomplete[0]}; rebuild the shards or set data.on_bad_sample=skip")
        bad.add("sample missing its video or label", "; ".join(shards.incomplete[:3]), n=len(shards.incomplete))
    if shards.num_samples == 0:
        raise ShardError(f"no complete sample in {cfg.shards} (split {cfg.split!r})")

    backend = choose_backend(cfg, shards, device)
    if backend == "dali":
        from .dali_pipeline import DaliLoader

        loader = DaliLoader(cfg, shards, rank, world_size, device, bad)
    else:
        from .eager_loader import EagerLoader

        loader = EagerLoader(cfg, shards, rank, world_size, device, bad)
    if rank == 0:
        warn_oversubscription(cfg, backend, getattr(loader, "num_pipelines", 1))
    if len(loader) == 0:
        raise InputError(f"split {cfg.split!r} has {shards.num_samples} samples, so rank {rank} of {world_size} gets "
                         f"{loader.num_rank_samples}, fewer than data.batch_size={cfg.batch_size}: lower "
                         "data.batch_size, use fewer ranks, or set data.drop_last=false")
    if rank == 0:
        log.info("data: %s loader, %d samples in %d shards (%s split), %d batches/epoch/rank of %d videos x %d clips",
                 backend, shards.num_samples, len(shards.tars), cfg.split, len(loader), cfg.batch_size, cfg.num_sample)
    return loader
