"""Model and loss settings (dataclasses; the top-level config composes them).

Defaults reproduce the AMD reference's defaults (``run_amd_pretrain.py``): a ViT-B
student distilled from a ViT-L teacher, alignment at student blocks 6 and 12 against
teacher blocks 12 and 24 (the paper's scripts pass these lists), a 2-block feature
generator, a 4-block pixel decoder, loss weights 1 / 1 / 1 and L2 alignment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from amd_fast.models.archs import get_arch

ALIGN_KINDS = ("l2", "l1", "smooth_l1")


def check_token_grid(cfg) -> None:
    """The clip cuts into whole tubelets and patches (every model config: student, teacher, classifier)."""
    if cfg.patch_size < 1 or cfg.tubelet_size < 1:
        raise ValueError(f"model.patch_size={cfg.patch_size} and model.tubelet_size={cfg.tubelet_size} must be "
                         ">= 1 (e.g. 16 and 2)")
    if cfg.input_size % cfg.patch_size:
        raise ValueError(f"model.input_size={cfg.input_size} is not a multiple of model.patch_size={cfg.patch_size}")
    if cfg.num_frames % cfg.tubelet_size:
        raise ValueError(f"model.num_frames={cfg.num_frames} is not a multiple of model.tubelet_size={cfg.tubelet_size}")


@dataclass
class ModelConfig:
    student: str = "vit_base"
    teacher: Optional[str] = "vit_large"  # None: plain VideoMAE (pixel loss only)
    input_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    decoder_depth: int = 4
    decoder_dim: Optional[int] = None  # None: the arch's (ViT-S 192, ViT-B 384)
    decoder_heads: Optional[int] = None
    # 1-based block indices (as the reference's --student_layer_*_align), strictly increasing: the i-th
    # student layer is aligned with the i-th teacher layer, both directly and through the generator (the
    # reference collects features in depth order, so an unsorted list would pair them differently).
    student_align_layers: List[int] = field(default_factory=lambda: [6, 12])
    teacher_align_layers: List[int] = field(default_factory=lambda: [12, 24])
    generator_depth: int = 2
    drop_path: float = 0.0
    init_values: float = 0.0  # > 0 turns on LayerScale (the reference's gamma_1/gamma_2); 0 = off, as AMD
    teacher_checkpoint: Optional[str] = None
    use_checkpoint: bool = False  # activation checkpointing of every block (less memory, ~30% more compute)

    def __post_init__(self):
        stu = get_arch(self.student)
        if self.teacher_checkpoint is not None and not self.teacher_checkpoint.strip():
            raise ValueError("model.teacher_checkpoint is empty (the teacher would stay random): give the weights "
                             "file, or null for a randomly initialised teacher")
        check_token_grid(self)
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"model.drop_path={self.drop_path} must be in [0, 1)")
        if self.decoder_dim and self.decoder_heads and self.decoder_dim % self.decoder_heads:
            raise ValueError(f"model.decoder_dim={self.decoder_dim} is not divisible by model.decoder_heads="
                             f"{self.decoder_heads}")
        if self.teacher is None:
            return
        tea = get_arch(self.teacher)
        s, t = list(self.student_align_layers), list(self.teacher_align_layers)
        if not s or len(s) != len(t):
            raise ValueError(
                f"model.student_align_layers={s} and model.teacher_align_layers={t} must be non-empty lists of "
                f"equal length (pairs of 1-based block indices)"
            )
        for name, layers, depth in (("student", s, stu.depth), ("teacher", t, tea.depth)):
            if any(b <= a for a, b in zip(layers, layers[1:])):
                raise ValueError(
                    f"model.{name}_align_layers={layers} must be strictly increasing, e.g. {sorted(set(layers))}: "
                    "the reference pairs student and teacher layers in depth order, so an unsorted or repeated "
                    "list would silently align other layers than you wrote")
            bad = [l for l in layers if not 1 <= l <= depth]
            if bad:
                raise ValueError(
                    f"model.{name}_align_layers has {bad}, outside 1..{depth} for {name} arch "
                    f"{getattr(self, name)!r}"
                )
        if tea.dim % 64:
            raise ValueError(f"teacher width {tea.dim} must be a multiple of 64 (the generator uses 64-wide heads)")

    @property
    def grid(self) -> Tuple[int, int, int]:
        """Token grid (T', H', W')."""
        side = self.input_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass
class LossConfig:
    rec: float = 1.0  # normalized-pixel reconstruction (the reference's --recfac)
    dir: float = 1.0  # direct alignment (--dirfac)
    gen: float = 1.0  # generation alignment (--genfac)
    align_kind: str = "l2"  # l2 | l1 | smooth_l1 (the reference's l2 | l1 | sml1)
    normalize_target: bool = True  # per-patch normalized pixels; a real switch here (the reference's can't be off)

    def __post_init__(self):
        if self.align_kind == "sml1":  # the reference's spelling
            self.align_kind = "smooth_l1"
        if self.align_kind not in ALIGN_KINDS:
            raise ValueError(f"loss.align_kind={self.align_kind!r} is not known; use one of {', '.join(ALIGN_KINDS)}")
