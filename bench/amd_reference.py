"""The three memory-bound ops written the way the AMD reference code (MCG-NJU/AMD) writes them.

Only for the bench (``bench/parts/kernels.py``): it times (a) this style, (b) our efficient eager code
(``amd_fast.ops ..., impl='eager'``) and (c) the Triton kernels on identical inputs. Faithful on purpose,
including its costs: boolean-mask indexing (a host sync for the output size), full-clip un-normalize and
patchify copies, separate mean / var / normalize / MSE passes, one loss call per layer pair.
Masks use the reference convention: bool (B, N), True = masked (hidden from the student).

Sources: ``models/modeling_pretrain.py`` (encoder: ``x = x + pos_embed...; x_vis = x[~mask].reshape(B, -1, C)``),
``engine_for_pretraining_amd.py`` (target chain, ``nn.MSELoss``/``L1Loss``/``SmoothL1Loss`` per layer, then
divided by the number of layers).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD


def masked_gather(x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Student-visible tokens: full-size pos add, then ``x[~mask].reshape(B, -1, C)``."""
    if pos is not None:
        # AMD adds a fixed (detached) sinusoid table; keep a trainable pos trainable
        x = x + (pos if pos.requires_grad else pos.type_as(x).to(x.device).clone().detach())
    B, _, C = x.shape
    return x[~mask].reshape(B, -1, C)


def align_loss(students, teachers, kind: str = "l2") -> torch.Tensor:
    """Per-layer loss module calls, summed, divided by the number of layers."""
    loss_func = {"l2": nn.MSELoss(), "l1": nn.L1Loss(), "smooth_l1": nn.SmoothL1Loss(), "sml1": nn.SmoothL1Loss()}[kind]
    total = 0.0
    for s, t in zip(students, teachers):
        total += loss_func(s, t)
    return total / len(students)


def _rearrange_patchify(x: torch.Tensor, tubelet: int, patch: int, split_c: bool) -> torch.Tensor:
    """einops ``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`` (or ``(p0 p1 p2 c)``) via reshape/permute
    (einops does the same: a view, then one copy on the final reshape)."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b t h w p0 p1 p2 c
    n = (T // tubelet) * (H // patch) * (W // patch)
    if split_c:
        return x.reshape(B, n, tubelet * patch * patch, C)
    return x.reshape(B, n, tubelet * patch * patch * C)


def norm_pixel_loss(video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, *, tubelet: int = 2,
                    patch: int = 16, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    normalize_target: bool = True) -> torch.Tensor:
    """engine_for_pretraining_amd.py's target chain on the whole clip, boolean index, ``nn.MSELoss``."""
    with torch.no_grad():
        m = torch.as_tensor(mean).to(video.device)[None, :, None, None, None]
        s = torch.as_tensor(std).to(video.device)[None, :, None, None, None]
        unnorm = video * s + m  # in [0, 1]
        if normalize_target:
            sq = _rearrange_patchify(unnorm, tubelet, patch, split_c=True)
            norm = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
            patches = norm.reshape(norm.shape[0], norm.shape[1], -1)  # 'b n p c -> b n (p c)'
        else:
            patches = _rearrange_patchify(unnorm, tubelet, patch, split_c=False)
        B, _, L = patches.shape
        labels = patches[mask].reshape(B, -1, L)
    return nn.MSELoss()(input=pred, target=labels)
