"""Clip sampling / crop contract (amd_fast.data.sampling) against transcriptions of the reference
(VideoMAE ``VideoMAE._sample_train_indices`` + ``_video_TSN_decord_batch_loader``,
``GroupMultiScaleCrop._sample_crop_size``), and DataConfig / rank split basics. No video here."""
import itertools

import numpy as np
import pytest

from amd_fast.data import DataConfig
from amd_fast.data.sampling import (FIX_OFFSETS, center_crop_box, clip_indices, clip_start, multiscale_crop_box,
                                    scale_pairs)
from amd_fast.data.shards import rank_range


def reference_frame_ids(duration, offset, new_length, new_step):
    """VideoMAE _video_TSN_decord_batch_loader with num_segments=1, verbatim logic."""
    ids = []
    for _ in range(0, new_length * new_step, new_step):
        ids.append(offset)
        if offset + new_step < duration:
            offset += new_step
    return ids


def reference_start_range(duration, skip_length):
    """Starts VideoMAE _sample_train_indices can draw (num_segments=1)."""
    average_duration = duration - skip_length + 1
    return range(average_duration) if average_duration > 0 else range(1)


@pytest.mark.parametrize("num_frames,rate", [(16, 4), (8, 2), (16, 2), (4, 1)])
def test_clip_indices_match_reference_including_short_videos(num_frames, rate):
    for n in (1, 5, 12, 31, 32, 33, 64, 300):
        for start in reference_start_range(n, num_frames * rate):
            ours = clip_indices(n, start, num_frames, rate).tolist()
            assert ours == reference_frame_ids(n, start, num_frames, rate), (n, start)
            assert max(ours) < n


def test_clip_start_covers_exactly_the_reference_range():
    T, rate = 8, 2
    for n in (10, 16, 17, 40):
        starts = {clip_start(n, T, rate, u, train=True) for u in np.linspace(0, 1, 2001, endpoint=False)}
        assert starts == set(reference_start_range(n, T * rate)), n
    # eval: the middle clip, VideoMAE _sample_val_indices tick/2
    assert clip_start(40, T, rate, 0.99, train=False) == (40 - 16 + 1) // 2
    assert clip_start(10, T, rate, 0.5, train=False) == 0


def reference_crop(image_w, image_h, input_size, scales, max_distort, pair, offset):
    base = min(image_w, image_h)
    crop_sizes = [int(base * x) for x in scales]
    crop_h = [input_size if abs(x - input_size) < 3 else x for x in crop_sizes]
    crop_w = [input_size if abs(x - input_size) < 3 else x for x in crop_sizes]
    pairs = []
    for i, h in enumerate(crop_h):
        for j, w in enumerate(crop_w):
            if abs(i - j) <= max_distort:
                pairs.append((w, h))
    w, h = pairs[pair]
    w_step, h_step = (image_w - w) // 4, (image_h - h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step),
               (0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0),
               (w_step, h_step), (3 * w_step, h_step), (w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    x0, y0 = offsets[offset]
    return y0, x0, h, w


@pytest.mark.parametrize("h,w,size", [(80, 80, 64), (256, 340, 224), (128, 171, 112), (240, 320, 160)])
def test_multiscale_crop_matches_group_multiscale_crop(h, w, size):
    scales = [1, 0.875, 0.75, 0.66]
    pairs = scale_pairs(len(scales), 1)
    assert len(pairs) == 10  # 4 diagonal + 2*3 off by one
    for p, o in itertools.product(range(len(pairs)), range(len(FIX_OFFSETS))):
        box = multiscale_crop_box(h, w, size, scales, 1, p, o)
        assert box == reference_crop(w, h, size, scales, 1, p, o), (p, o)
        y0, x0, ch, cw = box
        assert 0 <= y0 and y0 + ch <= h and 0 <= x0 and x0 + cw <= w


def test_center_crop_is_centred_square_of_short_side():
    assert center_crop_box(80, 120) == (0, 20, 80, 80)
    assert center_crop_box(100, 60) == (20, 0, 60, 60)


def test_rank_ranges_partition_samples():
    for n, world in [(24, 2), (25, 3), (7, 4)]:
        ranges = [rank_range(n, r, world) for r in range(world)]
        covered = [i for lo, hi in ranges for i in range(lo, hi)]
        assert covered == list(range(n))


def test_dataconfig_rejects_bad_values_naming_the_choices():
    with pytest.raises(ValueError, match="dali, eager"):
        DataConfig(backend="ffmpeg")
    with pytest.raises(ValueError, match="num_sample"):
        DataConfig(num_sample=0)
    with pytest.raises(TypeError, match="valid fields"):
        DataConfig.from_kwargs(batchsize=4)
