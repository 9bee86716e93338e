"""Both loaders on the shared synthetic VP9 shards (80x80, 32 frames; train 24 clips in 3 tars,
val 8): same outputs, num_sample, rank split, resume. CPU DALI pipelines with 1 thread."""
import numpy as np
import pytest
import torch

from amd_fast.data import DataConfig, build_loader
from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD

BACKENDS = ["dali", "eager"]


def cfg_for(shards, backend, **kw):
    base = dict(shards=shards, backend=backend, device="cpu", batch_size=4, num_frames=8, sampling_rate=2,
                num_sample=1, input_size=64, num_workers=0, dali_threads=1, prefetch=1, seed=7)
    base.update(kw)
    return DataConfig(**base)


def fingerprints(video):
    """One tuple per clip: identifies a deterministic (eval-mode) clip of a sample."""
    return [tuple(np.round(v.float().mean(dim=(1, 2, 3)).numpy(), 2)) for v in video]


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_batches_shape_dtype_range_and_repeated_labels(synthetic_shards, backend):
    loader = build_loader(cfg_for(synthetic_shards, backend, num_sample=2, split="val"))
    assert loader.backend == backend and len(loader) == 2
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    batches = list(loader)
    assert len(batches) == 2
    for b in batches:
        v, y = b["video"], b["label"]
        assert v.shape == (8, 3, 8, 64, 64) and v.dtype == torch.float32 and v.device.type == "cpu"
        assert y.shape == (8,) and y.dtype == torch.int64
        assert torch.equal(y[0::2], y[1::2])  # video-major: both clips of a video carry its label
        assert lo - 1e-4 <= v.min() and v.max() <= hi + 1e-4
        assert v.std() > 0.3  # real pixels, not a constant fill
    assert sorted(torch.cat([b["label"][0::2] for b in batches]).tolist()) == sorted(
        torch.cat([b["label"] for b in list(build_loader(cfg_for(synthetic_shards, backend, split="val",
                                                                          train=False)))]).tolist())


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_sample_repeats_augment_the_same_decoded_frames(synthetic_shards, backend):
    # scales=[1] on 80x80 frames with input_size 80: every crop is the whole frame, so the
    # num_sample clips of a video are equal iff they share the decoded frames (same start).
    loader = build_loader(cfg_for(synthetic_shards, backend, split="val", num_sample=3, scales=[1.0],
                                  input_size=80, batch_size=2))
    b = next(iter(loader))
    v = b["video"].view(2, 3, *b["video"].shape[1:])
    assert torch.allclose(v[:, 0], v[:, 1]) and torch.allclose(v[:, 0], v[:, 2])
    assert not torch.allclose(v[0, 0], v[1, 0])


@pytest.mark.parametrize("rate", [2, 6])  # 6: span 48 > 32 frames, the reference clamps to 0,6,..,30,30,30
def test_both_loaders_give_the_same_frames_in_eval_mode(synthetic_shards, rate):
    # eval: middle clip, centre crop, no shuffle, no flip: the same samples in the same order.
    outs = {bk: list(build_loader(cfg_for(synthetic_shards, bk, split="val", train=False, sampling_rate=rate)))
            for bk in BACKENDS}
    assert len(outs["dali"]) == len(outs["eager"]) == 2
    for a, b in zip(outs["dali"], outs["eager"]):
        assert torch.equal(a["label"], b["label"])
        diff = (a["video"] - b["video"]).abs()
        # decoders differ only by YUV->RGB rounding (DALI is ~1-2 grey levels brighter than swscale)
        # and resize rounding: ~0.025 per frame here; the neighbouring frame (e.g. DALI's pad_mode
        # 'edge' repeating frame 31 instead of the stride grid's 30) gives 0.05-0.08
        per_frame = diff.mean(dim=(1, 3, 4))  # (clip, t)
        assert per_frame.max() < 0.04, per_frame.max()
        # and a wrong frame (start off by one stride) would differ more on moving shapes: 1.8x here (2.1x before
        # the eager loader scaled in YUV: it adds ~0.5 grey level of resampling difference, DALI converts to RGB
        # first); an off-by-one start would make the ratio <= 1
        assert (a["video"][:, :, 1:] - b["video"][:, :, :-1]).abs().mean() > 1.5 * diff.mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_output(synthetic_shards, backend):
    b = next(iter(build_loader(cfg_for(synthetic_shards, backend, split="val", dtype="bfloat16"))))
    assert b["video"].dtype == torch.bfloat16 and b["video"].shape == (4, 3, 8, 64, 64)
    assert b["video"].is_contiguous(memory_format=torch.channels_last_3d)  # T, H, W, C in memory


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_read_disjoint_samples_that_cover_the_epoch(synthetic_shards, backend):
    kw = dict(split="train", train=False, batch_size=3)
    whole = [f for b in build_loader(cfg_for(synthetic_shards, backend, **kw)) for f in fingerprints(b["video"])]
    assert len(set(whole)) == 24  # fingerprints tell the 24 clips apart
    parts = [[f for b in build_loader(cfg_for(synthetic_shards, backend, **kw), rank=r, world_size=2)
              for f in fingerprints(b["video"])] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 12
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == set(whole)
    # shuffled training epochs of a rank cover that rank's labels exactly once (no wrap, no duplicates)
    for r in range(2):
        eval_labels = sorted(y for b in build_loader(cfg_for(synthetic_shards, backend, **kw), r, 2)
                             for y in b["label"].tolist())
        train_loader = build_loader(cfg_for(synthetic_shards, backend, split="train", batch_size=3), r, 2)
        assert sorted(y for b in train_loader for y in b["label"].tolist()) == eval_labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_resumes_the_stream_and_epochs_reshuffle(synthetic_shards, backend):
    cfg = cfg_for(synthetic_shards, backend, split="train")
    first = build_loader(cfg)
    epoch0 = list(first)
    assert first.state_dict()["epoch"] == 1 and first.state_dict()["batch"] == 0
    epoch1 = list(first)
    assert len(epoch0) == len(epoch1) == 6
    assert not all(torch.equal(a["video"], b["video"]) for a, b in zip(epoch0, epoch1))  # new epoch, new order

    # stop after 2 batches of epoch 0, save, restore into a fresh loader: continue with batch 2
    stopped = build_loader(cfg)
    it = iter(stopped)
    next(it), next(it)
    state = stopped.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 2 and state["seed"] == 7
    resumed = build_loader(cfg)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a training loop calls this; it must not rewind the restored epoch
    rest = list(resumed)
    assert len(rest) == 4
    for a, b in zip(rest, epoch0[2:]):
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["video"], b["video"])
    resumed.set_epoch(1)
    assert torch.equal(next(iter(resumed))["video"], epoch1[0]["video"])


def test_throughput_reports_clips_per_second(synthetic_shards):
    from amd_fast.data.loader_speed import measure_clips_per_s

    r = measure_clips_per_s(cfg_for(synthetic_shards, "eager", split="val", num_sample=2), batches=3, warmup=1)
    assert r["backend"] == "eager" and r["clips"] == 3 * 8 and r["clips_per_s"] > 0
    assert r["data_wait_ms_per_batch"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_mirrors_some_clips_and_is_off_by_default(synthetic_shards, backend):
    kw = dict(split="val", num_sample=2, scales=[1.0], input_size=80, batch_size=8)
    for flip in (False, True):
        v = next(iter(build_loader(cfg_for(synthetic_shards, backend, flip=flip, **kw))))["video"]
        a, b = v[0::2], v[1::2]  # the two crops (= whole frame) of each video
        same = [torch.allclose(x, y) for x, y in zip(a, b)]
        mirrored = [torch.allclose(x, y.flip(-1)) for x, y in zip(a, b)]
        assert all(s or m for s, m in zip(same, mirrored))
        assert any(mirrored) and not all(mirrored) if flip else all(same)


def test_eager_batches_do_not_depend_on_the_number_of_workers(synthetic_shards):
    runs = [list(build_loader(cfg_for(synthetic_shards, "eager", split="val", num_sample=2, flip=True,
                                      num_workers=w))) for w in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == 2
    for a, b in zip(*runs):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_uneven_split_gives_every_rank_the_same_batch_count_and_parts_rotate(synthetic_shards, backend):
    kw = dict(split="val", train=False, batch_size=1)  # 8 samples over 3 ranks: parts of 2, 3, 3
    for drop_last, expected in ((True, 2), (False, 3)):
        for r in range(3):
            loader = build_loader(cfg_for(synthetic_shards, backend, drop_last=drop_last, **kw), r, 3)
            assert len(loader) == expected and len(list(loader)) == expected
    # epoch 1: rank 0 reads the part rank 1 read in epoch 0
    r0, r1 = (build_loader(cfg_for(synthetic_shards, backend, split="val", train=False), r, 2) for r in (0, 1))
    r0.set_epoch(1)
    assert [fingerprints(b["video"]) for b in r0] == [fingerprints(b["video"]) for b in r1]


@pytest.mark.gpu
def test_dali_mixed_decode_on_gpu_matches_eager(synthetic_shards):
    kw = dict(split="val", train=False, device="cuda")
    dali = list(build_loader(cfg_for(synthetic_shards, "dali", **kw)))
    eager = list(build_loader(cfg_for(synthetic_shards, "eager", **kw)))
    for a, b in zip(dali, eager):
        assert a["video"].is_cuda and a["label"].is_cuda
        assert torch.equal(a["label"], b["label"])
        assert (a["video"] - b["video"]).abs().mean() < 0.05


@pytest.mark.parametrize("pipelines", [2, 3])
def test_several_dali_pipelines_give_the_one_pipeline_stream_and_resume_exactly(synthetic_shards, pipelines):
    """data.dali_pipelines: each pipeline decodes a disjoint share of the rank's batches (k % P), handed out in
    order, so the stream equals the one-pipeline stream batch for batch; resume mid-epoch is exact."""
    one = list(build_loader(cfg_for(synthetic_shards, "dali", split="train", batch_size=2, dali_pipelines=1)))
    loader = build_loader(cfg_for(synthetic_shards, "dali", split="train", batch_size=2, dali_pipelines=pipelines))
    assert loader.num_pipelines == pipelines
    many = list(loader)
    assert len(many) == len(one) == 12
    for a, b in zip(many, one):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])
    # disjoint and complete: the epoch reads each of the rank's samples once, each pipeline its own batches
    batches = loader.epoch_batches(0)
    samples = [i for batch in batches for _, i in batch]
    assert sorted(samples) == list(range(24))
    shares = [{i for k, batch in enumerate(batches) if k % pipelines == p for _, i in batch} for p in range(pipelines)]
    assert all(not (shares[p] & shares[q]) for p in range(pipelines) for q in range(p + 1, pipelines))
    # resume after 5 batches (mid-way through the pipelines' round robin): the rest is identical
    stopped = build_loader(cfg_for(synthetic_shards, "dali", split="train", batch_size=2, dali_pipelines=pipelines))
    it = iter(stopped)
    for _ in range(5):
        next(it)
    resumed = build_loader(cfg_for(synthetic_shards, "dali", split="train", batch_size=2, dali_pipelines=pipelines))
    resumed.load_state_dict(stopped.state_dict())
    rest = list(resumed)
    assert len(rest) == 7 and all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, one[5:]))


def test_several_pipelines_keep_the_rank_split(synthetic_shards):
    for rank in (0, 1):
        one = build_loader(cfg_for(synthetic_shards, "dali", split="train", batch_size=2, dali_pipelines=1), rank, 2)
        two = build_loader(cfg_for(synthetic_shards, "dali", split="train", batch_size=2, dali_pipelines=2), rank, 2)
        assert one.epoch_batches(0) == two.epoch_batches(0)
        assert all(torch.equal(a["video"], b["video"]) for a, b in zip(one, two))


def test_dali_and_eager_read_the_same_samples_with_the_same_crops_in_train_mode(synthetic_shards):
    """One order and one clip plan for both loaders: the same labels batch for batch, and frames that differ
    only by the decoders' colour rounding (a different crop or start frame would differ far more)."""
    kw = dict(split="train", batch_size=4, num_sample=2)
    dali, eager = (list(build_loader(cfg_for(synthetic_shards, b, **kw))) for b in BACKENDS)
    assert len(dali) == len(eager) == 6
    for a, b in zip(dali, eager):
        assert torch.equal(a["label"], b["label"])
        assert (a["video"] - b["video"]).abs().mean() < 0.05


def test_auto_pipelines_is_one_on_cpu():
    from amd_fast.data.dali_pipeline import auto_pipelines

    assert auto_pipelines(torch.device("cpu")) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_iterating_the_eager_loader_leaves_torchs_global_rng_alone(synthetic_shards, workers):
    """A DataLoader draws a worker base seed at every iter(); from torch's global RNG that draw shifted the
    model's random draws (drop path) after a resume, which starts with an extra, partial epoch."""
    loader = build_loader(cfg_for(synthetic_shards, "eager", num_workers=workers))
    before = torch.random.get_rng_state()
    for epoch in range(2):
        loader.set_epoch(epoch)
        next(iter(loader))
    assert torch.equal(torch.random.get_rng_state(), before)


def _epochs(loader, n, keep):
    """``n`` epochs of ``loader``; ``keep(batch)`` is what the consumer holds on to of each batch."""
    out = []
    for _ in range(n):
        out += [keep(b) for b in loader]
    return out


def test_uint8_batches_held_by_the_consumer_are_never_overwritten(synthetic_shards):
    """On the CPU the workers' batches are handed out in shared buffers without a copy (``BatchRing``): a buffer is
    written again only once nothing holds the batch. A consumer that keeps every batch (more than the ring has)
    and one that keeps every third get the batches of a loader without workers; one that drops each batch makes
    the workers reuse a few buffers."""
    cfg = dict(split="train", num_sample=2, flip=True, dtype="uint8", prefetch=1)
    want = _epochs(build_loader(cfg_for(synthetic_shards, "eager", num_workers=0, **cfg)), 3, lambda b: b["video"])
    assert len(want) == 18 and want[0].dtype == torch.uint8
    held = _epochs(build_loader(cfg_for(synthetic_shards, "eager", num_workers=2, **cfg)), 3, lambda b: b["video"])
    assert all(torch.equal(a, b) for a, b in zip(want, held))
    views = [b["video"][::2] if k % 3 == 0 else b["video"].clone()
             for k, b in enumerate(_epochs(build_loader(cfg_for(synthetic_shards, "eager", num_workers=2, **cfg)), 3,
                                           lambda b: b))]
    assert all(torch.equal(a[::2] if k % 3 == 0 else a, b) for k, (a, b) in enumerate(zip(want, views)))
    buffers = _epochs(build_loader(cfg_for(synthetic_shards, "eager", num_workers=2, **cfg)), 3,
                      lambda b: (b["video"].data_ptr(), b["video"].float().mean().item()))
    assert [m for _, m in buffers] == [v.float().mean().item() for v in want]
    assert len({ptr for ptr, _ in buffers}) <= 2 * (1 + 3)  # workers x ring slots: reused, not one per batch


def _take_in_child(ring, q):
    q.put(ring.take(0)[0])


def test_a_spawned_worker_shares_the_rings_flags():
    """Under the spawn start method the ring is pickled to the worker: its buffers and flags stay shared (a worker
    whose flags were a private copy would never see a buffer freed, nor the main process see one taken)."""
    import torch.multiprocessing as mp

    from amd_fast.data.batch_ring import BatchRing

    ring = BatchRing(1, 3, (2, 2))
    ring.reset()  # the main process's numpy view of the flags exists before the worker starts
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_take_in_child, args=(ring, q))
    p.start()
    taken = q.get(timeout=120)
    p.join(timeout=60)
    assert taken == 0 and ring.busy.tolist() == [[1, 0, 0]]
