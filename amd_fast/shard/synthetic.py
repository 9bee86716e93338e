"""Synthetic labelled clips with a learnable signal (the demo's default dataset).

Class ``c`` of ``N`` = a shape moving in direction ``360*c/N`` degrees. Everything else is
nuisance drawn at random per clip: shape (disc/square/triangle), size, colour, speed,
start point (near the centre), background colour + gradient, and per-pixel noise. The first
frame therefore says nothing about the class; only the motion (the displacement over the
clip) does, which is what a video MAE has to model. Clips are deterministic in
(seed, split, index).
"""
from __future__ import annotations

import math
import zlib
from typing import List

import numpy as np

from .sources import SourceIndex, VideoRecord

FPS = 25


def class_names(n: int) -> List[str]:
    """'move_000deg', 'move_090deg', ...: zero-padded so sorted order == index order."""
    return [f"move_{round(360 * c / n) % 360:03d}deg" for c in range(n)]


def split_counts(total: int, splits) -> dict:
    """A quarter of ``total`` (at least 1) to each non-train split, the rest to train."""
    others = [s for s in splits if s != "train"]
    side = max(1, total // 4)
    counts = {s: side for s in others}
    if "train" in splits:
        counts["train"] = max(1, total - side * len(others))
    return counts


def synthetic_index(splits, count: int, classes: int, seed: int) -> SourceIndex:
    out = {}
    for split, n in split_counts(count, splits).items():
        # Balanced labels; the shard planner shuffles the order.
        out[split] = [VideoRecord(source=f"synthetic://{split}/{i}", label=i % classes,
                                  stem=f"synthetic_{split}_{i:06d}") for i in range(n)]
    return SourceIndex(class_names(classes), out)


def _rng(seed: int, source: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(source.encode())])


def render_clip(source: str, label: int, *, classes: int, frames: int, size: int, seed: int) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB clip of class ``label``; same inputs -> same pixels."""
    rng = _rng(seed, source)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: random colour plus a random linear gradient.
    bg = rng.uniform(0, 255, 3).astype(np.float32)
    gdir = rng.uniform(0, 2 * np.pi)
    grad = ((np.cos(gdir) * xx + np.sin(gdir) * yy) / size)[..., None] * rng.uniform(-30, 30, 3)
    background = bg + grad
    fg = rng.uniform(0, 255, 3).astype(np.float32)
    if np.abs(fg - bg).sum() < 150:  # keep the shape visible against the background
        fg = 255.0 - bg
    kind = rng.integers(3)
    radius = rng.uniform(0.1, 0.16) * size
    angle = 2 * math.pi * label / classes + rng.normal(0, 0.05)
    # Image y grows downwards, so negate to make 90deg mean "up".
    vx, vy = math.cos(angle), -math.sin(angle)
    # The shape starts near the centre and travels 30-40 % of the frame outwards. Why not anywhere:
    # with random start points a tiny encoder trained for minutes (the demo) cannot tell the
    # direction apart (probe at chance, even supervised); starting near the centre the first frames
    # still say nothing about the class, and the motion is large enough to be learned quickly.
    travel = rng.uniform(0.3, 0.4) * size
    speed = travel / max(frames - 1, 1)
    cx0 = size / 2 + rng.uniform(-0.05, 0.05) * size
    cy0 = size / 2 + rng.uniform(-0.05, 0.05) * size
    noise_sigma = rng.uniform(2, 8)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        cx, cy = cx0 + vx * speed * t, cy0 + vy * speed * t
        dx, dy = xx - cx, yy - cy
        if kind == 0:
            inside = dx * dx + dy * dy <= radius * radius
        elif kind == 1:
            inside = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
        else:
            inside = (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
        img = np.where(inside[..., None], fg, background)
        img = img + rng.normal(0, noise_sigma, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out
