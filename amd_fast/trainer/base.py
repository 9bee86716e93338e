"""The training loop every amd_fast trainer shares: resume, epochs, the optimizer step, checkpoints, telemetry.

A task subclasses :class:`TrainerBase` and fills in its hooks (``build_models``, ``compute_loss``, and
optionally ``param_groups``, ``on_epoch_end``, ``on_fit_end``, ``flops_per_clip``); everything else is
here once: AMD pretraining (``trainer.loop.Trainer``) and fine-tuning (``finetune.trainer``) differ only
in those hooks.

Public API::

    trainer = SomeTrainer(cfg, info)      # loader, models, optimizer, schedules
    result = trainer.step(batch)          # one optimizer step: StepResult(terms, grad_norm, lr)
    fit = trainer.fit()                   # resume, epochs, checkpoints, telemetry: FitResult

- The trainable model is wrapped in DDP (``find_unused_parameters=False``, ``broadcast_buffers=False``:
  its only buffers are constant tables) and optionally ``torch.compile``d.
- bf16 autocast on CUDA (``train.amp``), no loss scaling.
- Steps are numbered from 1 everywhere (``global_step`` = steps done, ``metrics.jsonl``'s ``step``,
  checkpoint names, error messages).
- Non-finite loss: a debug checkpoint (``<checkpoint dir>/rank<R>-nonfinite-step-N.pt`` with the batch)
  is saved and :class:`NonFiniteLossError` names the step and the term. On CPU the check runs every
  step before the optimizer step; on CUDA it reads a flag copied asynchronously and is checked one step
  later (so the step never waits on the device), the saved weights being those after the bad step.
- SIGTERM / SIGINT (``checkpoint.save_on_signal``): every rank learns of it through an asynchronous vote
  (``distributed.StopVote``), at most two steps after the signal; then a checkpoint is written and
  :meth:`TrainerBase.fit` returns ``interrupted=True``. A second Ctrl-C stops at once.
- A collective that does not complete within ``train.dist_timeout_s`` (a stalled or dead rank) ends the
  run with :class:`~amd_fast.trainer.distributed.CollectiveTimeout` (exit 1) instead of hanging.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from amd_fast import ops
from amd_fast.config import config_diff
from amd_fast.cores import usable_cores
from amd_fast.data import build_loader
from amd_fast.errors import RunFailed
from amd_fast.serialization import atomic_save
from amd_fast.trainer import checkpoint as ckpt
from amd_fast.trainer import run_folder
from amd_fast.trainer.distributed import DistInfo, StopVote, gather_to_main, is_timeout, timeout_error
from amd_fast.trainer.flops import peak_flops
from amd_fast.trainer.optim import apply_schedules, build_optimizer, build_schedules, param_groups
from amd_fast.trainer.telemetry import Telemetry

log = logging.getLogger(__name__)


class NonFiniteLossError(RunFailed):
    """The loss became NaN/inf; the message names the step, the term and the debug checkpoint."""


@dataclass
class StepResult:
    """What one optimizer step produced (device tensors: reading them is a host sync, done at log time)."""

    terms: Dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    lr: float


@dataclass
class FitResult:
    step: int  # steps done (1-based numbering: the last step's number)
    epoch: int
    interrupted: bool
    resumed_from: Optional[str]
    log_dir: str
    checkpoint_dir: str
    metrics: str  # metrics.jsonl
    last: Dict[str, float] = field(default_factory=dict)  # the last logged metrics row
    bad_samples: Dict[str, int] = field(default_factory=dict)  # skipped samples by reason, this process's run
    eval: Optional[Any] = None  # the final evaluation, for tasks that have one (fine-tuning: EvalResult)
    start_step: int = 0  # where this process started (the resumed step, else 0)
    clips_per_step: int = 0  # over all ranks (videos x num_sample x world size)
    train_s: float = 0.0  # wall time of this process's training steps, data waits included (not the final eval)

    @property
    def clips_per_s(self) -> Optional[float]:
        """Clips trained per second of this process's training wall time (None: no step ran here)."""
        steps = self.step - self.start_step
        return steps * self.clips_per_step / self.train_s if steps > 0 and self.train_s > 0 else None


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
        self._old = {}


class NonFiniteGuard:
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
    cores = usable_cores()
    n = requested or max(1, cores - 1)
    torch.set_num_threads(n)
    return n


class TrainerBase:
    """The shared loop (module doc). Subclasses set ``model`` / ``forward_module`` in :meth:`build_models`
    and return ``(loss, terms)`` from :meth:`compute_loss`; ``terms`` are detached 0-dim tensors, ``loss``
    among them."""

    MODEL_KEY = "model"  # the checkpoint key of the trained weights
    TASK = ""  # what run.json records ("pretrain", "finetune"): a folder holds runs of one task only
    # Resuming with one of these changed would silently train a different model or on different clips.
    RESUME_GUARDED = ("model.", "data.num_frames", "data.input_size", "data.sampling_rate")
    # Changing these between runs is harmless (paths that moved, output options, the resume switch itself).
    RESUME_FREE = ("model.use_checkpoint", "checkpoint.resume", "checkpoint.dir", "log.", "data.shards",
                   "data.num_workers", "data.dali_threads", "data.dali_pipelines", "data.prefetch", "data.device",
                   "checkpoint.overwrite",
                   "train.device", "train.log_every", "train.cpu_threads", "train.dist_timeout_s")

    def __init__(self, cfg, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.device = info.device
        tc = cfg.train
        if self.device.type == "cpu":
            set_cpu_threads(tc.cpu_threads)
        self.amp = tc.bf16_autocast(self.device)
        self.ops_impl = ops.configured_impl(tc.ops_impl)
        self.ckpt_dir = cfg.checkpoint_dir
        self.log_dir = Path(cfg.log.dir)
        # Before anything is built or written: may this run use the folders? (reads only; rank 0 writes in fit)
        self.identity = run_folder.claim(self.log_dir, self.ckpt_dir, self.TASK, cfg.checkpoint.resume,
                                         cfg.checkpoint.overwrite)

        data_cfg = self.data_config()
        self.loader = build_loader(data_cfg, info.rank, info.world_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)
        self.global_videos = data_cfg.batch_size * info.world_size
        self.global_clips = self.global_videos * data_cfg.num_sample

        torch.manual_seed(tc.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        self.model: nn.Module = self.build_models()
        self.forward_module = self.wrap(self.model)

        self.schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch, self.global_videos)
        self.optimizer = build_optimizer(self.param_groups(), cfg.optim, float(self.schedules.lr[0]), self.device)
        self.manager = ckpt.CheckpointManager(self.ckpt_dir, cfg.checkpoint.keep_last, info.is_main, self.MODEL_KEY)
        self.global_step, self.epoch = 0, 0
        self.guard = NonFiniteGuard(self.device, self._on_nonfinite)
        torch.manual_seed(tc.seed + info.rank)  # per-rank stream for anything else random (drop path)

    # ---- hooks ------------------------------------------------------------------------------------
    def data_config(self):
        """The training loader's DataConfig: ``cfg.data`` on this rank's device."""
        d = self.cfg.data
        return dataclasses.replace(d, device=str(self.device)) if d.device == "auto" else d

    def build_models(self) -> nn.Module:
        """Build the task's models on ``self.device``; return the trainable one (unwrapped)."""
        raise NotImplementedError

    def compute_loss(self, batch: Dict[str, torch.Tensor], step_index: int):
        """(loss, terms) of the batch of 0-based step ``step_index``, run under autocast by :meth:`step`."""
        raise NotImplementedError

    def param_groups(self) -> list:
        """The optimizer's parameter groups (default: decay / no-decay, trainer.optim.param_groups)."""
        return param_groups(self.model, self.cfg.optim.weight_decay)

    def flops_per_clip(self) -> Optional[float]:
        """Model FLOPs per clip, for MFU in the telemetry (None: not counted)."""
        return None

    def on_epoch_end(self, telemetry: Telemetry) -> None:
        """After each completed epoch (every rank calls it; a collective is allowed)."""

    def on_fit_end(self, telemetry: Telemetry, interrupted: bool) -> None:
        """After the final checkpoint (every rank calls it)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """``train.compile``, then DDP when distributed: what :meth:`compute_loss` should call."""
        module: nn.Module = torch.compile(model) if self.cfg.train.compile else model
        if self.info.distributed:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False, broadcast_buffers=False)
        return module

    # ---- checkpoint state -------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        rngs = gather_to_main(ckpt.rng_state(), self.info)  # collective: every rank calls state()
        return {"step": self.global_step, "epoch": self.epoch, self.MODEL_KEY: self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rngs, "data": self.loader.state_dict(),
                "config": self.cfg.to_dict(), "world_size": self.info.world_size,
                "task": self.TASK, "run_id": self.identity.run_id}

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        return self.manager.save(self.state(), self.global_step, name)

    def restore(self) -> Optional[Path]:
        resume = self.cfg.checkpoint.resume
        found = self.manager.resolve(resume) if self.identity.continued or resume not in ("auto", "none") else None
        if found is None:
            if resume == "auto":
                log.info("no checkpoint of this run in %s: starting from scratch", self.ckpt_dir)
            return None
        path, state = found
        if state.get("run_id") not in (None, self.identity.run_id) and resume == "auto":
            raise ckpt.CheckpointError(f"checkpoint {path} belongs to run {state['run_id'][:8]}, not to the run "
                                       f"recorded in {self.log_dir / run_folder.MARKER}: use a new log.dir")
        self._check_resume_config(path, state.get("config") or {})
        try:
            self.model.load_state_dict(state[self.MODEL_KEY])
        except RuntimeError as e:
            raise ckpt.CheckpointError(
                f"checkpoint {path} holds another model than the config builds ({_first_lines(e)}). Resume "
                "with the model.* settings it was trained with, or start a new run (checkpoint.resume=none, "
                "or another log.dir / checkpoint.dir)") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"checkpoint {path}: its optimizer state does not fit this model ({e}); "
                                       "start a new run (checkpoint.resume=none)") from None
        self.global_step, self.epoch = int(state["step"]), int(state["epoch"])
        if state.get("data") is not None:
            self.loader.load_state_dict(state["data"])
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            ckpt.set_rng_state(rngs[self.info.rank])
        elif rngs:
            log.warning("checkpoint was written by %d ranks, this run has %d: RNG states not restored",
                        len(rngs), self.info.world_size)
        log.info("resumed from %s at step %d (epoch %d)", path, self.global_step, self.epoch)
        return path

    def _check_resume_config(self, path: Path, saved: Dict[str, Any]) -> None:
        """Print what changed since the checkpoint; refuse a changed model or clip contract unless
        ``checkpoint.allow_config_change``."""
        if not saved:
            return
        diffs = [d for d in config_diff(saved, self.cfg.to_dict()) if not d[0].startswith(self.RESUME_FREE)]
        if not diffs:
            return
        text = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)
        guarded = [k for k, _, _ in diffs if k.startswith(self.RESUME_GUARDED)]
        if guarded and not self.cfg.checkpoint.allow_config_change:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was trained with another model or clip shape ({', '.join(guarded)} changed: "
                f"{text}). Set those back, start a new run (checkpoint.resume=none or another log.dir), or pass "
                "checkpoint.allow_config_change=true to resume anyway")
        log.warning("resuming from %s with a changed config: %s", path, text)

    # ---- the step ---------------------------------------------------------------------------------
    def _on_nonfinite(self, step: int, bad, values: Dict[str, float], batch) -> None:
        name = f"nonfinite-step-{step:09d}.pt"
        state = {"step": step, "epoch": self.epoch, self.MODEL_KEY: self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "config": self.cfg.to_dict(),
                 "bad_terms": bad, "terms": values, "batch": {k: v.detach().cpu() for k, v in batch.items()}}
        where = atomic_save({"format": ckpt.FORMAT, **state}, self.ckpt_dir / f"rank{self.info.rank}-{name}")
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {', '.join(f'{k}={values[k]}' for k in bad)} (all terms: {values}); "
            f"debug checkpoint with the batch: {where}. Lower optim.lr, check the data, or train in float32")

    def step(self, batch: Dict[str, torch.Tensor]) -> StepResult:
        """One optimizer step on ``batch``: schedules, the task's loss (under autocast), backward, gradient
        clipping, the non-finite check, AdamW. Advances ``global_step`` by one."""
        i = self.global_step  # 0-based index into the schedules; the step's number is i + 1
        apply_schedules(self.optimizer, self.schedules, i)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            loss, terms = self.compute_loss(batch, i)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.clip_grad
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else math.inf)
        self.guard.watch(i + 1, terms, batch)
        self.optimizer.step()
        self.global_step += 1
        return StepResult(terms, grad_norm, float(self.schedules.lr[min(i, len(self.schedules.lr) - 1)]))

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        try:
            result = self._fit()
            if self.info.distributed:
                # leave together: a rank that destroys the process group while a peer still talks to it (rank 0
                # writing the last checkpoint) can abort in Gloo ("terminate called without an active exception")
                torch.distributed.barrier()
            return result
        except RuntimeError as e:
            if self.info.distributed and is_timeout(e):
                raise timeout_error(e, f"a collective at step {self.global_step + 1}", self.info) from None
            raise

    def _fit(self) -> FitResult:
        cfg, info = self.cfg, self.info
        if info.is_main:
            run_folder.take(self.identity, self.log_dir, self.ckpt_dir)
        if info.distributed:  # every rank resumes only after rank 0 has moved a replaced run aside
            torch.distributed.barrier(group=info.control_group)
            self.identity.run_id = run_folder.recorded_run_id(self.log_dir, self.identity.run_id)  # rank 0's id
        resumed = self.restore()
        if info.is_main:
            (self.log_dir / "config.yaml").write_text(cfg.to_yaml())
        scaling = (f"base {cfg.optim.lr:.3g} x {self.global_videos} videos / 256" if cfg.optim.scale_lr
                   else "optim.scale_lr=false")
        log.info("run: %d ranks on %s, %d steps (%d/epoch), global batch %d videos = %d clips (x num_sample %d), "
                 "peak lr %.3g (%s), amp %s, ops %s, logs in %s, checkpoints in %s",
                 info.world_size, self.device, self.total_steps, self.steps_per_epoch, self.global_videos,
                 self.global_clips, cfg.data.num_sample, self.schedules.peak_lr, scaling,
                 "bf16" if self.amp else "off", self.ops_impl or "auto", self.log_dir, self.ckpt_dir)
        if self.global_step >= self.total_steps:
            log.info("this run is already at step %d of %d: nothing left to train (raise train.max_steps or "
                     "train.epochs to go on)", self.global_step, self.total_steps)
        flops = self.flops_per_clip()
        peak = peak_flops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        telemetry = Telemetry(info, self.log_dir, log_every=cfg.train.log_every, total_steps=self.total_steps,
                              start_step=self.global_step, clips_per_step=self.global_clips,
                              tensorboard=cfg.log.tensorboard, progress=cfg.log.progress and info.is_main,
                              flops_per_clip=flops, peak_flops=peak)
        telemetry.event("run_start", self.global_step, task=self.TASK, run_id=self.identity.run_id,
                        resumed_from=str(resumed) if resumed else None)
        stop = _StopRequest(cfg.checkpoint.save_on_signal)
        vote = StopVote(info)
        interrupted = None
        run_bad: Dict[str, int] = {}
        self.run_remote_errors: Dict[str, int] = {}  # transient object-storage errors this run, by kind
        start_step, t_train = self.global_step, time.perf_counter()
        self.model.train()
        try:
            while self.global_step < self.total_steps and interrupted is None:
                t0 = time.perf_counter()
                self.loader.set_epoch(self.epoch)
                batches = iter(self.loader)
                epoch_start = time.perf_counter() - t0  # pipeline / worker start-up counts as data wait
                epoch_done = False
                while self.global_step < self.total_steps:
                    t0 = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        epoch_done = True
                        break
                    waited, epoch_start = time.perf_counter() - t0 + epoch_start, 0.0
                    result = self.step(batch)
                    telemetry.record(self.global_step, result.terms, result.grad_norm, result.lr, waited)
                    if vote.vote(stop.signum is not None):
                        interrupted = stop.signum or signal.SIGTERM
                        break
                    if self.global_step % cfg.checkpoint.every_n_steps == 0 and self.global_step < self.total_steps:
                        self.guard.check_pending()
                        self.save()
                epoch_done = epoch_done or self.loader.state.batch >= len(self.loader)
                self._report_bad_samples(telemetry, run_bad, epoch_done)
                if epoch_done and interrupted is None:
                    self.on_epoch_end(telemetry)
                    self.model.train()
                if interrupted is None and self.global_step < self.total_steps:
                    self.epoch += 1
            if vote.drain() and interrupted is None:  # a signal during the very last step
                interrupted = stop.signum or signal.SIGTERM
            self.guard.check_pending()
            telemetry.flush(self.global_step)
            train_s = time.perf_counter() - t_train
            path = self.save()
            if interrupted is not None:
                log.warning("stopped by %s at step %d; checkpoint %s (rerun the same command to continue)",
                            signal.Signals(interrupted).name, self.global_step, path or self.ckpt_dir)
            # The checkpoint is safe: from here a signal interrupts at once (the caller's handler, which
            # run_cli turns into exit 130) instead of letting a long final evaluation run into SIGKILL.
            stop.restore()
            self.on_fit_end(telemetry, interrupted is not None)
            if run_bad:
                log.warning("bad samples skipped in this run: %s", _fmt_counts(run_bad))
            telemetry.event("run_end", self.global_step, interrupted=interrupted is not None,
                            bad_samples=run_bad, bad_samples_total=sum(run_bad.values()),
                            remote_errors=self.run_remote_errors,
                            remote_errors_total=sum(self.run_remote_errors.values()))
        finally:
            stop.restore()
            telemetry.close()
            self.loader.close()  # the eager loader keeps its workers between epochs
        return FitResult(step=self.global_step, epoch=self.epoch, interrupted=interrupted is not None,
                         resumed_from=str(resumed) if resumed else None, log_dir=str(self.log_dir),
                         checkpoint_dir=str(self.ckpt_dir), metrics=str(telemetry.path), last=telemetry.last,
                         bad_samples=run_bad, start_step=start_step, clips_per_step=self.global_clips,
                         train_s=train_s)

    def _report_bad_samples(self, telemetry: Telemetry, run_bad: Dict[str, int], epoch_done: bool) -> None:
        """Per-epoch totals by reason over all ranks: logged and written to metrics.jsonl."""
        from amd_fast.data import remote

        counts = self.loader.bad.take_epoch()
        totals: Dict[str, int] = {}
        retried: Dict[str, int] = {}  # transient object-storage errors (retried), by kind
        for rank_counts, rank_retried in gather_to_main((counts, remote.take_epoch()), self.info) or []:
            for reason, n in rank_counts.items():
                totals[reason] = totals.get(reason, 0) + n
            for kind, n in rank_retried.items():
                retried[kind] = retried.get(kind, 0) + n
        if not self.info.is_main:
            return
        for reason, n in totals.items():
            run_bad[reason] = run_bad.get(reason, 0) + n
        for kind, n in retried.items():
            self.run_remote_errors[kind] = self.run_remote_errors.get(kind, 0) + n
        telemetry.event("epoch_end" if epoch_done else "epoch_partial", self.global_step, epoch=self.epoch,
                        bad_samples=totals, bad_samples_total=sum(totals.values()),
                        remote_errors=retried, remote_errors_total=sum(retried.values()))
        if retried:
            log.warning("epoch %d: %d transient object-storage error(s) retried: %s", self.epoch,
                        sum(retried.values()), _fmt_counts(retried))
        if totals:
            log.warning("epoch %d: %d bad sample(s) skipped: %s", self.epoch, sum(totals.values()),
                        _fmt_counts(totals))


def _fmt_counts(counts: Dict[str, int]) -> str:
    return ", ".join(f"{n} x {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _first_lines(e: Exception, n: int = 3) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:n])[:600]


