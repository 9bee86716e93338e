"""Training under hostile input: files that would run code, garbage files, impossible sizes, changed configs on
resume, killed runs, bad samples. Exit 2 with one line naming the problem and the fix, or the data kept."""
import logging
import os
import shutil
import tarfile

import pytest
import torch

from amd_fast.train import main
from amd_fast.trainer import checkpoint as ckpt
from tests.test_train import TINY, read_metrics, tiny_overrides


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def _logs(caplog):
    caplog.set_level("INFO")
    yield


def _train(capsys, shards, out, steps, *extra):
    """(exit code, what the user sees: stderr + the log records) of ``python -m amd_fast.train``."""
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        rc = main(["--config", str(TINY), *tiny_overrides(shards, out, steps, *extra)])
    finally:
        logging.getLogger().removeHandler(handler)
    return rc, capsys.readouterr().err + "\n".join(handler.lines)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_teacher_file_with_a_pickle_payload_is_refused_unrun(synthetic_shards, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "teacher.pth"
    torch.save({"model": {}, "args": _Payload(marker)}, evil)
    rc, err = _train(capsys, synthetic_shards, tmp_path / "r", 1, f"model.teacher_checkpoint={evil}")
    assert rc == 2 and not marker.exists()
    assert "needs the Python type posix.system" in err and "never unpickles" in err and "Traceback" not in err


def test_release_style_checkpoint_with_training_args_loads(synthetic_shards, tmp_path, capsys):
    """VideoMAE / AMD releases also pickle their argparse args (with numpy scalars): allowed, weights only."""
    import argparse

    import numpy as np

    from amd_fast.models import ModelConfig, build_student
    from amd_fast.models.pretrained import encoder_state_videomae

    cfg = ModelConfig(student="vit_mini_cpu", teacher=None, input_size=32, patch_size=8, num_frames=8)
    weights = {f"encoder.{k}": v for k, v in encoder_state_videomae(build_student(cfg)).items()}
    path = tmp_path / "videomae.pth"
    torch.save({"model": weights, "epoch": 799, "args": argparse.Namespace(lr=np.float64(1.5e-4), batch_size=32,
                                                                          input_size=(224, 224))}, path)
    rc, err = _train(capsys, synthetic_shards, tmp_path / "r", 1, f"model.teacher_checkpoint={path}")
    assert rc == 0, err[-2000:]


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04" + bytes(100)])
def test_garbage_teacher_file_is_one_line(synthetic_shards, tmp_path, capsys, content):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(content)
    rc, err = _train(capsys, synthetic_shards, tmp_path / "r", 1, f"model.teacher_checkpoint={bad}")
    assert rc == 2 and "garbage.pth" in err and "Traceback" not in err


def test_resume_skips_a_checkpoint_with_a_payload_without_running_it(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(capsys, synthetic_shards, run, 2)[0] == 0
    marker = tmp_path / "pwned"
    torch.save({"format": ckpt.FORMAT, "step": 9, "epoch": 0, "student": {}, "optimizer": {},
                "x": _Payload(marker)}, run / "checkpoints" / ckpt.checkpoint_name(9))
    rc, err = _train(capsys, synthetic_shards, run, 3)
    assert rc == 0 and not marker.exists()
    assert "step-000000009.pt" in err and "resumed from" in err and "at step 2" in err
    rc, err = _train(capsys, synthetic_shards, run, 12, f"checkpoint.resume={run / 'checkpoints' / ckpt.checkpoint_name(9)}")
    assert rc == 2 and not marker.exists() and "posix.system" in err


def test_our_checkpoints_load_weights_only(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(capsys, synthetic_shards, run, 2)[0] == 0
    for p in (run / "checkpoints").iterdir():
        torch.load(p, weights_only=True)  # step-*.pt and encoder.pth: no pickled objects


def test_batch_larger_than_the_split_is_one_line(synthetic_shards, tmp_path, capsys):
    rc, err = _train(capsys, synthetic_shards, tmp_path / "r", 1, "data.batch_size=64")
    assert rc == 2 and "data.batch_size=64" in err and "24 samples" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_lr_is_one_line(tmp_path, capsys, value):
    assert main(["--config", str(TINY), f"optim.lr={value}"]) == 2
    assert "finite" in capsys.readouterr().err


def test_resume_after_a_model_change_refuses_naming_the_change(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(capsys, synthetic_shards, run, 2)[0] == 0
    rc, err = _train(capsys, synthetic_shards, run, 4, "model.student=vit_mini_cpu")
    assert rc == 2 and "model.student: 'vit_tiny_cpu' -> 'vit_mini_cpu'" in err
    assert "checkpoint.allow_config_change=true" in err and "Traceback" not in err
    # forced: the weights cannot fit; still one line naming the checkpoint
    rc, err = _train(capsys, synthetic_shards, run, 4, "model.student=vit_mini_cpu", "checkpoint.allow_config_change=true")
    assert rc == 2 and "holds another model than the config builds" in err and "Traceback" not in err
    rc, err = _train(capsys, synthetic_shards, run, 4, "data.sampling_rate=1")  # the clip contract changed
    assert rc == 2 and "data.sampling_rate: 2 -> 1" in err


def test_resume_with_other_settings_prints_the_differences(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(capsys, synthetic_shards, run, 2)[0] == 0
    rc, err = _train(capsys, synthetic_shards, run, 3, "optim.lr=5e-4")
    assert rc == 0 and "resuming from" in err and "optim.lr: 0.001 -> 0.0005" in err


def test_metrics_stay_single_valued_after_a_kill(synthetic_shards, tmp_path, capsys):
    """A run killed after logging steps its last checkpoint does not hold: the resumed run logs them again,
    and metrics.jsonl keeps one row per step."""
    run = tmp_path / "r"
    assert _train(capsys, synthetic_shards, run, 4, "checkpoint.every_n_steps=2", "checkpoint.keep_last=5")[0] == 0
    (run / "checkpoints" / ckpt.checkpoint_name(4)).unlink()  # as if killed -9 before saving step 4
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0, "torn')  # and mid-line
    assert _train(capsys, synthetic_shards, run, 5)[0] == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]


def test_bad_samples_are_totalled_per_epoch_and_for_the_run(synthetic_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    tar = shards / "train-000000.tar"
    with tarfile.open(tar) as tf:
        first = next(m.name for m in tf if m.name.endswith(".webm"))
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as tf:
        m = tf.getmember(first)
        data[m.offset_data + 64: m.offset_data + m.size] = bytes(m.size - 64)  # undecodable, same size
    tar.write_bytes(bytes(data))
    run = tmp_path / "r"
    # 24 train videos / 2 per batch = 12 steps per epoch: 14 steps cover one epoch and part of the next
    rc, err = _train(capsys, shards, run, 14, "data.backend=eager")
    assert rc == 0, err[-2000:]
    events = read_metrics(run, events=True)
    epoch_end = [e for e in events if e["event"] == "epoch_end"]
    assert epoch_end[0]["epoch"] == 0 and epoch_end[0]["bad_samples_total"] >= 1
    assert any("undecodable" in reason for reason in epoch_end[0]["bad_samples"])
    run_end = [e for e in events if e["event"] == "run_end"][-1]
    assert run_end["bad_samples_total"] == sum(e["bad_samples_total"] for e in events
                                               if e["event"] in ("epoch_end", "epoch_partial"))
    assert "bad samples skipped in this run" in err


def test_auto_device_refuses_unusable_nvidia_gpus(monkeypatch):
    from amd_fast.trainer import distributed

    monkeypatch.setattr(distributed, "nvidia_gpus_present", lambda: "/dev/nvidia0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(distributed.DeviceError, match=r"NVIDIA GPUs \(/dev/nvidia0\) .* train.device=cpu"):
        distributed.resolve_device("auto")
    assert distributed.resolve_device("cpu").type == "cpu"  # explicit CPU is respected


def test_binary_config_and_non_shard_paths_are_one_line(synthetic_shards, tmp_path, capsys):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    assert main(["--config", str(binary)]) == 2
    assert "not a YAML text file" in capsys.readouterr().err
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    rc, err = _train(capsys, synthetic_shards, tmp_path / "r", 1, f"data.shards={other}")
    assert rc == 2 and "neither a manifest" in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")  # log.dir below a regular file cannot be created: bad input
    rc, err = _train(capsys, synthetic_shards, blocker / "run", 1)
    assert rc == 2 and "Traceback" not in err and str(blocker) in err
