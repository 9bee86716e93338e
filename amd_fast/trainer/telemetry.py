"""Per-step metrics without per-step host syncs.

Each step hands over its loss terms, grad norm (device tensors), lr, and two host timings: the time
blocked in ``next(loader)`` and the wall time of the whole step. Device values are summed on the device;
every ``log_every`` steps (and at the end) they are read once (one sync), averaged over the window and,
in a distributed run, over the ranks, then written by rank 0 to ``metrics.jsonl`` (one JSON object per
logged step), TensorBoard (optional) and the tqdm bar / log.

``clips_per_s`` counts clips (videos x num_sample) over all ranks per second of wall time;
``data_wait`` is the fraction of that wall time spent blocked in ``next(loader)`` (rank 0's view);
``tflops`` = clips_per_s x the model FLOPs per clip (``trainer.flops``) / 1e12, and ``mfu`` = that over
the devices' dense bf16 peak (all ranks), when the device's peak is known (CUDA), as torchtitan logs it.

Besides the per-step rows (which always have ``step`` and ``loss``), :meth:`event` writes rows with an
``event`` field (``epoch_end``: bad samples by reason; ``run_end``: the run's totals). A resumed run
first drops the rows past the step it resumed from (and TensorBoard purges those steps), so every
curve stays single-valued.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.distributed as dist

from amd_fast.trainer.distributed import DistInfo

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, info: DistInfo, log_dir: Path, *, log_every: int, total_steps: int, start_step: int,
                 clips_per_step: int, tensorboard: bool, progress: bool, flops_per_clip: Optional[float] = None,
                 peak_flops: Optional[float] = None):
        self.info, self.log_every, self.clips_per_step = info, log_every, clips_per_step
        self.flops_per_clip, self.peak_flops = flops_per_clip, peak_flops
        self.total_steps = total_steps
        self._sums: Optional[torch.Tensor] = None
        self._names: Optional[list] = None
        self._n = 0
        self._wait = 0.0
        self._t0 = time.perf_counter()
        self.last: Dict[str, float] = {}
        self.path = Path(log_dir) / "metrics.jsonl"
        self._file = self._tb = self._bar = None
        if info.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            drop_rows_after(self.path, start_step)
            self._file = open(self.path, "a")
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    # purge_step: events at steps > start_step written before a crash are dropped
                    self._tb = SummaryWriter(str(Path(log_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
                except ImportError as e:  # tensorboard is optional
                    log.warning("TensorBoard disabled (%s); install tensorboard or set log.tensorboard=false", e)
            if progress:
                from tqdm import tqdm

                self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                                 dynamic_ncols=True, mininterval=1.0)

    def record(self, step: int, terms: Dict[str, torch.Tensor], grad_norm: torch.Tensor, lr: float,
               data_wait_s: float) -> None:
        """Add one finished step (``step`` = steps done so far, 1-based); logs at every ``log_every`` steps."""
        if self._names is None:
            self._names = list(terms) + ["grad_norm"]
        vals = torch.stack([terms[k].float() for k in self._names[:-1]] + [grad_norm.detach().float()])
        self._sums = vals if self._sums is None else self._sums + vals
        self._n += 1
        self._wait += data_wait_s
        self._lr = lr
        if self._bar is not None:
            self._bar.update(1)
        if step % self.log_every == 0 or step == self.total_steps:
            self.flush(step)

    def flush(self, step: int) -> None:
        if self._n == 0:
            return
        sums = self._sums
        if self.info.distributed:
            sums = sums.clone()
            dist.all_reduce(sums)  # mean over ranks (NCCL on CUDA tensors, Gloo on CPU)
            sums /= self.info.world_size
        values = (sums / self._n).tolist()  # the one host sync of the window
        wall = time.perf_counter() - self._t0
        row = {"step": step, **{k: v for k, v in zip(self._names, values)}, "lr": self._lr,
               "clips_per_s": self.clips_per_step * self._n / max(wall, 1e-9),
               "data_wait": self._wait / max(wall, 1e-9)}
        if self.flops_per_clip:
            row["tflops"] = row["clips_per_s"] * self.flops_per_clip / 1e12
            if self.peak_flops:
                row["mfu"] = row["tflops"] * 1e12 / (self.peak_flops * self.info.world_size)
        row["time"] = time.time()
        self.last = row
        if self.info.is_main:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            if self._tb is not None:
                for k, v in row.items():
                    if k not in ("step", "time"):
                        self._tb.add_scalar(f"train/{k}", v, step)
            msg = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step", "time"))
            if self._bar is not None:
                mfu = f" mfu={100 * row['mfu']:.0f}%" if "mfu" in row else ""
                self._bar.set_postfix_str(f"loss={row['loss']:.4f} clips/s={row['clips_per_s']:.1f}{mfu}", refresh=False)
            log.info("step %d/%d %s", step, self.total_steps, msg)
        self._sums, self._n, self._wait = None, 0, 0.0
        self._t0 = time.perf_counter()

    def event(self, kind: str, step: int, **fields) -> None:
        """A non-step row (rank 0 writes it): ``{"event": kind, "step": step, **fields}``."""
        if self._file is not None:
            self._file.write(json.dumps({"event": kind, "step": step, **fields, "time": time.time()}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrite ``metrics.jsonl`` without the rows of steps after ``step`` (a crashed run logged them, the
    resumed run logs them again). Atomic; returns how many rows were dropped. A torn last line goes too."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        log.info("metrics.jsonl: dropped %d row(s) after step %d (written before the run was interrupted)",
                 dropped, step)
    return dropped
