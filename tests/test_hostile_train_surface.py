"""Hostile inputs on the train / finetune (--eval) / probe command lines: each is bad input (exit 2, one line
naming the problem and the fix, no traceback) or a warning, and nothing is written."""
from pathlib import Path

import pytest
import torch

from amd_fast.finetune.__main__ import main as finetune_main
from amd_fast.probe import main as probe_main
from amd_fast.train import main as train_main
from amd_fast.trainer import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny-cpu.yaml"
FT_TINY = REPO / "configs" / "finetune-tiny-cpu.yaml"


def _bad_input(capsys, main, argv, *needles):
    """Runs ``main(argv)``: exit 2 with exactly one ``error:`` line containing every needle, no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [l for l in err.splitlines() if ": error: " in l]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _ft_fake_checkpoint(path: Path, model_key: str) -> Path:
    torch.save({"format": ckpt.FORMAT, "step": 1, "epoch": 0, "optimizer": {}, model_key: {}}, path)
    return path


@pytest.mark.parametrize("main,config,override,needles", [
    (train_main, TINY, "model.patch_size=0", ("model.patch_size=0", ">= 1")),
    (train_main, TINY, "model.tubelet_size=0", ("model.tubelet_size=0", ">= 1")),
    (train_main, TINY, "model.patch_size=-8", ("model.patch_size=-8",)),
    (finetune_main, FT_TINY, "model.patch_size=0", ("model.patch_size=0",)),
    (finetune_main, FT_TINY, "model.tubelet_size=0", ("model.tubelet_size=0",)),
    (train_main, TINY, "model.drop_path=-1", ("model.drop_path=-1.0", "[0, 1)")),
    (train_main, TINY, "log.dir=", ("log.dir is empty", "current folder")),
    (finetune_main, FT_TINY, "log.dir=", ("log.dir is empty",)),
    (train_main, TINY, "checkpoint.dir=", ("checkpoint.dir is empty", "null")),
    (train_main, TINY, "checkpoint.resume=", ("checkpoint.resume is empty", "auto, none")),
    (train_main, TINY, "data.shards=", ("data.shards is empty", "shards folder")),
    (finetune_main, FT_TINY, "data.shards=[]", ("data.shards is empty",)),
    (finetune_main, FT_TINY, "model.pretrained=", ("model.pretrained is empty", "null")),
    (train_main, TINY, "model.teacher_checkpoint=", ("model.teacher_checkpoint is empty",)),
])
def test_odd_overrides_are_bad_input(capsys, main, config, override, needles):
    assert _bad_input(capsys, main, ["--config", str(config), override, "--print-config"], *needles)


def test_config_that_is_a_folder(capsys):
    assert _bad_input(capsys, train_main, ["--config", str(REPO / "configs"), "--print-config"], "is a folder",
               "tiny-cpu.yaml")


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text("data:\n  batch_size: 4\n  batch_size: 8\n")
    assert _bad_input(capsys, train_main, ["--config", str(f), "--print-config"], str(f), "'batch_size' is written twice",
               "lines 2 and 3")
    f.write_text("data:\n  batch_size: 4\ndata:\n  num_frames: 8\n")
    assert _bad_input(capsys, finetune_main, ["--config", str(f), "--print-config"], "'data' is written twice")


def test_yaml_merge_keys_still_work(tmp_path, capsys):
    f = tmp_path / "merge.yaml"  # `<<: *anchor` then a key that overrides the merged one is not a duplicate
    f.write_text("data: &d\n  batch_size: 4\n  num_frames: 8\noptim: {lr: 1.0e-3}\n"
                 "checkpoint:\n  <<: {keep_last: 5, every_n_steps: 7}\n  keep_last: 2\n")
    assert train_main(["--config", str(f), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "keep_last: 2" in out and "every_n_steps: 7" in out


def test_empty_config_file_is_refused(tmp_path, capsys):
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing yet\n")
    assert _bad_input(capsys, train_main, ["--config", str(f), "--print-config"], "is empty", "leave --config out")


def test_resume_from_a_folder_names_it(tmp_path):
    m = ckpt.CheckpointManager(tmp_path / "c", 2, True, "student")
    with pytest.raises(ckpt.CheckpointError, match="is a folder: give a checkpoint file"):
        m.resolve(str(tmp_path))


def test_resume_from_the_other_tasks_checkpoint_names_it(tmp_path):
    pre = _ft_fake_checkpoint(tmp_path / "pre.pt", "student")
    fin = _ft_fake_checkpoint(tmp_path / "fin.pt", "model")
    with pytest.raises(ckpt.CheckpointError, match="is a pretraining run's checkpoint.*model.pretrained"):
        ckpt.load_checkpoint(pre, model_key="model")
    with pytest.raises(ckpt.CheckpointError, match="is a fine-tuning run's checkpoint"):
        ckpt.load_checkpoint(fin, model_key="student")


def test_eval_with_a_pretraining_checkpoint_as_resume(synthetic_shards, tmp_path, capsys):
    pre = _ft_fake_checkpoint(tmp_path / "pre.pt", "student")
    assert _bad_input(capsys, finetune_main, [
        "--config", str(FT_TINY), "--eval", f"data.shards={synthetic_shards}", "data.input_size=32",
        f"log.dir={tmp_path / 'run'}", "log.progress=false", f"checkpoint.resume={pre}"],
        "pretraining run's checkpoint", "model.pretrained")
    assert not (tmp_path / "run" / "eval").exists()


def test_probe_empty_weights_is_refused(capsys):
    assert _bad_input(capsys, probe_main, ["--config", str(TINY), "--weights", ""], "--weights is empty")


@pytest.mark.parametrize("main,config,overrides,needles", [
    (train_main, TINY, ["optim.warmup_steps=0"], ("warmup_steps=0 does not turn warmup off", "warmup_epochs=0")),
    (train_main, TINY, ["optim.warmup_steps=-5"], ("optim.warmup_steps=-5", "-1")),
    (train_main, TINY, ["optim.min_lr=1.0"], ("optim.min_lr=1.0 is above optim.lr",)),
    (finetune_main, FT_TINY, ["optim.min_lr=1.0"], ("optim.min_lr=1.0 is above optim.lr",)),
    (train_main, TINY, ["optim.weight_decay=-1"], ("optim.weight_decay=-1.0", ">= 0")),
    (train_main, TINY, ["optim.weight_decay_end=-2"], ("weight_decay_end=-2.0",)),
    (train_main, TINY, ["optim.eps=0"], ("optim.eps=0.0 must be > 0",)),
])
def test_optimizer_settings_that_would_do_something_else(capsys, main, config, overrides, needles):
    assert _bad_input(capsys, main, ["--config", str(config), *overrides, "--print-config"], *needles)


def test_no_warmup_is_warmup_epochs_zero(capsys):
    assert train_main(["--config", str(TINY), "optim.warmup_steps=0", "optim.warmup_epochs=0", "--print-config"]) == 0
    capsys.readouterr()


def test_teacher_checkpoint_that_the_run_would_overwrite_with_its_export(tmp_path, capsys):
    run = tmp_path / "run"
    teacher = run / "checkpoints" / "encoder.pth"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"the teacher's weights")
    assert _bad_input(capsys, train_main, ["--config", str(TINY), f"log.dir={run}", f"model.teacher_checkpoint={teacher}"],
               "is the file this run exports its student to", "checkpoint.export_encoder=false")
    assert teacher.read_bytes() == b"the teacher's weights"
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "encoder.pth"]  # nothing else written


def test_teacher_checkpoint_without_a_teacher_is_reported(caplog):
    from amd_fast.models import ModelConfig, build_teacher

    cfg = ModelConfig(student="vit_tiny_cpu", teacher=None, input_size=32, patch_size=8, num_frames=8,
                      teacher_checkpoint="some/teacher.pth")
    with caplog.at_level("WARNING"):
        assert build_teacher(cfg) is None
    assert "model.teacher_checkpoint=some/teacher.pth is not used: model.teacher=null" in caplog.text


def test_eval_of_an_encoder_without_a_head_is_refused(synthetic_shards, tmp_path, capsys):
    from amd_fast.models import export_encoder
    from amd_fast.models.classifier import ClassifierConfig, VideoClassifier

    enc = tmp_path / "encoder.pth"  # a pretraining export: encoder weights only, no head
    export_encoder(VideoClassifier(ClassifierConfig(arch="vit_tiny_cpu", num_classes=4, input_size=32, patch_size=8,
                                                    num_frames=8)), enc)
    assert _bad_input(capsys, finetune_main, [
        "--config", str(FT_TINY), "--eval", f"data.shards={synthetic_shards}", "data.input_size=32",
        f"log.dir={tmp_path / 'run'}", "log.progress=false", f"model.pretrained={enc}"],
        "has no classifier head", "drop --eval")
    assert not (tmp_path / "run" / "eval").exists()
