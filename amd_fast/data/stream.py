"""Position in the data stream (what a checkpoint saves), and the bad-sample counter.

Both loaders rebuild an epoch's sample order from ``(seed, epoch, rank)`` alone, so a resumed
run that restores ``{epoch, batch, seed}`` continues with exactly the batches it had not yet
consumed (see each loader for how it skips the consumed ones).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Dict

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


class BadSampleCounter:
    """Counts skipped samples by reason and warns (rate-limited) on the first ones."""

    WARN_FIRST = 10

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.total = 0

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.total += n
        if self.total <= self.WARN_FIRST:
            log.warning("skipped %d sample(s): %s: %s (%d skipped so far)", n, reason, where, self.total)
        elif self.total == self.WARN_FIRST + 1:
            log.warning("more bad samples; further ones are only counted (see loader.bad_samples)")
