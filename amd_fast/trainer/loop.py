"""The training step and loop: objective -> backward -> clip -> AdamW step, with checkpoints and telemetry.

- The student is wrapped in DDP (``find_unused_parameters=False``: its one forward uses every parameter);
  the teacher stays outside DDP, frozen, in eval mode.
- bf16 autocast on CUDA (``train.amp``), no loss scaling; optional ``torch.compile`` of the student.
- Masks come from a generator reseeded every step from (seed, rank, step), so a resumed run draws the
  same masks as an uninterrupted one (the loader's own state restores the data order).
- Non-finite loss: a debug checkpoint (``<checkpoint dir>/nonfinite-step-N.pt`` with the batch) is saved
  and :class:`NonFiniteLossError` names the step and the term. On CPU the check runs every step before
  the optimizer step; on CUDA it reads a flag copied asynchronously and is checked one step later (so the
  step never waits on the device), the saved weights being those after the bad step.
- SIGTERM / SIGINT (``checkpoint.save_on_signal``): the current step finishes, every rank agrees to stop
  (a Gloo all-reduce of a host flag), a checkpoint is written and :func:`run` returns ``interrupted=True``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from amd_fast import models, ops
from amd_fast.config import Config
from amd_fast.data import build_loader
from amd_fast.trainer import checkpoint as ckpt
from amd_fast.trainer.distributed import DistInfo, any_rank, gather_to_main, init_distributed, setup_logging, shutdown
from amd_fast.trainer.optim import apply_schedules, build_optimizer, build_schedules
from amd_fast.trainer.telemetry import Telemetry

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the message names the step, the term and the debug checkpoint."""


def mask_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2 ** 63)


class _StopRequest:
    """Records SIGTERM/SIGINT instead of dying mid-step; the loop checks it between steps."""

    def __init__(self, enabled: bool):
        self.signum: Optional[int] = None
        self._old = {}
        if enabled:
            for s in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._old[s] = signal.signal(s, self._handle)
                except ValueError:  # not the main thread (e.g. called from a test thread)
                    pass

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


class _NonFiniteGuard:
    """Finds non-finite loss terms without a per-step host sync on CUDA (see module doc)."""

    def __init__(self, device: torch.device, on_bad):
        self.sync_now = device.type != "cuda"
        self.on_bad = on_bad
        self.pending = None

    def watch(self, step: int, terms: Dict[str, torch.Tensor], batch) -> None:
        names = list(terms)
        flags = torch.stack([~torch.isfinite(terms[k]) for k in names])
        if self.sync_now:
            self._check(step, names, flags, terms, batch)
            return
        self.check_pending()
        host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (step, names, host, event, terms, batch)

    def check_pending(self) -> None:
        if self.pending is not None:
            step, names, host, event, terms, batch = self.pending
            self.pending = None
            event.synchronize()
            self._check(step, names, host, terms, batch)

    def _check(self, step, names, flags, terms, batch):
        if bool(flags.any()):
            bad = [n for n, f in zip(names, flags.tolist()) if f]
            self.on_bad(step, bad, {k: float(v) for k, v in terms.items()}, batch)


def set_cpu_threads(requested: Optional[int]) -> int:
    """torch intra-op threads for CPU training (see TrainConfig.cpu_threads); returns the count used."""
    if requested is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = requested or max(1, cores - 1)
    torch.set_num_threads(n)
    return n


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.device = info.device
        tc = cfg.train
        if self.device.type == "cpu":
            set_cpu_threads(tc.cpu_threads)
        ops.set_default_impl(None if tc.ops_impl == "auto" else tc.ops_impl)
        self.amp = tc.amp == "bf16" or (tc.amp == "auto" and self.device.type == "cuda")

        data_cfg = cfg.data
        if data_cfg.device == "auto":
            data_cfg = dataclasses.replace(data_cfg, device=str(self.device))
        self.loader = build_loader(data_cfg, info.rank, info.world_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)
        self.global_videos = data_cfg.batch_size * info.world_size
        self.global_clips = self.global_videos * data_cfg.num_sample

        torch.manual_seed(tc.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        self.student = models.build_student(cfg.model).to(self.device)
        self.teacher = models.build_teacher(cfg.model)
        if self.teacher is not None:
            self.teacher = self.teacher.to(self.device).eval().requires_grad_(False)
        forward_module: nn.Module = torch.compile(self.student) if tc.compile else self.student
        if info.distributed:
            forward_module = nn.parallel.DistributedDataParallel(
                forward_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)
        self.objective = models.AMDObjective(forward_module, self.teacher, cfg.mask, cfg.loss, cfg.model)

        self.schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch, self.global_videos)
        self.optimizer = build_optimizer(self.student, cfg.optim, float(self.schedules.lr[0]), self.device)
        self.ckpt_dir = cfg.checkpoint_dir
        self.log_dir = Path(cfg.log.dir)
        self.manager = ckpt.CheckpointManager(self.ckpt_dir, cfg.checkpoint.keep_last, info.is_main)
        self.step, self.epoch = 0, 0
        self.mask_gen = torch.Generator(device=self.device)
        torch.manual_seed(tc.seed + info.rank)  # per-rank stream for anything else random (drop path)

    # ---- checkpoint state -------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        rngs = gather_to_main(ckpt.rng_state(), self.info)  # collective: every rank calls state()
        return {"step": self.step, "epoch": self.epoch, "student": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rngs, "data": self.loader.state_dict(),
                "config": self.cfg.to_dict(), "world_size": self.info.world_size}

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        return self.manager.save(self.state(), self.step, name)

    def restore(self) -> Optional[Path]:
        found = self.manager.resolve(self.cfg.checkpoint.resume)
        if found is None:
            if self.cfg.checkpoint.resume == "auto":
                log.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return None
        path, state = found
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        if state.get("data") is not None:
            self.loader.load_state_dict(state["data"])
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            ckpt.set_rng_state(rngs[self.info.rank])
        elif rngs:
            log.warning("checkpoint was written by %d ranks, this run has %d: RNG states not restored",
                        len(rngs), self.info.world_size)
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
        return path

    # ---- the step ---------------------------------------------------------------------------------
    def _on_nonfinite(self, step: int, bad, values: Dict[str, float], batch) -> None:
        name = f"nonfinite-step-{step:09d}.pt"
        state = {"step": step, "epoch": self.epoch, "student": self.student.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "config": self.cfg.to_dict(),
                 "bad_terms": bad, "terms": values, "batch": {k: v.detach().cpu() for k, v in batch.items()},
                 "mask_seed": mask_seed(self.cfg.train.seed, self.info.rank, step)}
        where = ckpt.atomic_save({"format": ckpt.FORMAT, **state}, self.ckpt_dir / f"rank{self.info.rank}-{name}")
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {', '.join(f'{k}={values[k]}' for k in bad)} (all terms: {values}); "
            f"debug checkpoint with the batch: {where}. Lower optim.lr, check the data, or train in float32")

    def train_step(self, batch: Dict[str, torch.Tensor], guard: _NonFiniteGuard):
        apply_schedules(self.optimizer, self.schedules, self.step)
        self.mask_gen.manual_seed(mask_seed(self.cfg.train.seed, self.info.rank, self.step))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            loss, terms = self.objective(batch["video"], generator=self.mask_gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.clip_grad
        grad_norm = nn.utils.clip_grad_norm_(self.student.parameters(), clip if clip is not None else math.inf)
        guard.watch(self.step, terms, batch)
        self.optimizer.step()
        return terms, grad_norm

    def fit(self) -> Dict[str, Any]:
        cfg, info = self.cfg, self.info
        resumed = self.restore()
        if info.is_main:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / "config.yaml").write_text(cfg.to_yaml())
        scaling = (f"base {cfg.optim.lr:.3g} x {self.global_videos} videos / 256" if cfg.optim.scale_lr
                   else "optim.scale_lr=false")
        log.info("run: %d ranks on %s, %d steps (%d/epoch), global batch %d videos = %d clips (x num_sample %d), "
                 "peak lr %.3g (%s), amp %s, ops %s, logs in %s, checkpoints in %s",
                 info.world_size, self.device, self.total_steps, self.steps_per_epoch, self.global_videos,
                 self.global_clips, cfg.data.num_sample, self.schedules.peak_lr, scaling,
                 "bf16" if self.amp else "off", cfg.train.ops_impl, self.log_dir, self.ckpt_dir)
        telemetry = Telemetry(info, self.log_dir, log_every=cfg.train.log_every, total_steps=self.total_steps,
                              start_step=self.step, clips_per_step=self.global_clips,
                              tensorboard=cfg.log.tensorboard, progress=cfg.log.progress and info.is_main)
        stop = _StopRequest(cfg.checkpoint.save_on_signal)
        guard = _NonFiniteGuard(self.device, self._on_nonfinite)
        interrupted = None
        self.student.train()
        try:
            while self.step < self.total_steps and interrupted is None:
                t0 = time.perf_counter()
                self.loader.set_epoch(self.epoch)
                batches = iter(self.loader)
                epoch_start = time.perf_counter() - t0  # pipeline / worker start-up counts as data wait
                while self.step < self.total_steps:
                    t0 = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    waited, epoch_start = time.perf_counter() - t0 + epoch_start, 0.0
                    terms, grad_norm = self.train_step(batch, guard)
                    self.step += 1
                    telemetry.record(self.step, terms, grad_norm, float(self.schedules.lr[self.step - 1]), waited)
                    if any_rank(stop.signum is not None, info):
                        interrupted = stop.signum or signal.SIGTERM
                        break
                    if self.step % cfg.checkpoint.every_n_steps == 0 and self.step < self.total_steps:
                        guard.check_pending()
                        self.save()
                if interrupted is None and self.step < self.total_steps:
                    self.epoch += 1
            guard.check_pending()
            telemetry.flush(self.step)
            path = self.save()
            if interrupted is not None:
                log.warning("stopped by %s at step %d; checkpoint %s (resume with checkpoint.resume=auto)",
                            signal.Signals(interrupted).name, self.step, path or self.ckpt_dir)
            elif cfg.checkpoint.export_encoder and info.is_main:
                models.export_encoder(self.student, self.ckpt_dir / "encoder.pth")
        finally:
            stop.restore()
            telemetry.close()
        return {"step": self.step, "epoch": self.epoch, "interrupted": interrupted is not None,
                "resumed_from": str(resumed) if resumed else None, "log_dir": str(self.log_dir),
                "checkpoint_dir": str(self.ckpt_dir), "metrics": str(telemetry.path), "last": telemetry.last}


def run(cfg: Config) -> Dict[str, Any]:
    """Train with ``cfg`` in this process (joining the torchrun group when launched by torchrun)."""
    info = init_distributed(cfg.train.device)
    setup_logging(info.rank)
    try:
        return Trainer(cfg, info).fit()
    finally:
        shutdown()
