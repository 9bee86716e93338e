"""Checkpoint files: atomic writes, keep-last pruning, torn / foreign files skipped on resume."""
import errno
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from amd_fast.serialization import WriteError
from amd_fast.trainer import checkpoint as ckpt


def _state(step):
    return {"step": step, "epoch": 0, "student": {"w": torch.full((3,), float(step))}, "optimizer": {}}


def test_atomic_save_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    m = ckpt.CheckpointManager(tmp_path, keep_last=5, is_main=True)
    path = m.save(_state(1), 1)
    assert path.name == "step-000000001.pt" and [p.name for p in tmp_path.iterdir()] == [path.name]

    def boom(obj, f):  # what a full disk looks like from inside torch.save
        f.write(b"partial bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(WriteError, match=r"cannot write .*step-000000001.pt: the disk is full .* previous file is kept"):
        m.save(_state(2), 1)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left, old file intact
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["student"]["w"], torch.ones(3))

    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(WriteError, match="disk is full"):
        m.save(_state(3), 3)
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]  # nothing pruned after a failed save


def test_stale_temp_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that no longer runs
    stale = tmp_path / f".step-000000007.pt.tmp-{dead}"
    live = tmp_path / f".step-000000008.pt.tmp-{os.getppid()}"  # a running process's write in progress
    stale.write_bytes(b"torn")
    live.write_bytes(b"in progress")
    ckpt.CheckpointManager(tmp_path, keep_last=2, is_main=True)
    assert not stale.exists() and live.exists()


def test_keep_last_prunes_oldest(tmp_path):
    m = ckpt.CheckpointManager(tmp_path, keep_last=2, is_main=True)
    for s in (1, 2, 3, 4):
        m.save(_state(s), s)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]


def test_non_main_rank_writes_nothing(tmp_path):
    assert ckpt.CheckpointManager(tmp_path, 2, is_main=False).save(_state(1), 1) is None
    assert list(tmp_path.iterdir()) == []


def test_resume_auto_skips_torn_and_foreign_files(tmp_path, caplog):
    m = ckpt.CheckpointManager(tmp_path, keep_last=10, is_main=True)
    m.save(_state(2), 2)
    good3 = m.save(_state(3), 3)
    data = good3.read_bytes()
    (tmp_path / ckpt.checkpoint_name(4)).write_bytes(data[: len(data) // 2])  # torn: truncated zip
    torch.save({"step": 5}, tmp_path / ckpt.checkpoint_name(5))  # loadable but not ours
    with caplog.at_level("WARNING"):
        path, state = m.resolve("auto")
    assert path == good3 and state["step"] == 3
    assert "step-000000004.pt" in caplog.text and "step-000000005.pt" in caplog.text
    assert ckpt.CheckpointManager(tmp_path / "empty", 1, True).resolve("auto") is None
    assert m.resolve("none") is None
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        m.resolve(str(tmp_path / "missing.pt"))


def test_rng_state_roundtrip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
