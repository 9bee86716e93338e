"""ViT pieces shared by student and teacher (VideoMAE layout, timm layers).

Parameter names follow timm (``blocks.N.attn.qkv``, ``ls1.gamma``, ``mlp.fc1``...);
``models.pretrained`` maps VideoMAE / AMD names (``q_bias``/``v_bias``, ``gamma_1``)
onto them. Attention is timm's, which uses fused SDPA.

On the key bias: VideoMAE's attention has q and v biases but none for k. timm's
``qkv`` has one bias for all three; ours (:class:`QKVLinear`) multiplies it by a constant
0/1 mask (a non-persistent buffer: 1 on the q and v thirds, 0 on the k third) in every
forward, so the k third never enters the math and its gradient is exactly zero: it stays
at the zero it starts with, and the math is the reference's. (Its true gradient is zero
anyway, since adding ``q.b_k`` to every logit of a row cannot change a softmax, but rounding
leaves ~1e-8, which AdamW's normalisation would blow up into real updates.) The mask is part
of the module, so it survives ``copy.deepcopy``, pickling, ``.to()`` and parameter swaps,
which a gradient hook on the parameter (the earlier design) did not; the state dict keeps
timm's single ``attn.qkv.bias`` (checkpoints unchanged), which a separate ``q_bias`` /
``v_bias`` pair as in VideoMAE would have renamed. Import fills the k third with zeros;
export drops it.
"""
from __future__ import annotations

import math
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerScale, Mlp
from torch.utils.checkpoint import checkpoint

from amd_fast.models.archs import ViTArch

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # VideoMAE / AMD use eps 1e-6


def get_sinusoid_encoding_table(n_position: int, d_hid: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sine-cosine table, ``(n_position, d_hid)`` float32.

    Same values as the reference's numpy version (computed in float64, then cast).
    """
    pos = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(d_hid, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d_hid)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


class PatchEmbed(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (t, p, p); ``(B,3,T,H,W) -> (B, N, C)``."""

    def __init__(self, dim: int, input_size: int, patch_size: int, num_frames: int, tubelet_size: int, in_chans: int = 3):
        super().__init__()
        self.input_size, self.num_frames = input_size, num_frames
        self.grid = (num_frames // tubelet_size, input_size // patch_size, input_size // patch_size)
        self.num_patches = math.prod(self.grid)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = video.shape
        if (t, h, w) != (self.num_frames, self.input_size, self.input_size):
            raise ValueError(
                f"clip is {t}x{h}x{w} (T x H x W) but the model was built for {self.num_frames}x{self.input_size}x"
                f"{self.input_size}; set model.num_frames / model.input_size to match data.num_frames / data.input_size"
            )
        # Token-major copy: the conv leaves (B, N, C) with strides (N*C, 1, N), and the masked gather that follows
        # would read each token's C values N elements apart (one memory sector per value). One coalesced
        # copy of the tokens (read + write B*N*C) is cheaper than that (see kernels/masked_gather.py).
        return self.proj(video).flatten(2).transpose(1, 2).contiguous()


class QKVLinear(nn.Linear):
    """timm's fused qkv projection without a key bias (VideoMAE's q_bias / v_bias): the bias is used times a
    constant 0/1 mask, so its k third has no effect and an exactly zero gradient (see module doc)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__(dim, out_dim, bias=True)
        mask = torch.ones(out_dim)
        mask[dim:2 * dim] = 0
        self.register_buffer("bias_mask", mask, persistent=False)  # not in the state dict: names unchanged
        with torch.no_grad():
            self.bias[dim:2 * dim] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class Block(nn.Module):
    """Pre-norm transformer block (timm layout); LayerScale only when ``init_values > 0``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, init_values: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=True)
        self.attn.qkv = QKVLinear(dim, 3 * dim)  # the k third of the bias is masked out (module doc)
        self.ls1 = LayerScale(dim, init_values) if init_values > 0 else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def build_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 init_values: float = 0.0) -> nn.ModuleList:
    """``depth`` blocks with stochastic depth rising linearly from 0 to ``drop_path`` (VideoMAE's rule)."""
    rates = torch.linspace(0, drop_path, depth).tolist() if depth > 0 else []
    return nn.ModuleList(Block(dim, heads, mlp_ratio, r, init_values) for r in rates)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, capture: Sequence[int] = (), use_checkpoint: bool = False
               ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Run ``blocks`` in order; also return the outputs after the 1-based blocks in ``capture``, in that order.

    ``use_checkpoint`` recomputes each block in backward (activation checkpointing) when grads are on.
    """
    seen = {}
    ckpt = use_checkpoint and torch.is_grad_enabled()
    for i, blk in enumerate(blocks, start=1):
        x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
        if i in capture:
            seen[i] = x
    return x, [seen[i] for i in capture]


class ViTEncoder(nn.Module):
    """VideoMAE encoder: tubelet embed, fixed sin-cos positions, blocks, optional final norm.

    ``depth`` may be less than the arch's (the teacher keeps only the blocks it needs).
    State-dict names: ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*`` — VideoMAE's, after
    ``models.pretrained`` renames the attention bias / layer-scale entries.
    """

    def __init__(self, arch: ViTArch, *, input_size: int, patch_size: int, num_frames: int, tubelet_size: int,
                 depth: Optional[int] = None, final_norm: bool = True, drop_path: float = 0.0,
                 init_values: float = 0.0, use_checkpoint: bool = False):
        super().__init__()
        self.arch, self.dim = arch, arch.dim
        self.patch_embed = PatchEmbed(arch.dim, input_size, patch_size, num_frames, tubelet_size)
        # Not a parameter and not saved: rebuilt from the grid (as VideoMAE does), so checkpoints stay size-agnostic.
        self.register_buffer("pos_embed", get_sinusoid_encoding_table(self.patch_embed.num_patches, arch.dim),
                             persistent=False)
        self.blocks = build_blocks(arch.dim, arch.depth if depth is None else depth, arch.heads, arch.mlp_ratio,
                                   drop_path, init_values)
        self.norm = LayerNorm(arch.dim) if final_norm else None
        self.use_checkpoint = use_checkpoint

    def forward_tokens(self, x: torch.Tensor, capture: Sequence[int] = ()) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Blocks (+ final norm if built) over already embedded tokens; see ``run_blocks`` for ``capture``."""
        x, feats = run_blocks(self.blocks, x, capture, self.use_checkpoint)
        if self.norm is not None:
            x = self.norm(x)
        return x, feats
