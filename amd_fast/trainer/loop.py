"""AMD pretraining: the shared loop (``trainer.base``) with the AMD task in its hooks.

- The student is the trained model (DDP-wrapped by the base); the frozen teacher stays outside DDP, in
  eval mode, cast once to bf16 when training under bf16 autocast on CUDA.
- Masks come from a generator reseeded every step from (seed, rank, step), so a resumed run draws the
  same masks as an uninterrupted one (the loader's own state restores the data order).
- At the end the student encoder is exported in VideoMAE's fine-tuning names (``checkpoint.export_encoder``):
  ``encoder.pth`` and ``encoder.safetensors``.

``Trainer.step(batch)`` / ``Trainer.fit()`` are the public API (see ``trainer.base``); :func:`run` is what
``python -m amd_fast.train`` calls.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from amd_fast import models
from amd_fast.config import Config
from amd_fast.data.sampling import normalize_clips
from amd_fast.trainer.base import (FitResult, NonFiniteGuard, NonFiniteLossError, StepResult, TrainerBase,
                                   set_cpu_threads)
from amd_fast.trainer.distributed import DistInfo, init_distributed, setup_logging, shutdown
from amd_fast.trainer.flops import clip_flops

log = logging.getLogger(__name__)

__all__ = ["Trainer", "run", "mask_seed", "FitResult", "StepResult", "NonFiniteLossError", "NonFiniteGuard",
           "set_cpu_threads"]


def mask_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the masks of 0-based step ``step`` on ``rank``."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2 ** 63)


class Trainer(TrainerBase):
    """AMD (or, with ``model.teacher=null``, VideoMAE) pretraining."""

    MODEL_KEY = "student"
    TASK = "pretrain"
    RESUME_FREE = TrainerBase.RESUME_FREE + ("model.teacher_checkpoint",)

    def __init__(self, cfg: Config, info: DistInfo):
        super().__init__(cfg, info)
        self.mask_gen = torch.Generator(device=self.device)

    def build_models(self) -> nn.Module:
        cfg = self.cfg
        self.student = models.build_student(cfg.model, self.ops_impl).to(self.device)
        self.teacher = models.build_teacher(cfg.model, self.ops_impl)
        if self.teacher is not None:
            self.teacher = self.teacher.to(self.device).eval().requires_grad_(False)
            if self.amp and self.device.type == "cuda":
                # frozen: keep one bf16 copy instead of re-casting ~300M fp32 weights under autocast every step
                self.teacher = self.teacher.to(torch.bfloat16)
        return self.student

    @property
    def objective(self) -> models.AMDObjective:
        if not hasattr(self, "_objective"):
            self._objective = models.AMDObjective(self.forward_module, self.teacher, self.cfg.mask, self.cfg.loss,
                                                  self.cfg.model, ops_impl=self.ops_impl)
        return self._objective

    def data_config(self):
        # The loader hands over uint8 clips; they are normalized here, on the model's device, as the training
        # step's first op (on a CPU-only machine that keeps the float work out of the loader's accounting and
        # IPC 4x smaller; on CUDA it is a trivial kernel).
        return dataclasses.replace(super().data_config(), dtype="uint8")

    def compute_loss(self, batch: Dict[str, torch.Tensor], step_index: int):
        self.mask_gen.manual_seed(mask_seed(self.cfg.train.seed, self.info.rank, step_index))
        dtype = torch.float32 if self.cfg.data.dtype == "uint8" else getattr(torch, self.cfg.data.dtype)
        return self.objective(normalize_clips(batch["video"], dtype), generator=self.mask_gen)

    def flops_per_clip(self) -> Optional[float]:
        return clip_flops(self.cfg.model, self.cfg.mask)["total"]

    def on_fit_end(self, telemetry, interrupted: bool) -> None:
        if not interrupted and self.cfg.checkpoint.export_encoder and self.info.is_main:
            models.export_encoder(self.student, self.ckpt_dir / "encoder.pth")
            # the same weights without pickle, for safetensors-only consumers (python -m amd_fast.export reads both)
            from amd_fast.models.pretrained import export_encoder_safetensors

            export_encoder_safetensors(self.student, self.ckpt_dir / "encoder.safetensors")


def run(cfg: Config) -> FitResult:
    """Train with ``cfg`` in this process (joining the torchrun group when launched by torchrun)."""
    exports = {(cfg.checkpoint_dir / name).expanduser().resolve() for name in ("encoder.pth", "encoder.safetensors")}
    tc = cfg.model.teacher_checkpoint
    if (cfg.model.teacher is not None and tc and cfg.checkpoint.export_encoder
            and Path(tc).expanduser().resolve() in exports):
        from amd_fast.config import ConfigError

        raise ConfigError(f"model.teacher_checkpoint={tc} is the file this run exports its student to at the end "
                          "(it would be overwritten): copy the teacher elsewhere, use another log.dir, or set "
                          "checkpoint.export_encoder=false")
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    setup_logging(info.rank)
    try:
        return Trainer(cfg, info).fit()
    finally:
        shutdown()
