"""Asymmetric tube masks for AMD, built on the device as sorted token ids.

AMD masks the student harder (90%) than the teacher (75%) and keeps the student's
visible set inside the teacher's: per sample, one draw of noise ranks the positions;
the lowest-noise ones are student-visible (``vis``), the next ones are visible to the
teacher only (``diff``), the rest are hidden from both. ``mask_idx`` is everything the
student does not see (``diff`` + hidden), the tokens whose pixels it reconstructs.

Counts follow the reference (MCG-NJU/AMD ``TemporalConsistencyMaskingGenerator``):
per frame ``num_masked = int(ratio * H'W')``, so 0.9 / 0.75 on 196 positions gives
20 visible, 29 diff, 147 hidden from both. ``'t_consist'`` draws one spatial pattern
per sample and repeats it over the T' time slots (token id ``ti*H'W' + pos``);
``'random'`` draws over all ``T'H'W'`` tokens with the same count rule. (The
reference's ``random`` generator returns a single mask where three are unpacked, so
only ``t_consist`` ever ran there; ours gives nested masks for both.)

Indices are sorted ascending, which reproduces the token order of the reference's
boolean-mask selection ``x[~mask].reshape(B, -1, C)`` exactly. Everything stays on
the device: no ``.item()``, ``nonzero`` or boolean indexing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

MASK_TYPES = ("t_consist", "random")


@dataclass
class MaskConfig:
    """Masking recipe. ``type``: 't_consist' (tube, AMD default) or 'random'."""

    type: str = "t_consist"
    student_ratio: float = 0.9
    teacher_ratio: float = 0.75

    def __post_init__(self):
        if self.type not in MASK_TYPES:
            raise ValueError(f"mask.type={self.type!r} is not known; use one of {', '.join(MASK_TYPES)}")
        if not 0.0 <= self.teacher_ratio <= self.student_ratio < 1.0:
            raise ValueError(
                f"mask ratios must satisfy 0 <= teacher_ratio <= student_ratio < 1 (the student sees a subset of "
                f"what the teacher sees); got student_ratio={self.student_ratio}, teacher_ratio={self.teacher_ratio}"
            )


class Masks(NamedTuple):
    """Sorted int64 token ids, each ``(B, K)``: student-visible, teacher-only, student-masked."""

    vis_idx: torch.Tensor
    diff_idx: torch.Tensor
    mask_idx: torch.Tensor


def mask_counts(cfg: MaskConfig, grid: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """Token counts per sample ``(num_vis, num_diff, num_masked)`` for ``grid=(T', H', W')``.

    Known without drawing a mask, so models can size buffers and check shapes.
    """
    t, h, w = (int(g) for g in grid)
    if min(t, h, w) < 1:
        raise ValueError(f"token grid must be positive, got {grid}")
    unit = h * w if cfg.type == "t_consist" else t * h * w  # positions one draw ranks
    reps = t if cfg.type == "t_consist" else 1
    n_vis = unit - int(cfg.student_ratio * unit)
    n_teacher_vis = unit - int(cfg.teacher_ratio * unit)
    if n_vis < 1:
        raise ValueError(
            f"mask.student_ratio={cfg.student_ratio} leaves no visible token on a {unit}-position draw; lower it"
        )
    return n_vis * reps, (n_teacher_vis - n_vis) * reps, (unit - n_vis) * reps


def generate_masks(
    cfg: MaskConfig,
    batch: int,
    grid: Tuple[int, int, int],
    device: torch.device | str = "cpu",
    generator: Optional[torch.Generator] = None,
) -> Masks:
    """Draw ``batch`` nested masks for a ``(T', H', W')`` token grid; see the module docstring.

    ``generator`` (optional, for reproducible masks) must live on ``device``.
    """
    t, h, w = (int(g) for g in grid)
    n_vis, n_diff, _ = mask_counts(cfg, grid)
    device = torch.device(device)
    if cfg.type == "t_consist":
        unit, reps = h * w, t
        n_vis, n_diff = n_vis // t, n_diff // t
    else:
        unit, reps = t * h * w, 1
    noise = torch.rand(batch, unit, device=device, generator=generator)
    order = torch.argsort(noise, dim=1)  # lowest noise first: visible, then teacher-only, then hidden
    vis = order[:, :n_vis].sort(dim=1).values
    diff = order[:, n_vis:n_vis + n_diff].sort(dim=1).values
    masked = order[:, n_vis:].sort(dim=1).values
    if reps > 1:  # repeat the spatial pattern over time: id = ti * H'W' + pos (sorted because ti is outer)
        offsets = torch.arange(reps, device=device, dtype=torch.int64).mul_(unit).view(1, reps, 1)
        vis, diff, masked = ((ids.unsqueeze(1) + offsets).flatten(1) for ids in (vis, diff, masked))
    return Masks(vis.contiguous(), diff.contiguous(), masked.contiguous())
