"""Fine-tuning augmentation on the device, batched: RandAugment, random erasing, mixup / cutmix.

The recipe is the AMD / VideoMAE fine-tuning one (``run_class_finetuning.py`` defaults, timm / SlowFast
implementations); what differs is said where it differs.

- :class:`RandAugment` (``rand-m7-n4-mstd0.5-inc1``): per clip, ``num_ops`` ops drawn with replacement from
  the 15 "increasing" ops, each applied with probability ``prob`` at a magnitude ~ N(m, mstd) clipped to
  [0, 10] with a random sign, **the same op and arguments for every frame of the clip**. It runs on the
  uint8 clips the loader delivers (after the crop: the reference applies it to the full frames before the
  crop, which costs far more pixels and moves the grey fill of rotations/shifts to other places).
  Vectorised over the batch: a loop over the op kinds and rounds, never over clips.
- :func:`random_erase`: per clip with probability ``prob``, one rectangle (area 2%-1/3, aspect 0.3-3.3) shared
  by all frames, filled with per-pixel N(0, 1) noise in normalized space (timm ``mode='pixel'``, ``cube``).
- :func:`mix`: timm ``Mixup(mode='batch')``: one lambda per batch, mixup (Beta(0.8, 0.8)) or, with probability
  ``switch_prob``, cutmix (Beta(1, 1); one box for all frames, lambda corrected to the box area); the partner
  of clip i is clip B-1-i; targets are label-smoothed one-hots mixed with the same lambda.

Every draw comes from a ``torch.Generator`` the caller seeds per step, so a resumed run augments exactly as
an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# The 15 ops of timm / SlowFast "rand-...-inc1" (increasing magnitude = stronger), in their order.
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
       "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_SIGNED = {"Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
           "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
FILL = 128  # the grey the reference fills uncovered pixels of geometric ops with


@dataclass(frozen=True)
class RandAugmentSpec:
    num_ops: int = 4
    magnitude: float = 7.0
    magnitude_std: float = 0.5
    prob: float = 0.5
    max_level: float = 10.0

    @classmethod
    def parse(cls, text: str) -> Optional["RandAugmentSpec"]:
        """timm's config string, e.g. ``rand-m7-n4-mstd0.5-inc1``; '' / 'none' -> None (no RandAugment).

        Parts (any order, as timm's ``rand_augment_transform``): ``m`` magnitude in [0, 10] (timm's default 10),
        ``n`` ops per clip >= 0 (default 2), ``mstd`` magnitude noise std >= 0 (default 0), ``p`` probability
        each drawn op is applied, in [0, 1] (default 0.5), ``inc1`` the increasing op set, the only one
        implemented: required, since without it timm uses another op set. ``w`` (op weights) and ``mmax`` are not
        implemented. A missing part takes timm's default, so a string means what it means to the reference."""
        if text in ("", "none", None):
            return None
        example = "expected e.g. rand-m7-n4-mstd0.5-inc1 (the AMD recipe) or '' for none"
        parts = text.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment config {text!r} must start with 'rand-'; {example}")
        kw = {"magnitude": 10.0, "num_ops": 2, "magnitude_std": 0.0, "prob": 0.5}  # timm's defaults
        increasing = False
        for p in parts[1:]:
            key = p.rstrip("0123456789.")
            value = p[len(key):]
            try:
                if key in ("m", "n", "mstd", "p", "inc") and not value:
                    raise ValueError(f"part {p!r} has no number (a negative one cannot be written: '-' "
                                     "separates the parts)")
                if key == "m":
                    kw["magnitude"] = float(value)
                elif key == "n":
                    kw["num_ops"] = int(value)
                elif key == "mstd":
                    kw["magnitude_std"] = float(value)
                elif key == "p":
                    kw["prob"] = float(value)
                elif key == "inc":
                    if int(value) != 1:
                        raise ValueError("only the increasing op set (inc1) is implemented")
                    increasing = True
                else:
                    raise ValueError(f"unknown part {p!r} (known: m, n, mstd, p, inc)")
            except ValueError as e:
                raise ValueError(f"RandAugment config {text!r}: {e}; {example}") from None
        if not increasing:
            raise ValueError(f"RandAugment config {text!r} lacks 'inc1': only timm's increasing op set is "
                             f"implemented, and without inc1 timm would use the other one; add -inc1")
        bad = []
        if not 0 <= kw["magnitude"] <= cls.max_level:
            bad.append(f"magnitude m{_num(kw['magnitude'])} must be in [0, {cls.max_level:g}]")
        if kw["num_ops"] < 0:
            bad.append(f"n{kw['num_ops']} ops must be >= 0")
        if kw["magnitude_std"] < 0:
            bad.append(f"mstd{_num(kw['magnitude_std'])} must be >= 0")
        if not 0 <= kw["prob"] <= 1:
            bad.append(f"probability p{_num(kw['prob'])} must be in [0, 1]")
        if bad:
            raise ValueError(f"RandAugment config {text!r}: {'; '.join(bad)}; {example}")
        return cls(**kw)


def _num(x: float) -> str:
    return f"{x:g}"


def _blend(img: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: other + factor * (img - other), clipped; factor per clip, broadcast over the rest."""
    f = factor.view(-1, *([1] * (img.dim() - 1)))
    return (other + f * (img - other)).clamp_(0, 255)


def _grey(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's 'L'), keepdim over the channel axis (dim 2 of (B, T, 3, H, W))."""
    w = torch.tensor([0.299, 0.587, 0.114], device=img.device).view(1, 1, 3, 1, 1)
    return (img * w).sum(2, keepdim=True)


def _affine(img: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) float, per-clip 2x3 affine maps in normalized coordinates (output -> input), grey fill."""
    B, T, C, H, W = img.shape
    grid = F.affine_grid(theta.repeat_interleave(T, 0), (B * T, C, H, W), align_corners=False)
    x = img.reshape(B * T, C, H, W) - FILL  # sample around the fill value: out-of-range pixels become FILL
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + FILL).reshape(B, T, C, H, W)


def _apply(op: str, img: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """One op on (b, T, 3, H, W) float clips in [0, 255] at per-clip signed levels in [-10, 10] (m/10 scale)."""
    B = img.shape[0]
    frac = level / 10.0  # in [-1, 1], signed for the symmetric ops
    if op == "AutoContrast":
        lo = img.amin(dim=(3, 4), keepdim=True)  # PIL autocontrast: per frame and channel
        hi = img.amax(dim=(3, 4), keepdim=True)
        scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
        return torch.where(hi > lo, (img - lo) * scale, img)
    if op == "Equalize":
        from torchvision.transforms.v2 import functional as TF

        T, C, H, W = img.shape[1:]
        return TF.equalize(img.round().to(torch.uint8).reshape(B * T, C, H, W)).reshape(img.shape).float()
    if op == "Invert":
        return 255.0 - img
    if op == "PosterizeIncreasing":
        bits = (4 - (frac.abs() * 4).long()).clamp(0, 8)  # 4 - int(4 m / 10) bits kept
        shift = (8 - bits).view(-1, 1, 1, 1, 1)
        return ((img.long() >> shift) << shift).float()
    if op == "SolarizeIncreasing":
        thresh = (256 - (frac.abs() * 256).long()).float().view(-1, 1, 1, 1, 1)
        return torch.where(img >= thresh, 255.0 - img, img)
    if op == "SolarizeAdd":
        add = (frac.abs() * 110).long().float().view(-1, 1, 1, 1, 1)
        return torch.where(img < 128, (img + add).clamp(0, 255), img)
    if op == "ColorIncreasing":
        return _blend(img, _grey(img).expand_as(img), 1.0 + 0.9 * frac)
    if op == "ContrastIncreasing":
        mean = _grey(img).mean(dim=(2, 3, 4), keepdim=True)  # PIL: the mean of each frame's grey image
        return _blend(img, mean.expand_as(img), 1.0 + 0.9 * frac)
    if op == "BrightnessIncreasing":
        return _blend(img, torch.zeros_like(img), 1.0 + 0.9 * frac)
    if op == "SharpnessIncreasing":
        T, C, H, W = img.shape[1:]
        kernel = torch.tensor([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], device=img.device) / 13
        x = img.reshape(B * T * C, 1, H, W)
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3)).reshape(img.shape)
        return _blend(img, smooth, 1.0 + 0.9 * frac)
    theta = torch.zeros(B, 2, 3, device=img.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if op == "Rotate":
        a = frac * math.radians(30)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    elif op == "ShearX":
        theta[:, 0, 1] = 0.3 * frac
    elif op == "ShearY":
        theta[:, 1, 0] = 0.3 * frac
    elif op == "TranslateXRel":
        theta[:, 0, 2] = 2 * 0.45 * frac  # fraction of the width, in [-1, 1] coordinates
    elif op == "TranslateYRel":
        theta[:, 1, 2] = 2 * 0.45 * frac
    else:  # pragma: no cover - OPS lists exactly the ops above
        raise KeyError(op)
    return _affine(img, theta)


class RandAugment:
    """Batched RandAugment over ``(B, 3, T, H, W)`` uint8 clips (any strides); returns uint8 (see module doc)."""

    def __init__(self, spec: RandAugmentSpec):
        self.spec = spec

    def draws(self, batch: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ops (rounds, B) op indices, apply (rounds, B) bool, levels (rounds, B) signed) on the CPU."""
        s, shape = self.spec, (self.spec.num_ops, batch)
        ops = torch.randint(len(OPS), shape, generator=generator)
        apply = torch.rand(shape, generator=generator) < s.prob
        mag = (s.magnitude + s.magnitude_std * torch.randn(shape, generator=generator)).clamp(0, s.max_level)
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
        signed = torch.tensor([o in _SIGNED for o in OPS])[ops]
        return ops, apply, torch.where(signed, mag * sign, mag)

    def __call__(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        ops, apply, levels = self.draws(video.shape[0], generator)
        x = video.permute(0, 2, 1, 3, 4).float()  # (B, T, 3, H, W): frames x channels, as images
        for r in range(ops.shape[0]):
            for k, name in enumerate(OPS):
                sel = torch.nonzero((ops[r] == k) & apply[r]).flatten()  # CPU tensors: no device sync
                if sel.numel():
                    idx = sel.to(x.device)
                    x[idx] = _apply(name, x[idx], levels[r, sel].to(x.device))
        return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 1, 3, 4)


def random_erase(video: torch.Tensor, prob: float, generator: torch.Generator, area=(0.02, 1 / 3),
                 log_aspect=(math.log(0.3), math.log(1 / 0.3)), tries: int = 10) -> torch.Tensor:
    """Normalized (B, 3, T, H, W) clips; per clip with probability ``prob`` one rectangle for every frame,
    filled with N(0, 1) noise per pixel (timm RandomErasing mode='pixel', max_count 1, cube)."""
    B, _, T, H, W = video.shape
    if prob <= 0:
        return video
    erase = torch.rand(B, generator=generator) < prob
    target = torch.empty(B, tries).uniform_(*area, generator=generator) * H * W
    aspect = torch.exp(torch.empty(B, tries).uniform_(*log_aspect, generator=generator))
    h = torch.sqrt(target * aspect).round().long()
    w = torch.sqrt(target / aspect).round().long()
    ok = (h < H) & (w < W)
    first = torch.argmax(ok.int(), dim=1)  # the first try that fits, as timm's loop takes it
    has = ok.any(dim=1) & erase
    h, w = h[torch.arange(B), first], w[torch.arange(B), first]
    top = (torch.rand(B, generator=generator) * (H - h + 1).clamp_min(1)).long()
    left = (torch.rand(B, generator=generator) * (W - w + 1).clamp_min(1)).long()
    ys = torch.arange(H).view(1, H, 1)
    xs = torch.arange(W).view(1, 1, W)
    box = ((ys >= top.view(B, 1, 1)) & (ys < (top + h).view(B, 1, 1)) & (xs >= left.view(B, 1, 1))
           & (xs < (left + w).view(B, 1, 1)) & has.view(B, 1, 1))
    if not bool(has.any()):  # a CPU tensor: no device sync
        return video
    # The noise is drawn where the clips are: a CPU draw of the whole batch would cost a host-to-device copy
    # of the clips' size every step. A device generator seeded from the CPU stream keeps runs reproducible.
    noise_gen = generator
    if video.device.type != "cpu":
        noise_gen = torch.Generator(device=video.device)
        noise_gen.manual_seed(int(torch.randint(2 ** 62, (), generator=generator)))
    noise = torch.randn(video.shape, generator=noise_gen, device=video.device, dtype=video.dtype)
    return torch.where(box.view(B, 1, 1, H, W).to(video.device, non_blocking=True), noise, video)


@dataclass(frozen=True)
class MixSpec:
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels.view(-1, 1), 1.0 - smoothing + off)


def mix(video: torch.Tensor, labels: torch.Tensor, num_classes: int, spec: MixSpec, generator: torch.Generator
        ) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """Batch-mode mixup / cutmix (see module doc). Returns (video, soft targets (B, classes), what was done)."""
    B, _, T, H, W = video.shape
    if B % 2:
        raise ValueError(f"mixup / cutmix pairs clip i with clip {B}-1-i: the batch of {B} clips must be even "
                         "(data.batch_size x data.num_sample)")
    targets = smooth_one_hot(labels, num_classes, spec.label_smoothing)
    if not spec.active or torch.rand((), generator=generator) >= spec.prob:
        return video, targets, {"kind": "none", "lam": 1.0}
    use_cutmix = spec.cutmix_alpha > 0 and (spec.mixup_alpha <= 0 or torch.rand((), generator=generator) < spec.switch_prob)
    alpha = spec.cutmix_alpha if use_cutmix else spec.mixup_alpha
    lam = _beta(alpha, generator)
    partner = video.flip(0)
    if use_cutmix:
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(H, (), generator=generator)), int(torch.randint(W, (), generator=generator))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        video = video.clone()
        video[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]  # the same box on every frame and channel
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)  # corrected to the box that fit
        info = {"kind": "cutmix", "lam": lam, "box": (y0, y1, x0, x1)}
    else:
        video = video * lam + partner * (1.0 - lam)
        info = {"kind": "mixup", "lam": lam}
    return video, targets * lam + targets.flip(0) * (1.0 - lam), info


def _beta(alpha: float, generator: torch.Generator) -> float:
    """Beta(alpha, alpha) from a seeded generator (two Gammas; torch's Beta sampler takes no generator)."""
    g = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
    return float(g[0] / g.sum())


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm SoftTargetCrossEntropy: mean over clips of -sum_c target_c log softmax(logits)_c (fp32)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
