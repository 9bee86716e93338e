"""The trainer: schedules and param groups, a 2-process Gloo run, SIGTERM + resume, non-finite loss."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from amd_fast.config import OptimConfig, load_config
from amd_fast.trainer import checkpoint as ckpt
from amd_fast.trainer.optim import apply_schedules, build_optimizer, build_schedules, cosine_schedule, param_groups

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny-cpu.yaml"


def tiny_overrides(shards: Path, out: Path, steps: int, *extra: str):
    """tiny-cpu.yaml made smaller still: 32 px clips, 2 videos x 2 clips per rank, eager workers off."""
    return [f"data.shards={shards}", "data.input_size=32", "data.batch_size=2",
            "data.num_sample=2", "data.num_workers=0", f"train.max_steps={steps}", "train.log_every=1",
            f"log.dir={out}", "log.progress=false", "optim.warmup_steps=2", *extra]


def read_metrics(log_dir: Path, events: bool = False):
    """The per-step rows of metrics.jsonl (``events=True``: the event rows, e.g. epoch_end)."""
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if ("event" in r) == events]


# ---- schedules and optimizer -------------------------------------------------------------------------------

def test_cosine_schedule_warmup_and_endpoints():
    s = cosine_schedule(1.0, 0.1, total_steps=110, warmup_steps=10, warmup_start=0.01)
    assert len(s) == 110
    # warmup starts low and its last step is at the peak (the reference's np.linspace includes it); the cosine
    # part starts at the peak too
    assert s[0] == pytest.approx(0.01) and s[9] == s[10] == 1.0
    assert np.all(np.diff(s[:10]) > 0) and np.all(np.diff(s[10:]) < 0)  # rises, then decays monotonically
    assert s[-1] == pytest.approx(0.1, abs=1e-3) and s[10:].min() >= 0.1  # ends at min_lr, never below it
    assert cosine_schedule(0.05, 0.2, 5)[0] == pytest.approx(0.05)  # weight decay may rise (end > start)


def test_lr_scales_with_global_videos_not_clips():
    cfg = OptimConfig(lr=1.2e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=1, weight_decay=0.05,
                      weight_decay_end=0.1)
    s = build_schedules(cfg, total_steps=20, steps_per_epoch=5, global_videos=512)  # AMD: 16 x 32 GPUs
    assert s.peak_lr == pytest.approx(2.4e-3) and s.warmup_steps == 5
    assert s.lr[0] == pytest.approx(2e-6) and s.lr[5] == pytest.approx(2.4e-3)
    assert s.weight_decay[0] == pytest.approx(0.05) and s.weight_decay[-1] == pytest.approx(0.1, abs=2e-3)


def test_param_groups_skip_decay_on_biases_norms_and_tokens():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.proj = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.frozen = nn.Parameter(torch.zeros(8, 8), requires_grad=False)

    net = Net()
    groups = param_groups(net, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    assert [p is net.proj.weight for p in decay] == [True]  # the frozen one is left out entirely
    assert {id(p) for p in no_decay} == {id(net.pos_embed), id(net.mask_token), id(net.proj.bias),
                                         id(net.norm.weight), id(net.norm.bias)}
    opt = build_optimizer(net, OptimConfig(weight_decay=0.05), lr=1e-3, device=torch.device("cpu"))
    sched = build_schedules(OptimConfig(weight_decay=0.05, weight_decay_end=0.5, warmup_steps=1),
                            total_steps=10, steps_per_epoch=10, global_videos=256)
    apply_schedules(opt, sched, 9)
    assert opt.param_groups[0]["weight_decay"] > 0.4 and opt.param_groups[1]["weight_decay"] == 0.0
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == pytest.approx(sched.lr[9])


# ---- whole runs ----------------------------------------------------------------------------------------------

def _train_cmd(*args):
    return [sys.executable, "-m", "amd_fast.train", "--config", str(TINY), *args]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    return env


@pytest.mark.slow
def test_two_process_gloo_run(synthetic_shards, tmp_path):
    """torchrun, 2 ranks on CPU: trains, only rank 0 writes (one metrics row per step, checkpoints hold both
    ranks' RNG states), and the ranks read disjoint videos."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "amd_fast.train", "--config", str(TINY),
           *tiny_overrides(synthetic_shards, out, 4, "checkpoint.every_n_steps=2", "checkpoint.keep_last=5")]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 4 videos = 8 clips" in r.stderr
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) for row in rows)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["encoder.pth", "encoder.safetensors", "step-000000002.pt", "step-000000004.pt"]  # no temp files
    state = ckpt.load_checkpoint(out / "checkpoints" / "step-000000004.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank streams

    from amd_fast.data import DataConfig, build_loader

    cfg = DataConfig(shards=str(synthetic_shards), batch_size=2, num_frames=8, sampling_rate=2, input_size=32,
                     num_workers=0, train=False, device="cpu")
    seen = [torch.cat([b["video"].flatten(1) for b in build_loader(cfg, rank, 2)]) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) > 0
    assert torch.cdist(seen[0], seen[1]).min() > 1e-3  # no video shows up on both ranks


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted_run(synthetic_shards, tmp_path):
    steps = 10
    ref = tmp_path / "ref"
    r = subprocess.run(_train_cmd(*tiny_overrides(synthetic_shards, ref, steps)), cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(*tiny_overrides(synthetic_shards, run, steps)), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]  # saved, then "interrupted": `train && next` stops here
    assert "stopped by SIGTERM" in err
    stopped_at = ckpt.list_checkpoints(run / "checkpoints")[-1][0]
    assert 3 <= stopped_at < steps

    r = subprocess.run(_train_cmd(*tiny_overrides(synthetic_shards, run, steps)), cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {stopped_at}" in r.stderr  # resumed, did not restart
    got, want = read_metrics(run), read_metrics(ref)
    assert [m["step"] for m in got] == list(range(1, steps + 1))
    for g, w in zip(got, want):
        for key in ("loss", "loss_pix", "loss_dir", "loss_gen", "lr"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (g["step"], key)


def test_nonfinite_loss_stops_with_step_and_term(synthetic_shards, tmp_path, monkeypatch):
    from amd_fast import models
    from amd_fast.trainer.loop import NonFiniteLossError, run

    calls = {"n": 0}
    original = models.AMDObjective.__call__

    def poisoned(self, video, generator=None):
        loss, terms = original(self, video, generator)
        calls["n"] += 1
        if calls["n"] == 3:  # the third step (numbered 3, as in metrics.jsonl) goes bad in its generation term
            loss = loss + float("nan")
            terms = {**terms, "loss_gen": terms["loss_gen"] + float("nan"), "loss": loss.detach()}
        return loss, terms

    monkeypatch.setattr(models.AMDObjective, "__call__", poisoned)
    cfg = load_config(TINY, tiny_overrides(synthetic_shards, tmp_path / "nan", 6))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: loss_gen=nan") as e:
        run(cfg)
    debug = tmp_path / "nan" / "checkpoints" / "rank0-nonfinite-step-000000003.pt"
    assert str(debug) in str(e.value)
    assert [r["step"] for r in read_metrics(tmp_path / "nan")] == [1, 2]  # the same numbering as the log
    saved = torch.load(debug, weights_only=True)
    assert saved["bad_terms"] == ["loss_gen", "loss"] and saved["batch"]["video"].shape[0] == 4
    assert all(torch.isfinite(v).all() for v in saved["student"].values())  # checked before the update


def test_linear_probe_separates_informative_features_only():
    from amd_fast.probe import linear_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    centres = torch.randn(4, 16, generator=g) * 3
    x = centres[y] + torch.randn(200, 16, generator=g)
    good = linear_probe((x[:150], y[:150]), (x[150:], y[150:]))
    assert good["val_acc"] > 0.9
    noise = torch.randn(200, 16, generator=g)
    bad = linear_probe((noise[:150], y[:150]), (noise[150:], y[150:]))
    assert bad["val_acc"] < 0.5


def test_telemetry_writes_jsonl_and_tensorboard_window_means(tmp_path):
    """Each logged row is the mean over its window, in metrics.jsonl and in the TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from amd_fast.trainer.distributed import DistInfo
    from amd_fast.trainer.telemetry import Telemetry

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    tel = Telemetry(info, tmp_path, log_every=2, total_steps=4, start_step=0, clips_per_step=8,
                    tensorboard=True, progress=False)
    for step, loss in enumerate([1.0, 3.0, 5.0, 7.0], start=1):
        tel.record(step, {"loss": torch.tensor(loss)}, torch.tensor(loss / 10), lr=1e-3, data_wait_s=0.0)
    tel.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 4]
    assert [r["loss"] for r in rows] == pytest.approx([2.0, 6.0])
    assert [r["grad_norm"] for r in rows] == pytest.approx([0.2, 0.6])
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = acc.Scalars("train/loss")
    assert [(s.step, s.value) for s in scalars] == [(2, pytest.approx(2.0)), (4, pytest.approx(6.0))]
    assert "train/clips_per_s" in acc.Tags()["scalars"]


def test_train_cli_reports_bad_inputs_without_traceback(synthetic_shards, tmp_path, capsys):
    from amd_fast.train import main

    assert main(["--config", str(TINY), f"data.shards={tmp_path / 'missing'}", f"log.dir={tmp_path / 'a'}"]) == 2
    assert "shards path" in capsys.readouterr().err
    rc = main(["--config", str(TINY), *tiny_overrides(synthetic_shards, tmp_path / "b", 1),
               f"model.teacher_checkpoint={tmp_path / 'nope.pth'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.pth" in err and "model.teacher_checkpoint" in err and "Traceback" not in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_rendezvous_train_and_checkpoint(synthetic_shards, tmp_path):
    """README's multi-node command on one machine: two torchrun launches (--nnodes 2, c10d rendezvous on
    127.0.0.1), shards and run folder shared; they train together and rank 0 writes the checkpoints."""
    out, port = tmp_path / "run", _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "amd-fast-test",
           "-m", "amd_fast.train", "--config", str(TINY),
           *tiny_overrides(synthetic_shards, out, 4, "checkpoint.every_n_steps=2", "checkpoint.keep_last=5")]
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        results = [n.communicate(timeout=240) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    errs = "\n".join(err[-2000:] for _, err in results)
    assert [n.returncode for n in nodes] == [0, 0], errs
    assert "2 ranks" in errs and "global batch 4 videos = 8 clips" in errs
    assert [row["step"] for row in read_metrics(out)] == [1, 2, 3, 4]
    state = ckpt.load_checkpoint(out / "checkpoints" / "step-000000004.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["encoder.pth", "encoder.safetensors",
                                                                       "step-000000002.pt", "step-000000004.pt"]


def _children(pid: int):
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _zombie(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _rank_of(pid: int):
    env = dict(kv.split("=", 1) for kv in (Path("/proc") / str(pid) / "environ").read_text().split("\0") if "=" in kv)
    return int(env["RANK"]) if "RANK" in env else None


@pytest.mark.slow
def test_stalled_rank_times_out_instead_of_hanging(synthetic_shards, tmp_path):
    """SIGSTOP one of two Gloo ranks mid-run: the other fails after train.dist_timeout_s with a message
    naming the timeout, and the job exits non-zero instead of blocking forever."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "amd_fast.train", "--config", str(TINY),
           *tiny_overrides(synthetic_shards, out, 2000, "train.dist_timeout_s=8")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the stall"
        ranks = {_rank_of(pid): pid for pid in _children(proc.pid)}
        stopped = ranks[1]
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.time()
        while time.time() - t0 < 120 and Path(f"/proc/{ranks[0]}").exists() and not _zombie(ranks[0]):
            time.sleep(0.2)
        waited = time.time() - t0  # until rank 0 gave up
        # torchrun then SIGTERMs the stopped rank and waits 30 s before its SIGKILL: not ours to time
        os.kill(stopped, signal.SIGKILL)
        _, err = proc.communicate(timeout=150)
    finally:
        if stopped is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(stopped, sig)
                except ProcessLookupError:
                    pass
        proc.kill()
    assert proc.returncode != 0
    assert "did not complete within train.dist_timeout_s=8" in err, err[-3000:]
    assert "Traceback" not in err.split("did not complete")[0][-2000:]  # rank 0 ends with the message, no traceback
    assert waited < 120
