"""Named ViT sizes. One row per architecture; widths follow VideoMAE / AMD.

Decoder widths are the AMD / VideoMAE references' (``pretrain_mae_small``: 192 wide, 3 heads;
``pretrain_mae_base``: 384, 6 heads; large 512 / 8; huge 640 / 8) — half the encoder width.
The ``*_cpu`` rows are tiny nets for the CPU demo and tests, not for results.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTArch:
    dim: int
    depth: int
    heads: int
    decoder_dim: int
    decoder_heads: int
    mlp_ratio: float = 4.0


ARCHS: dict[str, ViTArch] = {
    "vit_small": ViTArch(dim=384, depth=12, heads=6, decoder_dim=192, decoder_heads=3),
    "vit_base": ViTArch(dim=768, depth=12, heads=12, decoder_dim=384, decoder_heads=6),
    "vit_large": ViTArch(dim=1024, depth=24, heads=16, decoder_dim=512, decoder_heads=8),
    "vit_huge": ViTArch(dim=1280, depth=32, heads=16, decoder_dim=640, decoder_heads=8),
    # CPU demo / tests: a tiny student and a slightly wider teacher (the generator uses teacher width / 64 heads).
    "vit_tiny_cpu": ViTArch(dim=96, depth=4, heads=3, decoder_dim=64, decoder_heads=2),
    "vit_mini_cpu": ViTArch(dim=128, depth=4, heads=4, decoder_dim=64, decoder_heads=2),
}


def get_arch(name: str) -> ViTArch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown ViT arch {name!r}; choose one of {', '.join(ARCHS)}") from None
