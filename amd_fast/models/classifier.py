"""The fine-tuning ViT: the reference's ``VisionTransformer`` (MCG-NJU/AMD ``models/modeling_finetune.py``) on
the blocks the pretraining encoder uses.

Conv3d tubelet embedding, fixed sin-cos positions, ``depth`` pre-norm blocks with q and v biases only (the
fused qkv bias keeps its k third at zero, see ``models.vit``), no LayerScale, stochastic depth rising
linearly to ``drop_path``; then, as ``use_mean_pooling``: no final norm, the mean over all tokens, ``fc_norm``
(LayerNorm, eps 1e-6), head dropout and a linear head. Init as the reference: truncated-normal(0.02)
linears with zero bias, unit LayerNorms, and the head's weight and bias scaled by ``init_scale`` (0.001).

Its state dict uses the pretraining encoder's names (``patch_embed.*``, ``blocks.N.*``) plus ``fc_norm.*`` and
``head.*``, so :func:`amd_fast.models.load_pretrained` fills it from our checkpoints and encoder exports and
from VideoMAE / VideoMAEv2 / AMD release files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from amd_fast.models.archs import get_arch
from amd_fast.models.config import check_token_grid
from amd_fast.models.vit import ViTEncoder


@dataclass
class ClassifierConfig:
    """``model`` section of a fine-tuning config (defaults: the reference's ``run_class_finetuning.py``).

    ``pretrained``: weights to start from (our step-*.pt / encoder.pth, or a VideoMAE / VideoMAEv2 / AMD
    file); ``None`` starts from random init. ``input_size`` / ``num_frames`` follow ``data`` (set once there).
    ``pool``: ``mean`` (the reference: the mean over tokens, then ``fc_norm``) or ``tokens`` (``fc_norm`` on
    every token, all of them flattened into the head: keeps where and when, for tiny models on data whose
    class is a motion, as the CPU demo; the head then has tokens x width inputs per class).
    ``fc_norm_eps``: the reference's 1e-6; transformers' ``VideoMAEForVideoClassification`` fixes its ``fc_norm``
    at 1e-5, so a classifier fine-tuned with ``model.fc_norm_eps=1e-5`` exports with transformers' logits exact
    (with 1e-6 they differ by ~1e-4 of their size; ``amd_fast.export`` logs the measured gap).
    """

    arch: str = "vit_base"
    num_classes: int = 400
    pretrained: Optional[str] = None
    input_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    drop_path: float = 0.1
    head_drop_rate: float = 0.0
    init_scale: float = 0.001
    pool: str = "mean"
    fc_norm_eps: float = 1e-6
    use_checkpoint: bool = False

    def __post_init__(self):
        get_arch(self.arch)
        if self.num_classes < 2:
            raise ValueError(f"model.num_classes={self.num_classes} must be >= 2")
        if self.pretrained is not None and not self.pretrained.strip():
            raise ValueError("model.pretrained is empty (fine-tuning would start from random weights): give the "
                             "weights file, or null to train from scratch")
        check_token_grid(self)
        if self.pool not in ("mean", "tokens"):
            raise ValueError(f"model.pool={self.pool!r}; choose 'mean' (the reference) or 'tokens'")
        if not 0 < self.fc_norm_eps < 1:
            raise ValueError(f"model.fc_norm_eps={self.fc_norm_eps} must be in (0, 1): 1e-6 (the reference) or 1e-5 "
                             "(transformers' VideoMAEForVideoClassification)")
        if not 0 <= self.drop_path < 1 or not 0 <= self.head_drop_rate < 1:
            raise ValueError("model.drop_path and model.head_drop_rate must be in [0, 1)")

    @property
    def grid(self) -> Tuple[int, int, int]:
        side = self.input_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    def head_inputs(self, dim: int) -> int:
        t, h, w = self.grid
        return dim if self.pool == "mean" else dim * t * h * w


class VideoClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        arch = get_arch(cfg.arch)
        self.encoder = ViTEncoder(arch, input_size=cfg.input_size, patch_size=cfg.patch_size,
                                  num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size, final_norm=False,
                                  drop_path=cfg.drop_path, use_checkpoint=cfg.use_checkpoint)
        self.fc_norm = nn.LayerNorm(arch.dim, eps=cfg.fc_norm_eps)
        self.head_dropout = nn.Dropout(cfg.head_drop_rate)
        self.head = nn.Linear(cfg.head_inputs(arch.dim), cfg.num_classes)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.head.weight.mul_(self.cfg.init_scale)
            self.head.bias.mul_(self.cfg.init_scale)

    @property
    def num_layers(self) -> int:
        return len(self.encoder.blocks)

    def layer_id(self, name: str) -> int:
        """The reference's ``get_num_layer_for_vit``: patch embedding 0, block i i+1, the rest (fc_norm, head)
        num_layers + 1; drives the layer-wise lr decay."""
        if name.startswith("encoder.patch_embed"):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return self.num_layers + 1

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalized clips -> the head's input: (B, D) pooled and fc_norm'ed (``pool='mean'``),
        or (B, N * D) every token fc_norm'ed (``pool='tokens'``)."""
        tokens = self.encoder.patch_embed(video)
        x = tokens + self.encoder.pos_embed.to(tokens.dtype)
        x, _ = self.encoder.forward_tokens(x)
        if self.cfg.pool == "tokens":
            return self.fc_norm(x).flatten(1)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.forward_features(video)))


def build_classifier(cfg: ClassifierConfig) -> VideoClassifier:
    """The fine-tuning model, from ``cfg.pretrained`` when set (reports missing / unexpected keys)."""
    from amd_fast.models.pretrained import load_pretrained

    model = VideoClassifier(cfg)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return model

