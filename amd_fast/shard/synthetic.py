"""Synthetic labelled clips with a learnable signal: the demo's data and the bench's realistic set.

In both kinds, class ``c`` of ``N`` is a motion in direction ``360*c/N`` degrees, and everything
else is nuisance drawn at random per clip, so the first frame says nothing about the class; only
the motion does, which is what a video MAE has to model. Clips are deterministic in
(seed, split, index).

- ``shapes`` (default, the demo): a shape (disc/square/triangle) of random size and colour moving
  from near the centre over a random background gradient with pixel noise; square ``size`` px.
  Very cheap to encode and decode (a few kB per frame).
- ``scenes`` (the loader bench's realistic set): a camera panning and zooming over a large still
  scene with natural-image statistics (colour fields with a 1/f^2.6..3.2 power spectrum, hard-edged
  regions, sensor noise, brightness drift); 4:3 landscape with short side ``size``. The pan goes in
  the class's direction. Calibrated so that its bitrate matches camera video: at 426x320, 25 fps,
  VP9 (this tool's settings) and H.264 land in 20-60 kB/s, the range of Kinetics at 320p. It is
  not real video: no people, no cuts, no motion blur. (Measured on 6 clips of 250 frames: VP9
19-65 kB/s, H.264 16-48 kB/s; about 1.1 s to render a clip on one core.)

``min_frames`` (optional) gives each clip its own length, uniform in ``[min_frames, frames]``.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .sources import SourceIndex, VideoRecord

FPS = 25
CONTENTS = ("shapes", "scenes")


@dataclass(frozen=True)
class SyntheticSpec:
    """What ``--src synthetic`` renders (picklable: workers get it with each job)."""

    content: str = "shapes"
    classes: int = 4
    frames: int = 32
    size: int = 80
    min_frames: Optional[int] = None

    def frame_size(self) -> tuple:
        """(width, height) of the rendered clips."""
        if self.content == "scenes":
            w = round(self.size * 4 / 3)
            return w - w % 2, self.size
        return self.size, self.size


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


def render(source: str, label: int, spec: SyntheticSpec, seed: int) -> np.ndarray:
    """(frames, H, W, 3) uint8 RGB clip of class ``label``; the same inputs give the same pixels."""
    frames = spec.frames
    if spec.min_frames is not None:
        frames = int(_rng(seed, source + "#length").integers(spec.min_frames, spec.frames + 1))
    if spec.content == "scenes":
        w, h = spec.frame_size()
        return render_scene(source, label, classes=spec.classes, frames=frames, width=w, height=h, seed=seed)
    return render_clip(source, label, classes=spec.classes, frames=frames, size=spec.size, seed=seed)


def render_clip(source: str, label: int, *, classes: int, frames: int, size: int, seed: int) -> np.ndarray:
    """``shapes``: (frames, size, size, 3) uint8 RGB clip of class ``label``; same inputs -> same pixels."""
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


# ---- scenes --------------------------------------------------------------------------------------------------

def _power_law_field(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """A zero-mean, unit-variance random field whose power spectrum falls as 1/f^beta (natural images: ~2)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (beta / 2)
    field = np.fft.irfft2(spec, s=(h, w))
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _still_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 scene: two smooth colour fields mixed into RGB plus hard-edged regions."""
    fields = np.stack([_power_law_field(rng, h, w, rng.uniform(2.4, 3.0)) for _ in range(2)], -1)
    img = 128 + 40 * fields @ rng.uniform(-1, 1, (2, 3)).astype(np.float32) + rng.uniform(-40, 40, 3)
    regions = _power_law_field(rng, h, w, 3.2) > rng.uniform(-0.5, 0.5)
    img += regions[..., None] * rng.uniform(-60, 60, 3).astype(np.float32)
    return np.clip(img, 0, 255)


def _smooth_curve(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """n samples of a smooth random curve in [0, 1] (smoothstep between random knots)."""
    k = rng.uniform(0, 1, knots)
    x = np.linspace(0, knots - 1, n)
    i = np.clip(x.astype(int), 0, knots - 2)
    t = x - i
    t = t * t * (3 - 2 * t)
    return k[i] * (1 - t) + k[i + 1] * t


def render_scene(source: str, label: int, *, classes: int, frames: int, width: int, height: int,
                 seed: int) -> np.ndarray:
    """``scenes``: (frames, height, width, 3) uint8; a camera pans in the class's direction over a still scene
    1.8x the frame size, zooming slowly, with sensor noise and a brightness drift (see module doc)."""
    from PIL import Image

    rng = _rng(seed, source)
    H, W = int(height * 1.8), int(width * 1.8)
    scene = Image.fromarray(_still_scene(rng, H, W).astype(np.uint8))
    zoom = 0.55 + 0.4 * _smooth_curve(rng, frames, 3)  # crop window = zoom x scene size
    angle = 2 * math.pi * label / classes + rng.normal(0, 0.05)
    travel = np.linspace(-0.5, 0.5, frames) * rng.uniform(0.6, 1.0)  # along the direction, in free room units
    wobble = 0.08 * (_smooth_curve(rng, frames, 4) - 0.5)
    cx = 0.5 + travel * math.cos(angle) + wobble * math.sin(angle)
    cy = 0.5 - travel * math.sin(angle) + wobble * math.cos(angle)  # image y grows downwards: 90deg = up
    gain = 1.0 + 0.12 * (_smooth_curve(rng, frames, 3) - 0.5)
    noise = rng.standard_normal((8, height, width, 3)).astype(np.float32) * 1.5
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        ww, wh = W * zoom[t], H * zoom[t]
        x0, y0 = np.clip(cx[t], 0, 1) * (W - ww), np.clip(cy[t], 0, 1) * (H - wh)
        # a float box: sub-pixel camera motion, antialiased
        view = scene.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + ww, y0 + wh))
        frame = np.asarray(view, np.float32) * gain[t] + noise[t % 8]
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out
