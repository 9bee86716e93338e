"""AMD's pretraining student: masked ViT encoder, feature projection heads and generators, pixel decoder.

One ``forward(video, masks)`` does all trainable compute, so a training loop can wrap the
student in DDP and call it once per step. Mirrors ``PretrainAMD`` of MCG-NJU/AMD:

- encoder over the student-visible tokens (sin-cos positions added at the gathered ids);
- for each alignment pair ``i``: the output of student block ``student_align_layers[i]``
  (before the final norm) through a bias-free linear head to the teacher's width. As in
  the reference, ONE head per pair serves both the direct alignment (its output is the
  ``direct`` prediction) and the generation branch (its output feeds generator ``i``);
- generator ``i`` (``generator_depth`` blocks, teacher width, 64-wide heads) over
  ``[head output + pos at vis ids; mask token + pos at diff ids]``; its last ``|diff|``
  outputs predict the teacher's features at the diff tokens. The reference builds a
  LayerNorm in each generator but never applies it: same math here, without the unused norm;
- pixel decoder over ``[encoder out -> decoder width + pos at vis ids; mask token + pos at
  mask ids]``; norm + linear head on the last ``|mask|`` outputs give ``t*p*p*3`` values per
  masked token.

Fixed on purpose: the reference keeps the generator mask tokens in a Python list, so they are
neither trained nor saved; here they are parameters. With ``cfg.teacher=None`` the student is
plain VideoMAE (no heads, no generators).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from amd_fast import ops
from amd_fast.masking import Masks
from amd_fast.models.archs import get_arch
from amd_fast.models.config import ModelConfig
from amd_fast.models.vit import LayerNorm, ViTEncoder, build_blocks, get_sinusoid_encoding_table, run_blocks


class StudentOutput(NamedTuple):
    pixel_pred: torch.Tensor  # (B, M, t*p*p*3), order of masks.mask_idx
    direct: List[torch.Tensor]  # per align pair (B, V, D_teacher), order of masks.vis_idx
    generated: List[torch.Tensor]  # per align pair (B, Diff, D_teacher), order of masks.diff_idx


class FeatureGenerator(nn.Module):
    """Small transformer predicting teacher features at teacher-only tokens (the reference's ``Generator``)."""

    def __init__(self, dim: int, depth: int, mlp_ratio: float, drop_path: float, init_values: float,
                 use_checkpoint: bool):
        super().__init__()
        self.blocks = build_blocks(dim, depth, dim // 64, mlp_ratio, drop_path, init_values)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.use_checkpoint = use_checkpoint

    def forward(self, visible: torch.Tensor, pos_vis: torch.Tensor, pos_diff: torch.Tensor) -> torch.Tensor:
        x = torch.cat([visible + pos_vis, self.mask_token.to(visible.dtype) + pos_diff], dim=1)
        x, _ = run_blocks(self.blocks, x, (), self.use_checkpoint)
        return x[:, visible.shape[1]:]


class AMDStudent(nn.Module):
    """``ops_impl``: 'triton' | 'eager' | None (automatic per device) for the masked gather (see amd_fast.ops)."""

    def __init__(self, cfg: ModelConfig, ops_impl: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.ops_impl = ops_impl
        arch = get_arch(cfg.student)
        self.encoder = ViTEncoder(arch, input_size=cfg.input_size, patch_size=cfg.patch_size,
                                  num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size,
                                  drop_path=cfg.drop_path, init_values=cfg.init_values,
                                  use_checkpoint=cfg.use_checkpoint)
        n = self.encoder.patch_embed.num_patches
        self.align_layers = tuple(cfg.student_align_layers) if cfg.teacher else ()
        if cfg.teacher:
            tdim = get_arch(cfg.teacher).dim
            self.projection_heads = nn.ModuleList(nn.Linear(arch.dim, tdim, bias=False) for _ in self.align_layers)
            self.generators = nn.ModuleList(
                FeatureGenerator(tdim, cfg.generator_depth, arch.mlp_ratio, cfg.drop_path, cfg.init_values,
                                 cfg.use_checkpoint)
                for _ in self.align_layers)
            self.register_buffer("generator_pos_embed", get_sinusoid_encoding_table(n, tdim), persistent=False)
        else:
            self.projection_heads = nn.ModuleList()
            self.generators = nn.ModuleList()
        ddim = cfg.decoder_dim or arch.decoder_dim
        dheads = cfg.decoder_heads or (arch.decoder_heads if cfg.decoder_dim is None else max(1, ddim // 64))
        self.encoder_to_decoder = nn.Linear(arch.dim, ddim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.register_buffer("decoder_pos_embed", get_sinusoid_encoding_table(n, ddim), persistent=False)
        self.decoder_blocks = build_blocks(ddim, cfg.decoder_depth, dheads, arch.mlp_ratio, cfg.drop_path,
                                           cfg.init_values)
        self.decoder_norm = LayerNorm(ddim)
        self.decoder_head = nn.Linear(ddim, cfg.tubelet_size * cfg.patch_size ** 2 * 3)
        self._init_weights()

    def _init_weights(self):
        # As the reference: xavier-uniform linears with zero bias and unit LayerNorms inside the encoder,
        # generators and decoder; PyTorch's default init for the Conv3d patch embed and for encoder_to_decoder
        # (the reference never re-initialises that one); truncated-normal(0.02) mask tokens.
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.encoder_to_decoder:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        for g in self.generators:
            trunc_normal_(g.mask_token, std=0.02, a=-0.02, b=0.02)

    @property
    def grid(self):
        return self.encoder.patch_embed.grid

    def no_weight_decay(self) -> set:
        """Parameter names the optimizer should not decay (timm / VideoMAE convention)."""
        return {"mask_token"} | {f"generators.{i}.mask_token" for i in range(len(self.generators))}

    def forward(self, video: torch.Tensor, masks: Masks) -> StudentOutput:
        vis_idx, diff_idx, mask_idx = masks
        tokens = self.encoder.patch_embed(video)
        x = ops.masked_gather(tokens, vis_idx, self.encoder.pos_embed, impl=self.ops_impl)
        x, feats = self.encoder.forward_tokens(x, self.align_layers)
        direct = [head(f) for head, f in zip(self.projection_heads, feats)]
        generated = []
        if len(self.generators):
            pos = self.generator_pos_embed.to(x.dtype)
            pos_vis, pos_diff = pos[vis_idx], pos[diff_idx]
            generated = [gen(d, pos_vis, pos_diff) for gen, d in zip(self.generators, direct)]
        pos = self.decoder_pos_embed.to(x.dtype)
        y = self.encoder_to_decoder(x)
        y = torch.cat([y + pos[vis_idx], self.mask_token.to(y.dtype) + pos[mask_idx]], dim=1)
        y, _ = run_blocks(self.decoder_blocks, y, (), self.cfg.use_checkpoint)
        pixel_pred = self.decoder_head(self.decoder_norm(y[:, vis_idx.shape[1]:]))
        return StudentOutput(pixel_pred, direct, generated)

    def encoder_features(self, video: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """Clip features for a probe: all tokens visible, final norm, then ``pool``: 'mean' over tokens
        -> (B, D) (VideoMAE's fc_norm-style pooling), or 'tokens': every token's features in token order,
        flattened -> (B, N*D) (keeps where and when things are, which a mean throws away)."""
        if pool not in ("mean", "tokens"):
            raise ValueError(f"pool={pool!r}: use 'mean' or 'tokens'")
        x = self.encoder.patch_embed(video) + self.encoder.pos_embed.to(video.dtype)
        x, _ = self.encoder.forward_tokens(x)
        return x.mean(dim=1) if pool == "mean" else x.flatten(1)
