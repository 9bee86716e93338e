"""The frozen AMD teacher: a VideoMAE ViT run on the teacher-visible tokens, cut after its last needed block.

Input tokens are ``[gather(x, vis_idx); gather(x, diff_idx)]`` (+ sin-cos positions), as the
reference's ``forward_features_teacher``. At every block in ``teacher_align_layers`` the first
``|vis|`` outputs are the direct-alignment targets and the last ``|diff|`` the generation targets.
Like the reference, targets are raw block outputs (no final norm), so no norm is built.

Early exit: only blocks up to ``max(teacher_align_layers)`` are built, loaded and run (the
reference builds all and breaks out of the loop). The teacher never trains: parameters have
``requires_grad=False``, the module stays in eval mode whatever ``.train()`` says, and the
forward runs under ``no_grad``.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import torch.nn as nn

from amd_fast import ops
from amd_fast.masking import Masks
from amd_fast.models.archs import get_arch
from amd_fast.models.config import ModelConfig
from amd_fast.models.vit import ViTEncoder


class TeacherOutput(NamedTuple):
    direct: List[torch.Tensor]  # per align layer (B, V, D), order of masks.vis_idx
    generated: List[torch.Tensor]  # per align layer (B, Diff, D), order of masks.diff_idx


class AMDTeacher(nn.Module):
    # load_pretrained skips a checkpoint's blocks past max(teacher_align_layers) for this model only: the
    # teacher stops early on purpose; any other model with fewer blocks than its checkpoint is an error.
    early_exit = True

    def __init__(self, cfg: ModelConfig, ops_impl: Optional[str] = None):
        super().__init__()
        self.ops_impl = ops_impl  # 'triton' | 'eager' | None (automatic), see amd_fast.ops
        if cfg.teacher is None:
            raise ValueError("model.teacher is None (plain VideoMAE): there is no teacher to build")
        self.cfg = cfg
        self.align_layers = tuple(cfg.teacher_align_layers)
        self.encoder = ViTEncoder(get_arch(cfg.teacher), input_size=cfg.input_size, patch_size=cfg.patch_size,
                                  num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size,
                                  depth=max(self.align_layers), final_norm=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: dropout / drop-path never switch on
        return super().train(False)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, masks: Masks) -> TeacherOutput:
        vis_idx, diff_idx, _ = masks
        tokens = self.encoder.patch_embed(video)
        pos = self.encoder.pos_embed
        # One gather over the concatenated ids (disjoint, each half sorted) instead of two gathers and a cat
        # of the gathered features: the index cat is tiny, the feature cat would copy the whole teacher input.
        x = ops.masked_gather(tokens, torch.cat([vis_idx, diff_idx], dim=1), pos, impl=self.ops_impl)
        _, feats = self.encoder.forward_tokens(x, self.align_layers)
        n_vis = vis_idx.shape[1]
        return TeacherOutput([f[:, :n_vis] for f in feats], [f[:, n_vis:] for f in feats])
