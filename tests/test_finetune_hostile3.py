"""Fine-tuning and probe input checks (issue #20, third round): a checkpoint deeper than the model, NaN weights,
splits checked at start-up, class names of a larger head, view counts and augmentation probabilities, the
reference's lr / weight-decay schedules value for value, and the zero key bias surviving deepcopy and pickle."""
import copy
import json
import logging
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from amd_fast.config import ConfigError, OptimConfig
from amd_fast.finetune import augment
from amd_fast.finetune.config import EvalConfig, FinetuneOptimConfig, build_finetune_config, views_warning
from amd_fast.models import CheckpointImportError, build_student, build_teacher, export_encoder, load_pretrained
from amd_fast.models.classifier import ClassifierConfig, VideoClassifier
from amd_fast.trainer.optim import build_schedules
from tests.model_fixtures import tiny_model_config

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "finetune-tiny-cpu.yaml"
TINY_PRETRAIN = REPO / "configs" / "tiny-cpu.yaml"
KW = dict(num_classes=4, input_size=32, patch_size=8, num_frames=8)


def _classifier(arch="vit_tiny_cpu", seed=0, **kw):
    torch.manual_seed(seed)
    return VideoClassifier(ClassifierConfig(arch=arch, **{**KW, **kw}))


def _deeper(state, extra=2):
    """An encoder state with ``extra`` more blocks (copies of block 0) than it has."""
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out = dict(state)
    for k, v in state.items():
        if k.startswith("blocks.0."):
            for b in range(depth, depth + extra):
                out[k.replace("blocks.0.", f"blocks.{b}.")] = v.clone()
    return out


def _ft_overrides(shards, out, steps=1, *extra):
    return [f"data.shards={shards}", "data.input_size=32", "data.num_workers=0", f"train.max_steps={steps}",
            "train.log_every=1", f"log.dir={out}", "log.progress=false", "eval.test_segments=1", "eval.test_crops=1",
            *extra]


def _finetune(argv, capsys):
    from amd_fast.finetune.__main__ import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---- 5: a checkpoint deeper than the model ---------------------------------------------------------------------

def test_checkpoint_with_more_blocks_is_an_error_except_for_the_teachers_early_exit(tmp_path):
    enc = tmp_path / "deep.pth"
    export_encoder(_classifier(), enc)
    deep = torch.load(enc)
    deep["model"] = _deeper(deep["model"], 2)  # 6 blocks of width 96
    torch.save(deep, enc)
    with pytest.raises(CheckpointImportError, match=r"deep\.pth has 6 blocks but the model has 4.*model\.arch"):
        load_pretrained(_classifier(), enc)  # fine-tuning
    with pytest.raises(CheckpointImportError, match="6 blocks but the model has 4"):
        load_pretrained(build_student(tiny_model_config()), enc)  # the probe's student
    # a real deeper arch is named: vit_small (12 x 384) into vit_tiny_cpu (4 x 96)
    small = VideoClassifier(ClassifierConfig(arch="vit_small", **KW))
    with pytest.raises(CheckpointImportError, match="12 blocks but the model has 4.*matches arch vit_small"):
        load_pretrained(_classifier(), {"model": small.state_dict()})

    # the teacher keeps its early exit: blocks past max(teacher_align_layers) are skipped, as before
    cfg = tiny_model_config()  # vit_mini_cpu teacher (4 blocks), aligned up to block 3
    src = build_teacher(tiny_model_config(teacher_align_layers=[2, 4]))
    path = tmp_path / "teacher.pth"
    export_encoder(src, path)
    report = load_pretrained(build_teacher(cfg), path)
    assert any(k.startswith("blocks.3.") for k in report.skipped) and not report.missing
    teacher = build_teacher(tiny_model_config(teacher_checkpoint=str(path)))  # model.teacher_checkpoint
    assert torch.equal(teacher.encoder.blocks[2].mlp.fc1.weight, src.encoder.blocks[2].mlp.fc1.weight)


# ---- 9: NaN / inf in weights ----------------------------------------------------------------------------------

def test_nonfinite_weights_are_bad_input_naming_the_file_and_tensors(tmp_path):
    path = tmp_path / "nan.pth"
    export_encoder(_classifier(), path)
    state = torch.load(path)
    state["model"]["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    state["model"]["blocks.2.attn.v_bias"][1] = float("inf")
    torch.save(state, path)
    model = _classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointImportError) as e:
        load_pretrained(model, path)
    msg = str(e.value)
    assert str(path) in msg and "2 of its" in msg
    assert "blocks.1.mlp.fc1.weight" in msg and "blocks.2.attn.qkv.bias" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    teacher_file = tmp_path / "teacher-nan.pth"  # the teacher (model.teacher_checkpoint)
    export_encoder(build_teacher(tiny_model_config(teacher_align_layers=[2, 4])), teacher_file)
    state = torch.load(teacher_file)
    state["model"]["blocks.0.norm1.weight"][0] = float("nan")
    torch.save(state, teacher_file)
    with pytest.raises(CheckpointImportError, match=r"teacher-nan\.pth has NaN/inf.*blocks\.0\.norm1\.weight"):
        build_teacher(tiny_model_config(teacher_checkpoint=str(teacher_file)))
    # many bad tensors: the first five and a count
    many = {k: torch.full_like(v, float("nan")) for k, v in _classifier().state_dict().items()}
    with pytest.raises(CheckpointImportError, match=r"and \d+ more"):
        load_pretrained(_classifier(), {"model": many})
    # a head taken from a fine-tuned file is checked too; one of another shape is skipped, as before
    ft = _classifier().state_dict()
    ft["head.bias"] = torch.full_like(ft["head.bias"], float("nan"))
    with pytest.raises(CheckpointImportError, match="head.bias"):
        load_pretrained(_classifier(), {"model": ft})
    assert "head.bias" in load_pretrained(_classifier(num_classes=5), {"model": ft}).skipped


def test_folder_given_as_weights_says_so(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    export_encoder(_classifier(), tmp_path / "checkpoints" / "encoder.pth")
    with pytest.raises(CheckpointImportError, match=r"is a folder.*checkpoints/encoder\.pth"):
        load_pretrained(_classifier(), tmp_path)


def test_nonfinite_pretrained_exits_2_before_training(synthetic_shards, tmp_path, capsys):
    path = tmp_path / "nan.pth"
    export_encoder(_classifier(), path)
    state = torch.load(path)
    state["model"]["patch_embed.proj.weight"].fill_(float("inf"))
    torch.save(state, path)
    rc, _, err = _finetune(["--config", str(TINY), f"model.pretrained={path}",
                            *_ft_overrides(synthetic_shards, tmp_path / "run")], capsys)
    assert rc == 2 and str(path) in err and "patch_embed.proj.weight" in err and "Traceback" not in err
    assert "non-finite loss" not in err and not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- 6: every split opened at start-up -------------------------------------------------------------------------

def test_wrong_eval_split_stops_before_training_naming_the_splits(synthetic_shards, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = _finetune(["--config", str(TINY), *_ft_overrides(synthetic_shards, out, 1, "eval.split=vall")],
                           capsys)
    assert rc == 2 and "eval.split='vall'" in err and str(synthetic_shards) in err and "'train', 'val'" in err
    assert "Traceback" not in err
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("checkpoints/*.pt"))  # before any step
    rc, _, err = _finetune(["--config", str(TINY), "--eval",  # --eval checks it before it needs weights
                            *_ft_overrides(synthetic_shards, out, 1, "eval.split=test")], capsys)
    assert rc == 2 and "eval.split='test'" in err and "'train', 'val'" in err
    rc, _, err = _finetune(["--config", str(TINY), *_ft_overrides(synthetic_shards, out, 1, "data.split=trian")],
                           capsys)
    assert rc == 2 and "data.split='trian'" in err
    # one manifest file for both splits would evaluate on the training videos
    rc, _, err = _finetune(["--config", str(TINY), *_ft_overrides(synthetic_shards / "train.manifest.json", out, 1)],
                           capsys)
    assert rc == 2 and "would read the same videos" in err and "val.manifest.json" in err


def test_eval_split_without_labels_or_with_more_classes_stops_before_training(synthetic_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    m = json.loads((shards / "val.manifest.json").read_text())
    m["classes"] = m["classes"] + ["extra"]  # val names 5 classes, the train split 4, model.num_classes 4
    (shards / "val.manifest.json").write_text(json.dumps(m))
    out = tmp_path / "run"
    rc, _, err = _finetune(["--config", str(TINY), *_ft_overrides(shards, out)], capsys)
    assert rc == 2 and "'val' shards have 5 classes" in err and "model.num_classes=5" in err
    assert not (out / "metrics.jsonl").exists()


# ---- 7: class names of a head larger than the shards' classes ---------------------------------------------------

def test_class_names_kept_and_extra_outputs_marked_unused():
    from amd_fast.finetune.evaluate import _metrics, class_names

    names = ["walk", "run", "jump"]
    assert class_names(names, 5) == ["walk", "run", "jump", "<unused 3>", "<unused 4>"]
    assert class_names([], 3) == ["0", "1", "2"]  # a tar list without a manifest: label numbers
    assert class_names(["a", "b", "a"], 3) == ["a (0)", "b", "a (2)"]  # every output keeps its own row
    p = lambda c: np.eye(5)[c]  # noqa: E731
    r = _metrics({0: p(0), 1: p(2), 2: p(1)}, {0: p(0), 1: p(2), 2: p(1)}, {0: 0, 1: 2, 2: 2}, 5, 1, names)
    assert r.classes[:3] == names and r.per_class["jump"] == 0.5 and r.per_class["<unused 4>"] is None
    assert len(r.per_class) == 5 and np.asarray(r.confusion).shape == (5, 5)


@pytest.mark.slow
def test_larger_head_end_to_end_keeps_names_and_eval_names_the_runs_class_count(synthetic_shards, tmp_path, capsys,
                                                                                caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        rc, stdout, err = _finetune(["--config", str(TINY), *_ft_overrides(synthetic_shards, out, 1,
                                                                          "model.num_classes=6")], capsys)
    assert rc == 0, err[-2000:]
    assert "outputs 4..5 never see a video" in caplog.text
    report = json.loads((out / "eval" / "test.json").read_text())
    assert report["classes"] == ["move_000deg", "move_090deg", "move_180deg", "move_270deg", "<unused 4>",
                                 "<unused 5>"]
    assert report["per_class"]["<unused 5>"] is None
    # --eval of that run with another class count: the message names the run's setting
    rc, _, err = _finetune(["--config", str(TINY), "--eval", *_ft_overrides(synthetic_shards, out, 1,
                                                                            "model.num_classes=5")], capsys)
    assert rc == 2 and "model.num_classes=6 (now 5)" in err


# ---- 8: view counts and probabilities ---------------------------------------------------------------------------

def test_more_views_than_the_recipes_warn_naming_both_numbers():
    assert views_warning(EvalConfig(test_segments=5, test_crops=3)) is None
    msg = views_warning(EvalConfig(test_segments=100, test_crops=3))
    assert "100 x 3 = 300 views" in msg and "15" in msg


@pytest.mark.parametrize("override, fragment", [
    ("aug.smoothing=1", "aug.smoothing=1.0 must be in [0, 1)"),
    ("aug.smoothing=-0.1", "aug.smoothing"),
    ("aug.reprob=1.5", "aug.reprob"),
    ("aug.mix_prob=-0.5", "aug.mix_prob"),
    ("aug.switch_prob=2", "aug.switch_prob"),
    ("aug.randaugment=rand-m7-n4-mstd0.5-inc1-p1.5", "p1.5 must be in [0, 1]"),
    ("aug.randaugment=rand-m12-n4-inc1", "m12 must be in [0, 10]"),
    ("aug.randaugment=rand-m7-n4-mstd0.5", "lacks 'inc1'"),
    ("aug.randaugment=rand-m7-n4-mstd-inc1", "has no number"),
    ("aug.randaugment=rand-m7-w0-inc1", "unknown part 'w0'"),
    ("eval.split=", "eval.split"),
])
def test_bad_augmentation_settings_are_config_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_finetune_config(None, [override])
    assert fragment in str(e.value)


def test_randaugment_string_means_what_it_means_to_timm():
    """Parts left out take timm's defaults (m10, n2, mstd0, p0.5), not the AMD recipe's."""
    spec = augment.RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")  # the reference's commented-out default
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.prob) == (2, 9.0, 0.5, 0.5)
    spec = augment.RandAugmentSpec.parse("rand-inc1")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std) == (2, 10.0, 0.0)
    spec = augment.RandAugmentSpec.parse("rand-m7-n4-mstd0.5-inc1-p1")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.prob) == (4, 7.0, 0.5, 1.0)


# ---- 17: the reference's schedules, value for value ----------------------------------------------------------------

def _reference_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                                start_warmup_value=0, warmup_steps=-1):
    """MCG-NJU/AMD utils.cosine_scheduler, written out (numpy + math.cos, warmup endpoint included)."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters))))
                         for i in iters])
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


@pytest.mark.parametrize("epochs, steps_per_epoch, warmup_epochs, warmup_steps, warmup_lr, wd_end", [
    (3, 7, 1, -1, 0.0, None),  # fine-tuning: warmup from 0, constant weight decay
    (10, 5, 2, -1, 1e-6, 0.1),  # pretraining style: weight decay rising
    (4, 3, 1, 5, 0.0, 0.02),  # warmup_steps given directly overrides warmup_epochs
    (2, 6, 2, -1, 0.0, None),  # warmup as long as the run
    (5, 4, 0, -1, 0.0, None),  # no warmup
    (40, 1, 5, -1, 0.0, None),  # one step per epoch
])
def test_schedules_equal_the_reference_cosine_scheduler(epochs, steps_per_epoch, warmup_epochs, warmup_steps,
                                                        warmup_lr, wd_end):
    lr, min_lr, wd = 1e-3, 1e-6, 0.05
    cfg = FinetuneOptimConfig(lr=lr, min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=warmup_epochs,
                              warmup_steps=warmup_steps, weight_decay=wd, weight_decay_end=wd_end, scale_lr=False)
    total = epochs * steps_per_epoch
    s = build_schedules(cfg, total, steps_per_epoch, global_videos=256)
    want_lr = _reference_cosine_scheduler(lr, min_lr, epochs, steps_per_epoch, warmup_epochs, warmup_lr,
                                          warmup_steps)
    want_wd = _reference_cosine_scheduler(wd, wd if wd_end is None else wd_end, epochs, steps_per_epoch)
    assert np.array_equal(s.lr, want_lr), np.max(np.abs(s.lr - want_lr))
    assert np.array_equal(s.weight_decay, want_wd)
    if warmup_epochs or warmup_steps > 0:
        w = warmup_steps if warmup_steps > 0 else warmup_epochs * steps_per_epoch
        assert s.lr[w - 1] == lr  # the warmup's last step reaches the peak (endpoint included)


def test_scaled_schedule_equals_the_reference_with_its_scaled_rates():
    """Pretraining's OptimConfig, rates per 256 videos: the reference scales lr / min_lr before the scheduler."""
    cfg = OptimConfig(lr=1.5e-4, min_lr=1e-5, warmup_lr=0.0, warmup_epochs=2, weight_decay=0.05)
    s = build_schedules(cfg, 6 * 5, 5, global_videos=384)
    want = _reference_cosine_scheduler(1.5e-4 * 384 / 256, 1e-5 * 384 / 256, 6, 5, 2, 0.0)
    np.testing.assert_allclose(s.lr, want, rtol=1e-14, atol=0)


# ---- 18: the zero key bias survives deepcopy and pickling --------------------------------------------------------

def _train_k_bias(model, steps=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        video = torch.randn(2, 3, 8, 32, 32, generator=g)
        loss = torch.nn.functional.cross_entropy(model(video), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    dims = [(n, p) for n, p in model.named_parameters() if n.endswith("attn.qkv.bias")]
    assert dims
    return dims


@pytest.mark.parametrize("clone", ["deepcopy", "pickle"])
def test_key_bias_stays_exactly_zero_after_deepcopy_and_pickle(clone):
    model = _classifier()
    model = copy.deepcopy(model) if clone == "deepcopy" else pickle.loads(pickle.dumps(model))
    for name, b in _train_k_bias(model):
        d = b.numel() // 3
        assert torch.count_nonzero(b[d:2 * d]) == 0, name
        assert torch.count_nonzero(b[:d]) > 0, name  # q and v biases do train
    # a nonzero k third (e.g. loaded from elsewhere) changes nothing: it is not part of the math
    m1 = _classifier()
    m2 = copy.deepcopy(m1)
    with torch.no_grad():
        for blk in m2.encoder.blocks:
            blk.attn.qkv.bias[96:192] = 5.0
    m1.eval(), m2.eval()
    video = torch.randn(1, 3, 8, 32, 32)
    assert torch.equal(m1(video), m2(video))
    # the state dict keeps timm's names (checkpoints unchanged): no mask buffer in it
    keys = set(_classifier().state_dict())
    assert "encoder.blocks.0.attn.qkv.bias" in keys and not any("mask" in k for k in keys)


# ---- probe ---------------------------------------------------------------------------------------------------------

def test_probe_checks_splits_weights_and_config_before_extracting(tmp_path, capsys):
    from amd_fast.probe import main
    from amd_fast.shard import ShardOptions, build_shards

    shards = tmp_path / "shards"
    build_shards(ShardOptions(src="synthetic", out=shards, splits=("train", "test"), synthetic_count=8,
                              synthetic_frames=16, synthetic_size=32, samples_per_shard=4, workers=0, progress=False))
    base = ["--config", str(TINY_PRETRAIN), f"data.shards={shards}", "data.num_workers=0"]
    rc = main(base)
    err = capsys.readouterr().err
    assert rc == 2 and "--val-split='val'" in err and "'test', 'train'" in err and "Traceback" not in err
    rc = main(["--config", str(TINY), f"data.shards={shards}"])
    err = capsys.readouterr().err
    assert rc == 2 and "fine-tuning config" in err
    deep = tmp_path / "deep.pth"
    export_encoder(build_student(tiny_model_config()), deep)
    state = torch.load(deep)
    state["model"] = _deeper(state["model"])
    torch.save(state, deep)
    rc = main([*base, "--val-split", "test", "--weights", str(deep)])
    err = capsys.readouterr().err
    assert rc == 2 and "6 blocks but the model has 4" in err
    rc = main([*base[:2], f"data.shards={shards / 'train.manifest.json'}", "--val-split", "test"])
    err = capsys.readouterr().err
    assert rc == 2 and "would read the same videos" in err
