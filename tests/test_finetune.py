"""Fine-tuning: recipes, layer decay, augmentation math, the reference's view formulas, checkpoint import with
position interpolation, distributed evaluation that counts every video once, exact resume after a kill."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from amd_fast.data.sampling import (eval_crop_box, eval_indices, random_resized_crop_box, segment_indices,
                                    window_indices)
from amd_fast.finetune import augment
from amd_fast.finetune.config import load_finetune_config
from amd_fast.models.classifier import ClassifierConfig, VideoClassifier

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "finetune-tiny-cpu.yaml"


# ---- recipes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, arch, classes, lr, epochs, segments, sampling, flip", [
    ("vits-k400", "vit_small", 400, 1e-3, 150, 5, "window", True),
    ("vitb-k400", "vit_base", 400, 7e-4, 90, 5, "window", True),
    ("vits-ssv2", "vit_small", 174, 1e-3, 40, 2, "segments", False),
    ("vitb-ssv2", "vit_base", 174, 5e-4, 30, 2, "segments", False),
    ("vits-ucf101", "vit_small", 101, 5e-4, 100, 5, "window", True),
    ("vitb-hmdb51", "vit_base", 51, 5e-4, 100, 5, "window", True),
])
def test_recipes_load_with_the_reference_values(name, arch, classes, lr, epochs, segments, sampling, flip):
    c = load_finetune_config(REPO / "configs" / f"finetune-{name}.yaml")
    assert (c.model.arch, c.model.num_classes, c.optim.lr, c.train.epochs) == (arch, classes, lr, epochs)
    assert (c.eval.test_segments, c.eval.test_crops, c.data.sampling, c.data.flip) == (segments, 3, sampling, flip)
    assert (c.data.batch_size, c.data.num_sample, c.data.num_frames, c.data.input_size) == (16, 2, 16, 224)
    assert c.optim.betas == [0.9, 0.999] and c.optim.weight_decay == 0.05 and c.optim.warmup_epochs == 5
    assert c.optim.warmup_lr == 0.0 and c.optim.clip_grad is None and c.model.init_scale == 0.001
    assert c.aug.randaugment == "rand-m7-n4-mstd0.5-inc1" and c.aug.reprob == 0.25 and c.aug.smoothing == 0.1
    assert (c.aug.mixup, c.aug.cutmix) == (0.8, 1.0)
    if "ucf" in name or "hmdb" in name:  # no AMD recipe: VideoMAE v1's UCF101 script
        assert c.optim.layer_decay == 0.7 and c.model.drop_path == 0.2 and c.eval.split == "test"
    else:
        assert c.optim.layer_decay == 0.75 and c.model.drop_path == 0.1 and c.eval.split == "val"


# ---- optimizer ---------------------------------------------------------------------------------------------------

def test_layer_decay_groups_follow_the_reference():
    from amd_fast.finetune.config import FinetuneOptimConfig
    from amd_fast.trainer.optim import apply_schedules, build_optimizer, build_schedules, layer_decay_groups

    model = VideoClassifier(ClassifierConfig(arch="vit_small", num_classes=10))
    groups = layer_decay_groups(model, 0.05, 0.75)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["encoder.patch_embed.proj.weight"])] == pytest.approx(0.75 ** 13)
    assert scale[id(named["encoder.blocks.0.mlp.fc1.weight"])] == pytest.approx(0.75 ** 12)
    assert scale[id(named["encoder.blocks.11.attn.qkv.weight"])] == pytest.approx(0.75)
    assert scale[id(named["head.weight"])] == scale[id(named["fc_norm.weight"])] == 1.0
    assert wd[id(named["head.weight"])] == 0.05 and wd[id(named["head.bias"])] == 0.0
    assert wd[id(named["encoder.blocks.3.norm1.weight"])] == 0.0 and wd[id(named["encoder.blocks.3.attn.qkv.bias"])] == 0
    assert sum(len(g["params"]) for g in groups) == len(named)
    cfg = FinetuneOptimConfig(lr=1e-3, warmup_epochs=1)
    opt = build_optimizer(groups, cfg, 0.0, torch.device("cpu"))
    sched = build_schedules(cfg, total_steps=10, steps_per_epoch=5, global_videos=256)
    assert sched.lr[0] == 0.0  # the reference's warmup starts at 0
    apply_schedules(opt, sched, 5)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])


# ---- augmentation ------------------------------------------------------------------------------------------------

def test_mixup_and_cutmix_label_math():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    soft = augment.smooth_one_hot(labels, 5, 0.1)
    assert torch.allclose(soft.sum(1), torch.ones(4)) and soft[0, 0] == pytest.approx(0.9 + 0.02)
    seen = set()
    for _ in range(20):
        out, targets, info = augment.mix(video, labels, 5, augment.MixSpec(), g)
        lam = info["lam"]
        assert torch.allclose(targets, lam * soft + (1 - lam) * soft.flip(0), atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        if info["kind"] == "mixup":
            assert torch.allclose(out, lam * video + (1 - lam) * video.flip(0), atol=1e-6)
        else:
            y0, y1, x0, x1 = info["box"]
            assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 64)  # corrected to the box that fit
            assert torch.equal(out[..., y0:y1, x0:x1], video.flip(0)[..., y0:y1, x0:x1])  # every frame alike
            inside = torch.zeros(8, 8, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(out[..., ~inside], video[..., ~inside])
        seen.add(info["kind"])
    assert seen == {"mixup", "cutmix"}
    with pytest.raises(ValueError, match="must be even"):
        augment.mix(video[:3], labels[:3], 5, augment.MixSpec(), g)


def test_randaugment_applies_the_same_ops_to_every_frame():
    g = torch.Generator().manual_seed(1)
    frame = torch.randint(0, 256, (8, 3, 1, 24, 24), dtype=torch.uint8)
    video = frame.expand(8, 3, 4, 24, 24).contiguous()  # 4 identical frames per clip
    spec = augment.RandAugmentSpec.parse("rand-m9-n4-mstd0.5-inc1")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std) == (4, 9.0, 0.5)
    ra = augment.RandAugment(spec)
    ops = set()
    for _ in range(6):
        state = g.get_state()
        names, apply, _ = ra.draws(8, g)
        ops |= {augment.OPS[k] for k in names[apply].tolist()}
        g.set_state(state)
        out = ra(video, g)
        assert out.dtype == torch.uint8 and out.shape == video.shape
        assert all(torch.equal(out[:, :, t], out[:, :, 0]) for t in range(1, 4))  # frames stay identical
        assert (out != video).any()
    assert len(ops) >= 12  # nearly every op kind ran


def test_each_randaugment_op_keeps_frames_identical():
    frame = torch.randint(0, 256, (2, 1, 3, 16, 16)).float()
    clip = frame.expand(2, 3, 3, 16, 16)
    for op in augment.OPS:
        out = augment._apply(op, clip, torch.tensor([7.0, -4.0]))
        assert all(torch.allclose(out[:, t], out[:, 0]) for t in (1, 2)), op


def test_random_erasing_one_box_for_all_frames():
    g = torch.Generator().manual_seed(3)
    video = torch.zeros(16, 3, 4, 32, 32)
    out = augment.random_erase(video, 1.0, g)
    erased = out != 0
    assert erased.any()
    for b in range(16):
        box = erased[b].any(0)  # (T, H, W) where any channel changed
        assert all(torch.equal(box[t], box[0]) for t in range(4))
        frac = box[0].float().mean().item()
        assert frac == 0 or 0.015 < frac < 0.34
    assert torch.equal(augment.random_erase(video, 0.0, g), video)


# ---- the reference's sampling formulas -------------------------------------------------------------------------

def test_window_and_segment_sampling_match_the_reference():
    # VideoClsDataset.loadvideo_decord with converted_len 64: end_idx = randint(64, n)
    n, u = 300, 0.25
    end = 64 + int(u * (300 - 64))
    ref = np.clip(np.linspace(end - 64, end, num=16), end - 64, end - 1).astype(np.int64)
    assert np.array_equal(window_indices(n, 16, 4, u), ref)
    short = window_indices(40, 16, 4, 0.0)  # shorter than the window: all of it, the last frame repeated
    assert np.array_equal(short, np.clip(np.concatenate([np.linspace(0, 40, 10), np.ones(6) * 40]), 0, 39).astype(int))
    rng = np.random.default_rng(0)
    idx = segment_indices(100, 16, rng)
    assert all(6 * k <= i < 6 * (k + 1) for k, i in enumerate(idx))  # one frame in each of 16 segments of 6


def test_test_views_follow_the_reference():
    # Kinetics: frames at stride 4, temporal_step = (L - 16) / (segments - 1), start = int(chunk * step)
    n = 250
    frames = list(range(0, n, 4))
    step = (len(frames) - 16) / 4
    for chunk in range(5):
        start = int(chunk * step)
        assert list(eval_indices("window", n, 16, 4, chunk, 5)) == frames[start:start + 16]
    # SSv2: tick = n / 16, view c takes int(tick * x + tick * c / 2)
    tick = 100 / 16
    assert list(eval_indices("segments", 100, 16, 4, 1, 2)) == [int(tick * x + tick / 2) for x in range(16)]
    # spatial: short side to 224, three 224 crops along the long side: start = int(split * (long' - 224) / 2)
    h, w = 320, 426
    long_resized = int(224 * 426 / 320)
    for split in range(3):
        y0, x0, ch, cw = eval_crop_box(h, w, 224, split, 3)
        assert (y0, ch, cw) == (0, 320, 320)
        assert x0 == min(round(int(split * (long_resized - 224) / 2) * 320 / 224), 106)
    assert eval_crop_box(h, w, 224, 2, 3)[1] + 320 == 426  # the last view ends at the right edge
    assert eval_crop_box(w, h, 224, 0, 1) == ((426 - 320) // 2, 0, 320, 320)  # one crop: centred (portrait)


def test_random_resized_crop_stays_inside_with_its_area_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y0, x0, h, w = random_resized_crop_box(320, 426, (0.08, 1.0), (0.75, 1.3333), rng)
        assert 0 <= y0 and y0 + h <= 320 and 0 <= x0 and x0 + w <= 426
        assert 0.07 <= h * w / (320 * 426) <= 1.0


# ---- checkpoint import ------------------------------------------------------------------------------------------

def test_videomae_checkpoint_with_a_learned_position_table_is_interpolated():
    from amd_fast.models.pretrained import interpolate_position_table, load_pretrained

    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=5, input_size=32, patch_size=8, num_frames=4)
    src = VideoClassifier(cfg)
    state = {k: v for k, v in src.encoder.state_dict().items() if k != "pos_embed"}
    learned = torch.randn(1, 2 * 2 * 2, 96)  # trained at 16 px: a (2, 2, 2) grid
    ckpt = {"model": {**{f"encoder.{k}": v for k, v in state.items()}, "encoder.pos_embed": learned,
                      "head.weight": torch.randn(5, 96), "head.bias": torch.randn(5)}}
    dst = VideoClassifier(cfg)
    report = load_pretrained(dst, ckpt)
    want = interpolate_position_table(learned[0], (2, 2, 2), (2, 4, 4))
    assert torch.allclose(dst.encoder.pos_embed, want) and "pos_embed" in report.loaded
    per_slot = torch.nn.functional.interpolate(learned[0].reshape(2, 2, 2, 96).permute(0, 3, 1, 2), size=(4, 4),
                                               mode="bicubic", align_corners=False)
    assert torch.allclose(want.reshape(2, 4, 4, 96).permute(0, 3, 1, 2), per_slot, atol=1e-6)  # bicubic in space
    assert torch.equal(dst.head.weight, ckpt["model"]["head.weight"]) and "head.weight" in report.loaded
    other = VideoClassifier(ClassifierConfig(arch="vit_tiny_cpu", num_classes=7, input_size=32, patch_size=8,
                                             num_frames=4))
    assert "head.weight" in load_pretrained(other, ckpt).skipped  # another class count: the head starts fresh


def test_token_pooling_keeps_where_and_when():
    """pool='tokens' feeds every fc_norm'ed token to the head (the demo's setting): moving one token's content to
    another position changes the logits, which the reference's mean pooling (order-blind after the blocks)
    cannot see; a mean-pooled checkpoint's head (another shape) is skipped, not forced in."""
    from amd_fast.models.pretrained import load_pretrained

    kw = dict(arch="vit_tiny_cpu", num_classes=3, input_size=16, patch_size=8, num_frames=4)
    tokens, mean = VideoClassifier(ClassifierConfig(pool="tokens", **kw)), VideoClassifier(ClassifierConfig(**kw))
    n = 2 * 2 * 2
    assert tokens.head.in_features == n * 96 and mean.head.in_features == 96
    torch.manual_seed(0)
    with torch.no_grad():
        tokens.head.weight.normal_()
    feats = torch.randn(2, n, 96)
    swapped = feats[:, torch.roll(torch.arange(n), 1)]

    def head(x):  # the pooling step alone, after the blocks
        return tokens.head(tokens.fc_norm(x).flatten(1))

    assert not torch.allclose(head(feats), head(swapped))
    assert tokens(torch.randn(2, 3, 4, 16, 16)).shape == (2, 3)
    report = load_pretrained(tokens, {"model": mean.state_dict()})
    assert "head.weight" in report.skipped and "fc_norm.weight" in report.loaded
    with pytest.raises(ValueError, match="model.pool"):
        ClassifierConfig(pool="max", **kw)


def test_pretrained_file_of_another_architecture_names_both_shapes():
    from amd_fast.models import CheckpointImportError, load_pretrained

    small = VideoClassifier(ClassifierConfig(arch="vit_mini_cpu", num_classes=4, input_size=32, patch_size=8,
                                             num_frames=4))
    tiny = VideoClassifier(ClassifierConfig(arch="vit_tiny_cpu", num_classes=4, input_size=32, patch_size=8,
                                            num_frames=4))
    with pytest.raises(CheckpointImportError, match=r"shape \(128, .*\) but the model's is \(96, "):
        load_pretrained(tiny, {"model": small.state_dict()})


# ---- whole runs ---------------------------------------------------------------------------------------------------

def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    return env


def _overrides(shards, out, steps, *extra):
    return [f"data.shards={shards}", "data.input_size=32", "data.num_workers=0", f"train.max_steps={steps}",
            "train.log_every=1", f"log.dir={out}", "log.progress=false", "eval.test_segments=2", "eval.test_crops=1",
            *extra]


def _metrics(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r], [r for r in rows if "event" in r]


@pytest.mark.slow
def test_tiny_finetune_resumes_exactly_after_kill_9(synthetic_shards, tmp_path):
    steps = 8
    ref = tmp_path / "ref"
    cmd = [sys.executable, "-m", "amd_fast.finetune", "--config", str(TINY)]
    r = subprocess.run(cmd + _overrides(synthetic_shards, ref, steps), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test (val): top-1" in r.stdout
    rows, events = _metrics(ref)
    test = [e for e in events if e["event"] == "test"][0]
    assert test["videos"] == 8 and test["views"] == 2 and 0 <= test["top1"] <= 1
    report = json.loads((ref / "eval" / "test.json").read_text())
    assert np.sum(report["confusion"]) == 8 and (ref / "eval" / "test-confusion.png").exists()

    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + _overrides(synthetic_shards, run, steps, "checkpoint.every_n_steps=3"), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len(_metrics(run)[0]) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd + _overrides(synthetic_shards, run, steps, "checkpoint.every_n_steps=3"), cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr, r.stderr[-3000:]
    got, want = _metrics(run)[0], rows
    assert [m["step"] for m in got] == list(range(1, steps + 1))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-4, abs=1e-6), g["step"]


def _uneven_shards(tmp_path):
    from amd_fast.shard import ShardOptions, build_shards

    out = tmp_path / "shards7"
    build_shards(ShardOptions(src="synthetic", out=out, splits=("train", "val"), synthetic_count=28,
                              synthetic_frames=16, synthetic_size=32, samples_per_shard=4, workers=0, progress=False))
    return out  # val: 7 videos


@pytest.mark.slow
def test_distributed_eval_counts_every_video_once(tmp_path):
    shards = _uneven_shards(tmp_path)
    enc = tmp_path / "encoder.pth"
    torch.manual_seed(0)
    clf = VideoClassifier(ClassifierConfig(arch="vit_tiny_cpu", num_classes=4, input_size=32, patch_size=8,
                                           num_frames=8))
    torch.save({"model": clf.state_dict()}, enc)  # head included: --eval refuses an encoder without one
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "amd_fast.finetune", "--config", str(TINY), "--eval", f"model.pretrained={enc}",
           *_overrides(shards, out, 1, "eval.batch_size=3")]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "eval" / "test.json").read_text())
    assert report["videos"] == 7  # 4 + 3 on the two ranks, the padded repeat counted once
    assert int(np.sum(report["confusion"])) == 7 and report["views"] == 2


def test_labels_beyond_num_classes_and_unlabelled_shards_are_one_line(synthetic_shards, tmp_path, capsys):
    from amd_fast.finetune.__main__ import main

    rc = main(["--config", str(TINY), *_overrides(synthetic_shards, tmp_path / "a", 1, "model.num_classes=3")])
    err = capsys.readouterr().err
    assert rc == 2 and "4 classes" in err and "model.num_classes=3" in err and "Traceback" not in err
    unlabelled = tmp_path / "unlabelled"
    import shutil

    shutil.copytree(synthetic_shards, unlabelled)
    m = json.loads((unlabelled / "val.manifest.json").read_text())
    m["classes"] = []
    (unlabelled / "val.manifest.json").write_text(json.dumps(m))
    enc = tmp_path / "enc.pth"
    from amd_fast.models import export_encoder

    export_encoder(VideoClassifier(ClassifierConfig(arch="vit_tiny_cpu", num_classes=4, input_size=32, patch_size=8,
                                                    num_frames=8)), enc)
    rc = main(["--config", str(TINY), "--eval", f"model.pretrained={enc}", *_overrides(unlabelled, tmp_path / "b", 1)])
    err = capsys.readouterr().err
    assert rc == 2 and "carry no class labels" in err
