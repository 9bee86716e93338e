"""Eager loader: a video decoder (PyAV by default) in ``torch.utils.data.DataLoader`` workers.

The default CPU loader and the fallback for codecs DALI cannot decode (H.264 on CPU). Same contract as the
DALI loader: the same per-rank sample order (``shards.epoch_order``), the same clip plan per position
(``sampling.plan_clip``: frame indices, crop boxes, flips), an antialiased bilinear resize to uint8, and the
same normalization, on the model's device, after the uint8 clip crossed the process boundary (4x less IPC
than float). ``data.eager_decoder`` picks the decoder (``decoders.py``: pyav, torchcodec, decord), all
seeking to the keyframe before the clip.

Where the CPU goes (issue 17): with PyAV each wanted frame is cropped, scaled and converted to RGB in one
FFmpeg filter-chain pass while still YUV (``decoders.CropChains``), the ``num_sample`` crops of a sample
share its decode, and a worker writes every crop straight into a shared-memory batch buffer
(:meth:`ClipDataset.__getitems__`): on the CPU one of the main process's :class:`~.batch_ring.BatchRing`, handed
out as the batch without a copy (the main process's CPU per clip fell from ~1.1 ms to under 0.1 ms); on CUDA
the DataLoader's pin-memory thread copies it to pinned memory.

Samples are read by random access at the byte offsets of the DALI ``.idx`` files rather than by
streaming the tars with ``webdataset``: it gives the identical per-rank split as DALI, a full
per-epoch permutation of the rank's samples from ``(seed, epoch, rank)``, and an exact resume that
skips consumed batches without decoding them. Worker split: the DataLoader hands whole batches to
workers; every draw of a position comes from ``(seed, epoch, rank, position)``, so batches do not
depend on the number of workers. A video that fails to decode is replaced by the next sample in
stored order and counted (see ClipDataset), so batch shapes stay static.
"""
from __future__ import annotations

import concurrent.futures
import faulthandler
import gc
import logging
import os
import signal
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .batch_ring import BatchRing
from .config import DataConfig
from .decoders import DecodeError, get_clip_decoder
from .remote import is_url
from .sampling import normalize_clips, plan_clip, sample_rng
from .shards import Sample, ShardError, ShardSet, read_sample, read_samples
from .stream import BadSampleCounter, BadSampleError, BrokenShardsError, LoaderStalledError, LoaderStateMixin

log = logging.getLogger(__name__)


class ClipDataset(torch.utils.data.Dataset):
    """Batched map-style: items ``(epoch, position, sample_index)`` -> one batch dict (see :meth:`__getitems__`).

    A video that fails to decode (or whose members are cut off) is replaced by the next sample in
    stored order, as VideoMAE retries another sample, so every batch has ``batch_size`` videos (static
    shapes for torch.compile, equal step counts across DDP ranks); each failure is reported in ``bad``
    for the main process to count. Only when ``MAX_REPLACEMENTS`` samples in a row fail is the batch
    marked ``broken``: the main process then stops with :class:`BrokenShardsError`."""

    MAX_REPLACEMENTS = 32

    def __init__(self, cfg: DataConfig, samples: List[Sample], rank: int, seed: int, device: str):
        self.cfg, self.samples, self.rank, self.seed = cfg, samples, rank, seed
        self.device = device  # where torchcodec decodes when the loader runs in the main process
        self._decode = None
        self._buffer_device = "cpu"
        # batches delivered on the CPU: the main process's BatchRing (set before the workers fork); ``pinned``: the
        # DataLoader's pin-memory thread copies each batch out (CUDA)
        self.ring: Optional[BatchRing] = None
        self.pinned = False
        # per process, filled after the fork: the worker's own ring of batch buffers (when ``pinned``), its
        # read-ahead thread and read
        self._pinned_ring: List[torch.Tensor] = []
        self._slot = 0
        self._reader: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pending: dict = {}

    def __len__(self):
        return len(self.samples)

    def _decoder(self):
        if self._decode is None:  # per process: workers build their own (decoders do not pickle)
            threads = 1 if self.cfg.num_workers > 0 else 0  # in workers, the workers are the parallelism
            on_gpu = (self.cfg.num_workers == 0 and self.device.startswith("cuda")
                      and self.cfg.eager_decoder == "torchcodec")
            self._buffer_device = self.device if on_gpu else "cpu"
            self._decode = get_clip_decoder(self.cfg.eager_decoder, threads=threads,
                                            device=self.device if on_gpu else "cpu")
        return self._decode

    def _batch_buffer(self, n: int) -> Tuple[torch.Tensor, Optional[int]]:
        """(n * num_sample, T, S, S, 3) uint8 for the batch, and its slot in the main process's :class:`BatchRing`
        (None when it is not one of those). The decoders write the crops straight into it: no collation copy, no
        copy into shared memory when it is sent, no fresh shared memory per batch (measured: creating and first
        touching 38 MB of it cost ~2 ms of CPU per clip, a fifth of the loader's).

        - Batches delivered on the CPU: a free buffer of the ring (the main process hands it out without a copy),
          or, when the consumer holds them all, a fresh shared-memory buffer.
        - Batches the pin-memory thread copies (CUDA): one of a ring of ``prefetch + 1`` buffers this worker
          reuses. Safe because that thread copies every batch out before the next is asked for, and the
          DataLoader deals tasks round-robin and delivers them in order, so when a worker starts a task, its task
          ``prefetch + 1`` tasks back has been copied out."""
        cfg = self.cfg
        ns = cfg.num_sample
        shape = (cfg.batch_size * ns, cfg.num_frames, cfg.input_size, cfg.input_size, 3)
        if self._buffer_device != "cpu":
            return torch.empty((n * ns,) + shape[1:], dtype=torch.uint8, device=self._buffer_device), None
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            return torch.empty((n * ns,) + shape[1:], dtype=torch.uint8), None
        if self.ring is not None:
            taken = self.ring.take(worker.id)
            if taken is not None:
                return taken[1][:n * ns], taken[0]
        if not self.pinned:  # nobody copies it out and no ring here: a buffer of its own
            return torch.empty((n * ns,) + shape[1:], dtype=torch.uint8).share_memory_(), None
        ring, slot = self._pinned_ring, self._slot
        self._slot += 1
        if len(ring) < cfg.prefetch + 1:
            storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(int(np.prod(shape)))
            ring.append(torch.empty(0, dtype=torch.uint8).new(storage).view(shape))
            return ring[-1][:n * ns], None
        return ring[slot % len(ring)][:n * ns], None

    def __getitems__(self, items: Sequence[Tuple[int, int, int]]) -> dict:
        """One batch: ``video`` (b*num_sample, T, S, S, 3) uint8 (video-major), or ``slot`` (worker, slot, rows): the
        :class:`BatchRing` buffer it was written into; ``label``, ``index`` (the sample read at each position after
        replacements), ``bad`` [(where, why)], or ``broken``.

        The batch's samples are read first, in one :func:`~amd_fast.data.shards.read_samples` call (on object
        storage its ranged reads overlap, and a trailing :class:`ReadAhead` item names the batches this worker
        gets next, whose reads then run while this one decodes); replacements, rare, are read one by one."""
        ahead = None
        if items and isinstance(items[-1], ReadAhead):
            items, ahead = items[:-1], items[-1].batches
        decode, ns = self._decoder(), self.cfg.num_sample
        video, slot = self._batch_buffer(len(items))
        labels, indices, bad = [], [], []
        first = self._read_batch(items, ahead)
        for b, ((epoch, pos, i), got) in enumerate(zip(items, first)):
            out = video[b * ns:(b + 1) * ns]
            for attempt in range(min(self.MAX_REPLACEMENTS, len(self.samples))):
                j = (i + attempt) % len(self.samples)
                s = self.samples[j]
                try:
                    if attempt > 0:
                        got = read_sample(s)
                    elif isinstance(got, Exception):
                        raise got
                    info, data = got
                    plan = plan_clip(self.cfg, info.frames, info.height, info.width,
                                     sample_rng(self.seed, epoch, self.rank, pos))
                    decode(data, plan, self.cfg.input_size, out, (info.height, info.width))
                    labels.append(info.label)
                    indices.append(j)
                    break
                except (DecodeError, OSError, struct.error, ShardError) as e:
                    bad.append((f"{s.tar}:{s.key}", str(e)))
                    if self.cfg.on_bad_sample == "error":
                        return self._broken(bad, slot)
            else:
                return self._broken(bad, slot)
        batch = {"label": torch.tensor(labels, dtype=torch.int64), "index": torch.tensor(indices, dtype=torch.int64),
                 "bad": bad}
        if slot is None:
            batch["video"] = video
        else:
            batch["slot"] = (torch.utils.data.get_worker_info().id, slot, video.shape[0])
        return batch

    def _broken(self, bad: list, slot: Optional[int]) -> dict:
        if slot is not None:  # never sent: the buffer is free again
            self.ring.untake(torch.utils.data.get_worker_info().id, slot)
        return {"bad": bad, "broken": True}

    def __getitem__(self, item):
        return self.__getitems__([item])

    def _read_batch(self, items: Sequence[Tuple[int, int, int]], ahead: Optional[Sequence] = None) -> list:
        """The batch's samples (from the read started earlier, when there was one); with ``ahead`` (the batches this
        worker gets next), starts reading those not started yet in this process's read-ahead thread."""
        pending = self._pending
        future = pending.pop(tuple(items), None)
        if ahead:
            if self._reader is None:  # per process (after the fork), one thread
                self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
            for key in [k for k in pending if k not in ahead]:  # stale (the epoch was cut short): not kept
                del pending[key]
            for batch in ahead:  # in order: the reading thread takes them one after the other
                if batch not in pending:
                    pending[batch] = self._reader.submit(read_samples, [self.samples[i] for _, _, i in batch],
                                                         concurrency=self.cfg.remote_concurrency)
        if future is not None:
            return future.result()
        return read_samples([self.samples[i] for _, _, i in items], concurrency=self.cfg.remote_concurrency)


def _batch_as_is(batch: dict) -> dict:
    """The DataLoader's collate: :meth:`ClipDataset.__getitems__` already built the batch in place."""
    return batch


def _worker_init(_):
    # Objects inherited from the parent are never collected here: a parent's garbage whose finalizer waits for
    # the parent's threads (a DALI pipeline's __del__ joins threads that a fork does not copy) would block this
    # worker with the GIL held, and the main process with it (it fetches each batch's shared-memory handle from
    # this worker's resource-sharer thread, with no timeout). The parent collects its garbage before forking
    # (EagerLoader._data_loader); this covers what became garbage in between. It also spares the
    # copy-on-write page copies a collection's pass over inherited objects would cause.
    gc.freeze()
    torch.set_num_threads(1)  # workers are the parallelism; avoid oversubscribing the cores
    # the watchdog (EagerLoader._batches) asks a stalled worker for its Python stacks, printed to its stderr
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _stop_stalled_workers(loader: torch.utils.data.DataLoader) -> List[int]:
    """Have each live worker of ``loader`` print its Python stacks (SIGUSR1, see ``_worker_init``), then stop it
    (SIGTERM: a stalled worker would not answer the DataLoader's polite shutdown); their pids."""
    workers = [w for w in getattr(getattr(loader, "_iterator", None), "_workers", None) or [] if w.is_alive()]
    for w in workers:
        try:
            os.kill(w.pid, signal.SIGUSR1)
        except OSError:
            pass
    if workers:
        time.sleep(0.5)  # let them write
    for w in workers:
        w.terminate()
    return [w.pid for w in workers]


def _is_timeout(e: RuntimeError) -> bool:
    return str(e).startswith("DataLoader timed out")  # torch's message when no batch came within ``timeout``


def _stop_workers(loader: torch.utils.data.DataLoader) -> None:
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()  # what the iterator's own __del__ does
    loader._iterator = None


# Batches whose reads a worker keeps in flight beyond the one it decodes (object storage). One batch's decode
# (~0.1 s) is about one request's latency plus the time the reading thread waits for the GIL while PyAV decodes,
# so with one the reads often came in late (1 worker: 0.88 of local disk's clips/s at +50 ms per request).
READ_AHEAD_BATCHES = 2


@dataclass(frozen=True)
class ReadAhead:
    """Appended to a batch's items: the items of the next READ_AHEAD_BATCHES batches the same worker gets (the
    DataLoader deals batches to its workers round-robin)."""

    batches: Tuple[Tuple[Tuple[int, int, int], ...], ...]


class _EpochBatches:
    """The DataLoader's batch sampler: the batches of the epoch being read, replaced before each epoch, so one
    DataLoader (and its worker processes) serves every epoch. With ``read_ahead_workers`` (object-storage
    shards), each batch carries a :class:`ReadAhead` of the batches that many places later."""

    def __init__(self):
        self.batches: List[List[Tuple[int, int, int]]] = []
        self.next_batches: List[List[Tuple[int, int, int]]] = []  # the next epoch's first batches
        self.read_ahead_workers = 0

    def __iter__(self):
        w, b = self.read_ahead_workers, self.batches
        if not w:
            return iter(b)
        # worker r gets batches r, r + w, ... of this epoch, then (the DataLoader deals each epoch round-robin from
        # worker 0 again) batches r, r + w, ... of the next: its next batches follow in that lane
        lanes = [[tuple(x) for x in b[r::w] + self.next_batches[r::w]] for r in range(w)]

        def ahead(k: int):
            lane, p = lanes[k % w], k // w
            return tuple(lane[p + 1:p + 1 + READ_AHEAD_BATCHES])
        return iter([batch + [ReadAhead(a)] if (a := ahead(k)) else batch for k, batch in enumerate(b)])

    def __len__(self) -> int:
        return len(self.batches)


class EagerLoader(LoaderStateMixin):
    """Iterable of ``{'video', 'label'}`` batches from a DataLoader (see module doc)."""

    backend = "eager"

    def __init__(self, cfg: DataConfig, shards: ShardSet, rank: int, world_size: int, device: str,
                 bad: BadSampleCounter):
        self._init_state(cfg, shards, rank, world_size, device, bad)
        get_clip_decoder(cfg.eager_decoder)  # a missing decoder package is an error now, not in a worker
        self._sampler = _EpochBatches()
        # batches delivered on the CPU come in the buffers of a BatchRing made before the workers fork (one per
        # loader: kept across epochs and worker restarts); on CUDA the pin-memory thread copies them out instead
        self._pinned = self.device.type == "cuda"
        self._ring: Optional[BatchRing] = None
        if cfg.num_workers > 0 and self.samples and is_url(self.samples[0].tar):
            self._sampler.read_ahead_workers = cfg.num_workers
        self._loader, self._loader_seed = None, None

    def _data_loader(self) -> torch.utils.data.DataLoader:
        """One DataLoader for every epoch, its workers kept between epochs (``persistent_workers``): no process
        start-up, decoder set-up or object-storage client per epoch. Rebuilt only if a restored state brought
        another seed (the workers' dataset holds it)."""
        st, cfg = self.state, self.cfg
        if self._loader is None or self._loader_seed != st.seed:
            if cfg.num_workers > 0:
                gc.collect()  # the workers fork at the first iteration: leave them no garbage (see _worker_init)
            on_gpu_decode = cfg.eager_decoder == "torchcodec" and cfg.num_workers == 0 and self.device.type == "cuda"
            dataset = ClipDataset(cfg, self.samples, self.rank, st.seed, str(self.device))
            dataset.pinned = self._pinned and not on_gpu_decode
            if cfg.num_workers > 0 and not self._pinned and BatchRing.usable():
                if self._ring is None:
                    # per worker: prefetch batches queued + the one it writes + the consumer's current and last one
                    self._ring = BatchRing(cfg.num_workers, cfg.prefetch + 3,
                                           (cfg.batch_size * cfg.num_sample, cfg.num_frames, cfg.input_size,
                                            cfg.input_size, 3))
                self._ring.reset()  # new workers: what the old ones had taken and not sent is free
                dataset.ring = self._ring
            self._loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=self._sampler,
                num_workers=cfg.num_workers, collate_fn=_batch_as_is,
                pin_memory=dataset.pinned,
                prefetch_factor=cfg.prefetch if cfg.num_workers > 0 else None,
                persistent_workers=cfg.num_workers > 0,
                worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
                timeout=cfg.stall_timeout() if cfg.num_workers > 0 else 0,
                # Its own generator: each iter() draws a worker base seed, which would otherwise come from torch's
                # global RNG and shift the model's random draws (drop path) after a resume. Nothing here uses it:
                # every random choice comes from (seed, epoch, rank, position).
                generator=torch.Generator().manual_seed(cfg.seed))
            self._loader_seed = st.seed
            # persistent workers outlive an iteration: stop them when this loader goes (or at interpreter exit,
            # where DataLoader's own clean-up may not run and their queues' semaphores would leak)
            weakref.finalize(self, _stop_workers, self._loader)
        return self._loader

    def close(self) -> None:
        """Stop the worker processes now (they are kept between epochs)."""
        if self._loader is not None:
            _stop_workers(self._loader)
            self._loader = None

    def _batches(self, epoch: int) -> Iterator[dict]:
        """The DataLoader's batches of ``epoch`` from batch ``state.batch`` on, under a watchdog: when the workers
        deliver nothing for ``data.stall_timeout_s`` (a decoder or a read that hangs, a worker deadlocked), their
        stacks are printed, they are replaced, and reading resumes at the batch that stalled. Batches depend only
        on (seed, epoch, rank, position), so the restarted workers give the same batches, each once. A second
        stall at the same batch is no accident: :class:`LoaderStalledError` names its samples."""
        st, cfg = self.state, self.cfg
        stalled_at = None
        while True:
            loader = self._data_loader()
            self._sampler.batches = [[(epoch, pos, int(i)) for pos, i in batch]
                                     for batch in self.epoch_batches(epoch, st.batch)]
            if self._sampler.read_ahead_workers:  # the next epoch's order is known already: read ahead across the seam
                seam = self.epoch_batches(epoch + 1)[:READ_AHEAD_BATCHES * cfg.num_workers]
                self._sampler.next_batches = [[(epoch + 1, pos, int(i)) for pos, i in batch] for batch in seam]
            try:
                for batch in loader:
                    yield batch
                return
            except RuntimeError as e:
                if not _is_timeout(e):
                    raise
            pids = _stop_stalled_workers(loader)
            self.close()
            where = f"batch {st.batch} of epoch {epoch}"
            if stalled_at == st.batch:
                names = ", ".join(f"{s.tar}:{s.key}" for s in (self.samples[i] for _, _, i in self._sampler.batches[0]))
                raise LoaderStalledError(
                    f"the eager loader stalled twice at {where}: its workers gave no batch for "
                    f"{cfg.stall_timeout():g} s (stacks printed above); one of its samples may hang the decoder "
                    f"({names}): check the shards with `python -m amd_fast.shard --verify --out <shard folder>`, "
                    "or raise data.stall_timeout_s if reading is this slow")
            stalled_at = st.batch
            log.warning("eager loader: worker(s) %s gave no batch for %g s (their stacks are printed above); "
                        "replacing them and reading on from %s", ", ".join(map(str, pids)) or "-",
                        cfg.stall_timeout(), where)

    def __iter__(self) -> Iterator[dict]:
        st, cfg = self.state, self.cfg
        epoch = st.epoch
        for batch in self._batches(epoch):
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
            if "slot" in batch:  # written into the ring's buffer: handed out as it is
                video = self._ring.receive(*batch["slot"])
            else:
                video = batch["video"]
            video = video.to(self.device, non_blocking=True).permute(0, 4, 1, 2, 3)  # channels-last view
            video = normalize_clips(video, self.out_dtype)
            yield {"video": video, "label": batch["label"].to(self.device, non_blocking=True)
                   .repeat_interleave(cfg.num_sample), "index": batch["index"].repeat_interleave(cfg.num_sample)}
        st.epoch, st.batch = epoch + 1, 0
