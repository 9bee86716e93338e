"""The AMD training objective: masks -> frozen teacher -> student -> weighted loss.

``loss = rec * L_pix + dir * mean_l L_align(direct_l) + gen * mean_l L_align(generated_l)``
(the reference's ``recfac`` / ``dirfac`` / ``genfac``). With no teacher it is VideoMAE:
``loss = rec * L_pix``. ``terms`` are detached 0-dim tensors ({'loss', 'loss_pix'} plus
{'loss_dir', 'loss_gen'} when there is a teacher): reading them (``.item()``) is the caller's
choice, made at log time, so the step itself never waits on the device.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from amd_fast import ops
from amd_fast.masking import MaskConfig, generate_masks, mask_counts
from amd_fast.models.config import LossConfig, ModelConfig
from amd_fast.models.unwrap import unwrap


class AMDObjective:
    """``objective(video) -> (loss, terms)``; ``student`` may be DDP-wrapped (it is called exactly once)."""

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], mask_cfg: MaskConfig, loss_cfg: LossConfig,
                 model_cfg: Optional[ModelConfig] = None, ops_impl: Optional[str] = None):
        self.student, self.teacher = student, teacher
        self.ops_impl = ops_impl  # for the two losses; the models carry their own (see amd_fast.ops)
        self.mask_cfg, self.loss_cfg = mask_cfg, loss_cfg
        self.model_cfg = model_cfg or unwrap(student).cfg
        if (teacher is None) != (self.model_cfg.teacher is None):
            raise ValueError(
                "teacher and model.teacher disagree: pass build_teacher(cfg) when model.teacher is set, and "
                "teacher=None (plain VideoMAE) only when model.teacher is None"
            )
        if teacher is not None and mask_counts(mask_cfg, self.model_cfg.grid)[1] == 0:
            raise ValueError(
                f"mask.teacher_ratio={mask_cfg.teacher_ratio} leaves no teacher-only tokens at "
                f"mask.student_ratio={mask_cfg.student_ratio}, so generation alignment has no targets; "
                "make teacher_ratio smaller than student_ratio (AMD: 0.75 vs 0.9)"
            )

    def __call__(self, video: torch.Tensor, generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        cfg, lc = self.model_cfg, self.loss_cfg
        masks = generate_masks(self.mask_cfg, video.shape[0], cfg.grid, device=video.device, generator=generator)
        targets = None
        if self.teacher is not None:
            with torch.no_grad():
                targets = self.teacher(video, masks)
        out = self.student(video, masks)
        loss_pix = ops.norm_pixel_loss(video, masks.mask_idx, out.pixel_pred, tubelet=cfg.tubelet_size,
                                       patch=cfg.patch_size, normalize_target=lc.normalize_target, impl=self.ops_impl)
        loss = lc.rec * loss_pix
        terms = {"loss_pix": loss_pix.detach()}
        if targets is not None:
            loss_dir = ops.align_loss(out.direct, targets.direct, kind=lc.align_kind, impl=self.ops_impl)
            loss_gen = ops.align_loss(out.generated, targets.generated, kind=lc.align_kind, impl=self.ops_impl)
            loss = loss + lc.dir * loss_dir + lc.gen * loss_gen
            terms.update(loss_dir=loss_dir.detach(), loss_gen=loss_gen.detach())
        terms["loss"] = loss.detach()
        return loss, terms
