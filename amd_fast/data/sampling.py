"""The clip-sampling and crop contract that both loaders implement.

Frame indices (VideoMAE ``_sample_train_indices`` + ``_video_TSN_decord_batch_loader`` with
``num_segments=1``, which AMD's pretraining loader reuses):

- span ``L = num_frames * sampling_rate``; a video with ``N`` frames starts at
  ``start ~ U{0 .. N-L}`` when ``N >= L`` and at 0 otherwise (train), or at
  ``max(N-L+1, 0) // 2`` (eval: the middle clip, VideoMAE ``_sample_val_indices``).
- frame ``i`` is ``start + min(i, kmax) * sampling_rate`` with ``kmax = (N-1-start) // sampling_rate``:
  the reference only advances the offset while it stays inside the video, so a short video
  repeats its last reachable frame of the stride grid (no crash, no padding with black).

Repeated augmentation (``num_sample``): as in AMD / VideoMAEv2 ``__getitem__``, one clip is
decoded per video and the crop transform is applied ``num_sample`` times to the *same* frames
(same start, independent crops/flips). Rows are video-major: video0 crop0, video0 crop1, video1 ...

Multi-scale crop (VideoMAE ``GroupMultiScaleCrop(input_size, [1, .875, .75, .66])``, defaults
``max_distort=1, fix_crop=True, more_fix_crop=True``): crop sizes ``int(short_side * scale)``,
snapped to ``input_size`` when within 3 px; a (height-scale i, width-scale j) pair with
``|i-j| <= max_distort`` is drawn uniformly; the offset is one of 13 fixed grid positions in
units of ``(W-cw)//4`` / ``(H-ch)//4``; then bilinear (antialiased) resize to input_size².
Eval: centre crop of side ``short_side``, resized to input_size².

Both loaders get every number of a clip from :func:`plan_clip` (frame indices, crop boxes, flips),
drawn from a generator seeded with ``(seed, epoch, rank, position)``: the eager loader applies the plan
with PyAV + torch, the DALI graph with its decoder and resize. A sample therefore gets the same clip
from either loader (up to the decoders' colour conversion and resize rounding), and the clip of a
position never depends on how many workers or pipelines produced the batches before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

# VideoMAE GroupMultiScaleCrop.fill_fix_offset(more_fix_crop=True): (w_units, h_units) of the step.
FIX_OFFSETS: Tuple[Tuple[int, int], ...] = (
    (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
    (0, 2), (4, 2), (2, 4), (2, 0),
    (1, 1), (3, 1), (1, 3), (3, 3),
)
SNAP_PX = 3  # crop sizes within 3 px of input_size snap to it (reference quirk, kept)


def scale_pairs(num_scales: int, max_distort: int) -> Tuple[Tuple[int, int], ...]:
    """(i_h, j_w) scale-index pairs the crop draws from uniformly, in the reference's order."""
    return tuple((i, j) for i in range(num_scales) for j in range(num_scales) if abs(i - j) <= max_distort)


def clip_start(num_video_frames: int, num_frames: int, sampling_rate: int, u: float, train: bool) -> int:
    """First frame of the clip. ``u`` in [0, 1) is the random draw (ignored in eval)."""
    span = num_frames * sampling_rate
    room = num_video_frames - span + 1  # number of valid starts when > 0
    if not train:
        return max(room, 0) // 2
    if room <= 0:
        return 0
    return min(int(u * room), room - 1)


def clip_indices(num_video_frames: int, start: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """Frame indices of the clip (reference clamping: repeat the last reachable stride frame)."""
    kmax = max(num_video_frames - 1 - start, 0) // sampling_rate
    return start + np.minimum(np.arange(num_frames), kmax) * sampling_rate


def crop_sizes(short_side: int, input_size: int, scales: Sequence[float]) -> list:
    sizes = [int(short_side * s) for s in scales]
    return [input_size if abs(x - input_size) < SNAP_PX else x for x in sizes]


def multiscale_crop_box(height: int, width: int, input_size: int, scales: Sequence[float], max_distort: int,
                        pair_draw: int, offset_draw: int) -> Tuple[int, int, int, int]:
    """(y0, x0, crop_h, crop_w) for draws ``pair_draw`` (index into scale_pairs) and
    ``offset_draw`` (index into FIX_OFFSETS)."""
    sizes = crop_sizes(min(height, width), input_size, scales)
    i, j = scale_pairs(len(scales), max_distort)[pair_draw]
    ch, cw = sizes[i], sizes[j]
    a, b = FIX_OFFSETS[offset_draw]
    return b * ((height - ch) // 4), a * ((width - cw) // 4), ch, cw


def center_crop_box(height: int, width: int) -> Tuple[int, int, int, int]:
    """Eval crop: the centred square of side short_side."""
    s = min(height, width)
    return (height - s) // 2, (width - s) // 2, s, s


@dataclass(frozen=True)
class ClipPlan:
    """Everything random or size-dependent about one sample's clips (``num_sample`` crops of one decode)."""

    indices: np.ndarray  # (num_frames,) frame indices into the video
    boxes: Tuple[Tuple[int, int, int, int], ...]  # per crop: (y0, x0, crop_h, crop_w) in the decoded frame
    flips: Tuple[bool, ...]  # per crop: mirror horizontally

    @property
    def start(self) -> int:
        return int(self.indices[0])

    @property
    def distinct(self) -> int:
        """How many distinct frames the clip uses (the last reachable frame repeats after them)."""
        return int(np.unique(self.indices).size)

    @property
    def order(self) -> np.ndarray:
        """(num_frames,) int32: position of each clip frame among the ``distinct`` decoded ones."""
        return np.searchsorted(np.unique(self.indices), self.indices).astype(np.int32)


def sample_rng(seed: int, epoch: int, rank: int, position: int) -> np.random.Generator:
    """The generator of one position of one rank's epoch (both loaders use it)."""
    return np.random.default_rng([seed, epoch, rank, position])


def plan_clip(cfg, num_video_frames: int, height: int, width: int, rng: np.random.Generator) -> ClipPlan:
    """The clip(s) of one sample for ``cfg`` (a DataConfig).

    Training: frames by ``cfg.sampling``, then per crop a box by ``cfg.crop`` and a flip coin (always
    drawn, so the stream does not depend on ``cfg.flip``). Evaluation: view ``cfg.view`` of the
    ``test_segments x test_crops`` deterministic views (``eval_indices``, ``eval_crop_box``)."""
    T, rate = cfg.num_frames, cfg.sampling_rate
    if not cfg.train:
        chunk, split = divmod(cfg.view, cfg.test_crops)
        indices = eval_indices(cfg.sampling, num_video_frames, T, rate, chunk, cfg.test_segments)
        box = eval_crop_box(height, width, cfg.input_size, split, cfg.test_crops)
        return ClipPlan(indices, (box,) * cfg.num_sample, (False,) * cfg.num_sample)
    if cfg.sampling == "window":
        indices = window_indices(num_video_frames, T, rate, rng.random())
    elif cfg.sampling == "segments":
        indices = segment_indices(num_video_frames, T, rng)
    else:
        indices = clip_indices(num_video_frames, clip_start(num_video_frames, T, rate, rng.random(), True), T, rate)
    n_pairs = len(scale_pairs(len(cfg.scales), cfg.max_distort))
    boxes: List[Tuple[int, int, int, int]] = []
    flips: List[bool] = []
    for _ in range(cfg.num_sample):
        if cfg.crop == "resized":
            boxes.append(random_resized_crop_box(height, width, cfg.rrc_scale, cfg.rrc_ratio, rng))
        else:
            pair, offset = int(rng.integers(n_pairs)), int(rng.integers(len(FIX_OFFSETS)))
            boxes.append(multiscale_crop_box(height, width, cfg.input_size, cfg.scales, cfg.max_distort, pair,
                                             offset))
        flips.append(bool(cfg.flip and rng.random() < 0.5))
    return ClipPlan(indices, tuple(boxes), tuple(flips))


# ---- fine-tuning: the reference's dataset formulas (MCG-NJU/AMD dataset/datasets.py) ------------------------

def window_indices(n: int, num_frames: int, rate: int, u: float) -> np.ndarray:
    """Kinetics fine-tuning (``VideoClsDataset.loadvideo_decord``): a window of ``num_frames * rate`` frames ending
    at a random frame, ``num_frames`` indices spread over it by linspace; a shorter video is covered whole
    and its last frame repeated. ``u`` in [0, 1) is the draw of ``np.random.randint(converted_len, n)``."""
    span = num_frames * rate
    if n <= span:
        idx = np.linspace(0, n, num=n // rate)
        idx = np.concatenate((idx, np.ones(num_frames - n // rate) * n))
        return np.clip(idx, 0, n - 1).astype(np.int64)
    end = span + int(u * (n - span))
    idx = np.linspace(end - span, end, num=num_frames)
    return np.clip(idx, end - span, end - 1).astype(np.int64)


def segment_indices(n: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Something-Something fine-tuning (TSN): one random frame in each of ``num_frames`` equal segments."""
    avg = n // num_frames
    if avg > 0:
        return np.arange(num_frames) * avg + rng.integers(avg, size=num_frames)
    if n > num_frames:
        return np.sort(rng.integers(n, size=num_frames))
    return np.array([0] * (num_frames - n) + list(range(n)), dtype=np.int64)


def eval_indices(sampling: str, n: int, num_frames: int, rate: int, chunk: int, segments: int) -> np.ndarray:
    """Frames of temporal view ``chunk`` of ``segments`` (the reference's test mode).

    ``window`` (Kinetics): every ``rate``-th frame of the video (the last repeated up to ``num_frames``),
    and the view starts ``int(chunk * step)`` frames into that list, ``step = max((L - num_frames) /
    (segments - 1), 0)``. ``segments`` (SSv2): ``tick = n / num_frames``, frame ``int(tick * (x + chunk /
    segments))`` for x = 0..num_frames-1 (the reference's two views: segment starts and mid-points).
    ``stride`` (pretraining eval): the middle clip. One view of either test formula is the middle one."""
    if sampling == "segments":
        tick = n / num_frames
        return np.minimum((tick * (np.arange(num_frames) + chunk / segments)).astype(np.int64), n - 1)
    if sampling == "window":
        frames = list(range(0, n, rate))
        frames += [frames[-1]] * max(num_frames - len(frames), 0)
        L = len(frames)
        start = int(chunk * max((L - num_frames) / (segments - 1), 0)) if segments > 1 else max(L - num_frames, 0) // 2
        return np.asarray(frames[start:start + num_frames], dtype=np.int64)
    return clip_indices(n, clip_start(n, num_frames, rate, 0.0, False), num_frames, rate)


def eval_crop_box(height: int, width: int, size: int, split: int, crops: int) -> Tuple[int, int, int, int]:
    """Spatial view ``split`` of ``crops``: the reference resizes the short side to ``size`` and takes a
    ``size`` square at ``int(split * (long' - size) / (crops - 1))`` along the long side (centred for one
    crop). In source pixels: a square of the short side at the matching offset, resized to ``size`` later."""
    if crops == 1:
        return center_crop_box(height, width)
    short, long_ = min(height, width), max(height, width)
    long_resized = int(size * long_ / short)
    start = int(split * (long_resized - size) / (crops - 1))
    offset = min(round(start * short / size), long_ - short)
    return (offset, 0, short, short) if height >= width else (0, offset, short, short)


def random_resized_crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                            rng: np.random.Generator, tries: int = 10) -> Tuple[int, int, int, int]:
    """torchvision / SlowFast ``RandomResizedCrop`` parameters: area ~ U(scale) of the frame, log-aspect ~
    U(log ratio); the first of ``tries`` that fits, else the centre crop clamped to the ratio range."""
    area = height * width
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for _ in range(tries):
        target = rng.uniform(scale[0], scale[1]) * area
        ar = float(np.exp(rng.uniform(log_lo, log_hi)))
        w, h = int(round(np.sqrt(target * ar))), int(round(np.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalize_clips(video_u8, dtype):
    """uint8 clips (channels on dim 1, any strides) -> ImageNet-normalized ``dtype``, where they lie and with
    the same strides (both loaders move uint8 to the device first: 4x fewer bytes to copy than float)."""
    import torch

    if dtype == torch.uint8:  # raw pixels asked for (fine-tuning augments them before normalizing)
        return video_u8
    key = (str(video_u8.device), video_u8.dim())
    if key not in _NORM_TABLES:  # once per device: no per-batch host-to-device copy
        from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD

        shape = (1, 3) + (1,) * (video_u8.dim() - 2)
        _NORM_TABLES[key] = (torch.tensor([255 * m for m in IMAGENET_MEAN], device=video_u8.device).view(shape),
                             torch.tensor([1 / (255 * s) for s in IMAGENET_STD], device=video_u8.device).view(shape))
    mean, inv_std = _NORM_TABLES[key]
    x = video_u8.float().sub_(mean).mul_(inv_std)
    return x if dtype == torch.float32 else x.to(dtype)


_NORM_TABLES: dict = {}
