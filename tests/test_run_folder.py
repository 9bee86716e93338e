"""A run folder belongs to its run (run.json, refusals, checkpoint.overwrite), and interrupts exit 130."""
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from amd_fast.finetune.__main__ import main as finetune_main
from amd_fast.train import main as train_main
from amd_fast.trainer import checkpoint as ckpt
from amd_fast.trainer import run_folder

from .test_train import TINY, read_metrics, tiny_overrides
from .test_train_hostile import _Collect

REPO = Path(__file__).resolve().parent.parent
FT_TINY = REPO / "configs" / "finetune-tiny-cpu.yaml"


def _run(capsys, main, argv):
    """(exit code, what the user sees: stderr + log records) of one command, in this process."""
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        rc = main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
    return rc, capsys.readouterr().err + "\n".join(handler.lines)


def _train(capsys, shards, out, steps, *extra):
    return _run(capsys, train_main, ["--config", str(TINY), *tiny_overrides(shards, out, steps, *extra)])


def _finetune(capsys, shards, out, steps, *extra):
    return _run(capsys, finetune_main, [
        "--config", str(FT_TINY), f"data.shards={shards}", "data.input_size=32", "data.num_workers=0",
        f"train.max_steps={steps}", "train.log_every=1", f"log.dir={out}", "log.progress=false",
        "eval.test_segments=1", "eval.test_crops=1", *extra])


def _snapshot(folder: Path):
    """Every file under ``folder`` with its bytes: what a refused run must leave exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pretrained_run(synthetic_shards, tmp_path_factory):
    """A finished 3-step pretraining run (checkpoints every step, keep 2, encoder exported)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    rc = train_main(["--config", str(TINY), *tiny_overrides(synthetic_shards, out, 3, "checkpoint.every_n_steps=1",
                                                             "checkpoint.keep_last=2")])
    assert rc == 0
    return out


def test_finetune_into_a_pretraining_folder_is_refused_and_touches_nothing(synthetic_shards, pretrained_run,
                                                                           tmp_path, capsys):
    before = _snapshot(pretrained_run)
    rc, err = _finetune(capsys, synthetic_shards, pretrained_run, 2,
                        f"model.pretrained={pretrained_run / 'checkpoints' / 'encoder.pth'}")
    assert rc == 2, err
    assert f"log.dir={pretrained_run} holds a pretrain run" in err and "checkpoint.overwrite=true" in err
    assert "Traceback" not in err
    assert _snapshot(pretrained_run) == before  # checkpoints, metrics rows and config.yaml untouched
    rc, err = _run(capsys, finetune_main, ["--config", str(FT_TINY), "--eval", f"data.shards={synthetic_shards}",
                                           f"log.dir={pretrained_run}", "data.input_size=32",
                                           f"model.pretrained={pretrained_run / 'checkpoints' / 'encoder.pth'}"])
    assert rc == 2 and "holds a pretrain run, not a fine-tuning one" in err, err
    assert _snapshot(pretrained_run) == before


def test_resume_none_in_a_used_folder_is_refused(synthetic_shards, pretrained_run, capsys):
    before = _snapshot(pretrained_run)
    rc, err = _train(capsys, synthetic_shards, pretrained_run, 5, "checkpoint.resume=none")
    assert rc == 2 and "checkpoint.resume=none would start another one there" in err, err
    assert "checkpoint.resume=auto to continue" in err
    assert _snapshot(pretrained_run) == before


def test_overwrite_moves_the_old_run_aside_and_later_resumes_continue_the_new_one(synthetic_shards, pretrained_run,
                                                                                tmp_path, capsys):
    run = tmp_path / "run"
    import shutil
    shutil.copytree(pretrained_run, run)
    old = _snapshot(run)
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    rc, err = _train(capsys, synthetic_shards, run, 2, "checkpoint.resume=none", "checkpoint.overwrite=true",
                     "checkpoint.every_n_steps=1", "checkpoint.keep_last=1")
    assert rc == 0, err
    aside = list((run / "replaced").iterdir())
    assert len(aside) == 1 and aside[0].name.endswith(f"-pretrain-{old_id[:8]}")
    kept = _snapshot(aside[0])
    for name, data in old.items():  # every old file is there, byte for byte (its checkpoints under checkpoints/)
        assert kept[name] == data, name
    new_id = json.loads((run / "run.json").read_text())["run_id"]
    assert new_id != old_id
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # only the new run's rows
    assert [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")] == [2]  # pruned among its own
    assert torch.load(run / "checkpoints" / ckpt.checkpoint_name(2), weights_only=True)["run_id"] == new_id
    rc, err = _train(capsys, synthetic_shards, run, 4)  # resume=auto continues the new run, not the old one
    assert rc == 0 and "at step 2" in err, err
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]


def test_log_dir_that_is_a_file_is_bad_input(synthetic_shards, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    rc, err = _train(capsys, synthetic_shards, f, 1)
    assert rc == 2 and f"log.dir={f} is a file" in err and "Traceback" not in err
    rc, err = _train(capsys, synthetic_shards, f / "sub", 1)
    assert rc == 2 and "which is a file" in err
    assert f.read_text() == "mine"


def test_log_and_checkpoint_dirs_of_two_runs_are_refused(synthetic_shards, tmp_path, capsys):
    shared = tmp_path / "ckpts"
    assert _train(capsys, synthetic_shards, tmp_path / "a", 1, f"checkpoint.dir={shared}")[0] == 0
    assert _train(capsys, synthetic_shards, tmp_path / "b", 1)[0] == 0
    before = _snapshot(tmp_path)
    rc, err = _train(capsys, synthetic_shards, tmp_path / "b", 2, f"checkpoint.dir={shared}")
    assert rc == 2 and "belong to two different runs" in err, err
    assert _snapshot(tmp_path) == before
    # Logs moved to a new folder (checkpoint.dir kept): the same run goes on there.
    rc, err = _train(capsys, synthetic_shards, tmp_path / "a-moved", 2, f"checkpoint.dir={shared}")
    assert rc == 0 and "at step 1" in err, err


def test_folder_from_before_run_ids_is_adopted_only_by_its_own_task(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "legacy"
    assert _train(capsys, synthetic_shards, run, 2)[0] == 0
    (run / "run.json").unlink()
    for p in (run / "checkpoints").glob("step-*.pt"):  # as an older version wrote them: no run id
        state = torch.load(p, weights_only=True)
        state.pop("run_id"), state.pop("task")
        torch.save(state, p)
    rc, err = _finetune(capsys, synthetic_shards, run, 1)
    assert rc == 2 and "holds a pretrain run (no run.json)" in err, err
    rc, err = _train(capsys, synthetic_shards, run, 3)
    assert rc == 0 and "at step 2" in err, err
    assert (run / "run.json").exists()


def test_claim_decisions():
    # Pure decisions on folders, no training: new, continue, refuse.
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        log_dir = Path(d) / "run"
        first = run_folder.claim(log_dir, log_dir / "checkpoints", "pretrain", "auto", False)
        assert not first.continued
        run_folder.take(first, log_dir, log_dir / "checkpoints")
        again = run_folder.claim(log_dir, log_dir / "checkpoints", "pretrain", "auto", False)
        assert again.continued and again.run_id == first.run_id
        # a run that wrote no step yet may be restarted with resume=none
        assert run_folder.claim(log_dir, log_dir / "checkpoints", "pretrain", "none", False).run_id == first.run_id
        (log_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
        with pytest.raises(run_folder.RunFolderError):
            run_folder.claim(log_dir, log_dir / "checkpoints", "pretrain", "none", False)
        with pytest.raises(run_folder.RunFolderError, match="holds a pretrain run"):
            run_folder.claim(log_dir, log_dir / "checkpoints", "finetune", "auto", False)
        (log_dir / "run.json").write_text("{torn")
        with pytest.raises(run_folder.RunFolderError, match="not a readable run record"):
            run_folder.claim(log_dir, log_dir / "checkpoints", "pretrain", "auto", False)


# ---- interrupts: exit 130, and a signal after the final checkpoint stops at once -------------------------------

def _signal_after(monkeypatch, cls, method, signum, *, at_call=1, then_sleep=0.0):
    """Wrap ``cls.method`` so that its ``at_call``-th call sends ``signum`` to this process (then sleeps, as a
    long evaluation would)."""
    original = getattr(cls, method)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            os.kill(os.getpid(), signum)
            if then_sleep:
                time.sleep(then_sleep)
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, method, wrapped)


def test_ctrl_c_during_training_saves_and_exits_130(synthetic_shards, tmp_path, capsys, monkeypatch):
    from amd_fast.trainer.loop import Trainer

    _signal_after(monkeypatch, Trainer, "step", signal.SIGINT, at_call=2)
    rc, err = _train(capsys, synthetic_shards, tmp_path / "r", 50)
    assert rc == 130, err
    assert "stopped by SIGINT" in err
    saved = [s for s, _ in ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")]
    assert saved and saved[-1] < 50


def test_finetune_ctrl_c_exits_130_and_skips_the_test(synthetic_shards, tmp_path, capsys, monkeypatch):
    from amd_fast.finetune.trainer import FinetuneTrainer

    _signal_after(monkeypatch, FinetuneTrainer, "step", signal.SIGINT, at_call=1)
    rc, err = _finetune(capsys, synthetic_shards, tmp_path / "r", 50)
    assert rc == 130, err
    assert not (tmp_path / "r" / "eval").exists()


def test_sigterm_during_the_final_test_stops_within_seconds(synthetic_shards, tmp_path, capsys, monkeypatch):
    from amd_fast.finetune import evaluate

    _signal_after(monkeypatch, evaluate, "evaluate", signal.SIGTERM, then_sleep=30)
    t0 = time.perf_counter()
    rc, err = _finetune(capsys, synthetic_shards, tmp_path / "r", 2)
    assert rc == 130 and time.perf_counter() - t0 < 25, err
    assert "interrupted" in err and "Traceback" not in err
    assert ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")  # the checkpoint was saved before the test


def test_sigterm_during_eval_only_exits_130_with_one_line(synthetic_shards, tmp_path, capsys, monkeypatch):
    from amd_fast.finetune import evaluate

    run = tmp_path / "r"
    assert _finetune(capsys, synthetic_shards, run, 1)[0] == 0
    _signal_after(monkeypatch, evaluate, "evaluate", signal.SIGTERM, then_sleep=30)
    t0 = time.perf_counter()
    rc, err = _run(capsys, finetune_main, ["--config", str(FT_TINY), "--eval", f"data.shards={synthetic_shards}",
                                           "data.input_size=32", "data.num_workers=0", f"log.dir={run}",
                                           "log.progress=false", "eval.test_segments=1", "eval.test_crops=1"])
    assert rc == 130 and time.perf_counter() - t0 < 25, err
    assert "amd_fast.finetune: interrupted" in err
