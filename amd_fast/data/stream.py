"""Position in the data stream (what a checkpoint saves), the bad-sample counter, the shared loader base.

Both loaders rebuild an epoch's sample order from ``(seed, epoch, rank)`` alone and plan each
position's clip from ``(seed, epoch, rank, position)``, so a resumed run that restores
``{epoch, batch, seed}`` continues with exactly the batches it had not yet consumed, without
decoding the consumed ones.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from amd_fast.errors import RunFailed

from .shards import epoch_order, rank_batches

log = logging.getLogger(__name__)


@dataclass
class StreamState:
    epoch: int = 0
    batch: int = 0  # batches of this epoch already handed out (or lost to a bad video)
    seed: int = 0

    def state_dict(self) -> Dict[str, int]:
        return asdict(self)

    def load_state_dict(self, d: Dict[str, int], expected_seed: int, backend: str) -> None:
        missing = {"epoch", "batch", "seed"} - set(d)
        if missing:
            raise KeyError(f"loader state lacks {sorted(missing)}; expected keys epoch, batch, seed")
        if d.get("backend", backend) != backend:
            log.warning("loader state was saved by the %s loader, resuming with %s: same epoch and batch position, "
                        "but the two backends order and augment samples differently", d["backend"], backend)
        if int(d["seed"]) != expected_seed:
            log.warning("loader state was saved with seed %s, config has %s: continuing with the saved seed",
                        d["seed"], expected_seed)
        self.epoch, self.batch, self.seed = int(d["epoch"]), int(d["batch"]), int(d["seed"])


class BrokenShardsError(RunFailed):
    """So many samples in a row failed that the shards themselves must be broken (message names one)."""


class LoaderStalledError(RunFailed):
    """The loader's workers stalled twice at the same batch (message names its samples and the switch)."""


class BadSampleError(RunFailed):
    """A sample failed with ``data.on_bad_sample=error`` (message names the sample and the switch)."""


class BadSampleCounter:
    """Counts skipped samples by reason, in total and since :meth:`take_epoch` was last called.

    The first ``WARN_FIRST`` are logged one by one (which sample, why); after that they are only
    counted, and whoever drives the epochs (the trainer) logs the per-epoch totals by reason.
    """

    WARN_FIRST = 10

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.epoch_counts: Dict[str, int] = {}
        self.total = 0

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.epoch_counts[reason] = self.epoch_counts.get(reason, 0) + n
        self.total += n
        if self.total <= self.WARN_FIRST:
            log.warning("skipped %d sample(s): %s: %s (%d skipped so far)", n, reason, where, self.total)
        elif self.total == self.WARN_FIRST + 1:
            log.warning("more bad samples: from now on they are only counted; totals by reason are logged at "
                        "the end of each epoch (and in metrics.jsonl)")

    def take_epoch(self) -> Dict[str, int]:
        """The counts by reason since the last call, and reset them."""
        out, self.epoch_counts = self.epoch_counts, {}
        return out


class LoaderStateMixin:
    """What both backends share: the per-rank sample order and its batches, ``len()``, ``set_epoch``, the
    checkpointable stream state and the bad-sample counts (subclasses call :meth:`_init_state`)."""

    backend = "?"

    def _init_state(self, cfg, shards, rank: int, world_size: int, device: str, bad: BadSampleCounter) -> None:
        import torch

        self.cfg, self.shards, self.samples = cfg, shards, shards.samples
        self.rank, self.world_size, self.device, self.bad = rank, world_size, torch.device(device), bad
        self.state = StreamState(seed=cfg.seed)
        self.num_rank_samples, self._len = rank_batches(len(self.samples), world_size, cfg.batch_size, cfg.drop_last)
        self.out_dtype = getattr(torch, cfg.dtype)

    def __len__(self) -> int:
        return self._len

    @property
    def bad_samples(self) -> dict:
        """Skipped samples so far, by reason."""
        return dict(self.bad.counts)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices (into all samples) this rank reads in ``epoch``, in reading order (``shards.epoch_order``)."""
        return epoch_order(len(self.samples), self.rank, self.world_size, epoch, self.state.seed,
                           self.cfg.train and self.cfg.shuffle, self.num_rank_samples)

    def epoch_batches(self, epoch: int, first: int = 0) -> List[List[Tuple[int, int]]]:
        """Batches ``first..len-1`` of ``epoch``, each a list of (position in the epoch, sample index)."""
        order, b = self.epoch_order(epoch), self.cfg.batch_size
        return [[(p, int(order[p])) for p in range(k * b, min((k + 1) * b, len(order)))]
                for k in range(first, self._len)]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless that epoch is the one a restored state is in."""
        if epoch != self.state.epoch:
            self.state.epoch, self.state.batch = int(epoch), 0

    def close(self) -> None:
        """Release what the loader keeps between epochs (the eager loader's worker processes); a later
        iteration starts it again."""

    def state_dict(self):
        return {**self.state.state_dict(), "backend": self.backend}

    def load_state_dict(self, d) -> None:
        self.state.load_state_dict(d, self.cfg.seed, self.backend)
