"""Training from a bucket as a user runs it (issue 18): ``python -m amd_fast.train ... data.shards=s3://...`` with
the endpoint and credentials in the standard AWS_* variables; killed and resumed; and the one-line errors
(exit 2) for a missing object, a missing manifest and refused access."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fault_proxy import FaultProxy

pytest.importorskip("s3fs", reason="s3fs is part of the test extra")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bucket_shards(s3_endpoint, synthetic_shards) -> str:
    return s3_endpoint.upload(synthetic_shards, f"s3://{s3_endpoint.make_bucket('cli')}/synthetic")


def train_cmd(shards: str, log_dir: Path, *extra: str):
    return [sys.executable, "-m", "amd_fast.train", "--config", "configs/tiny-cpu.yaml", f"data.shards={shards}",
            f"log.dir={log_dir}", "data.num_workers=1", "data.backend=eager", "log.tensorboard=false", *extra]


def test_permanent_errors_end_with_one_line_naming_the_url_and_the_fix(s3_env, bucket_shards, tmp_path, capsys,
                                                                         monkeypatch):
    # the command's own main (run_cli: message on stderr, exit code) in this process: no torch start-up per case
    from amd_fast import train
    from amd_fast.data import remote

    bucket = bucket_shards.split("/")[2]
    with FaultProxy(s3_env.url, forbid=[f"/{bucket}/synthetic"]) as proxy:
        cases = {  # what is wrong -> (data.shards, endpoint, words the line must hold)
            "404": (f"{bucket_shards}/nope.manifest.json", s3_env.url, ["does not exist (404)", "data.shards"]),
            "no manifest": (f"s3://{bucket}/empty", s3_env.url, ["train.manifest.json does not exist",
                                                                  "python -m amd_fast.shard"]),
            "403": (bucket_shards, proxy.url, ["access to", "denied", "AWS_ACCESS_KEY_ID"]),
        }
        for name, (url, endpoint, words) in cases.items():
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
            remote.reset()
            rc = train.main(train_cmd(url, tmp_path / name.replace(" ", "_"))[3:])
            out, err = capsys.readouterr()
            errors = [line for line in err.splitlines() if line.startswith("amd_fast.train: error:")]
            assert rc == 2, (name, err[-2000:])
            assert len(errors) == 1 and url in errors[0], (name, err[-2000:])
            assert all(w in errors[0] for w in words), (name, errors[0])
            assert "Traceback" not in err and s3_env.env["AWS_SECRET_ACCESS_KEY"] not in out + err
    remote.reset()


def test_train_from_a_bucket_killed_and_resumed(s3_endpoint, bucket_shards, tmp_path):
    env = {**os.environ, **s3_endpoint.env}
    log_dir = tmp_path / "run"
    cmd = train_cmd(bucket_shards, log_dir, "train.max_steps=8", "checkpoint.every_n_steps=3", "train.log_every=1")
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(log_dir.rglob("*.pt")) and not list(log_dir.rglob("*.pth")) and p.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)  # a node lost: no chance to save
    p.communicate(timeout=30)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in next(log_dir.rglob("metrics.jsonl")).read_text().splitlines()]
    starts = [row for row in rows if row.get("event") == "run_start"]
    assert starts and starts[-1].get("resumed_from"), rows[:3]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps[-1] == 8 and len(steps) == len(set(steps))  # resumed, no step twice
    end = [row for row in rows if row.get("event") == "run_end"][-1]
    assert end["remote_errors_total"] == 0 and s3_endpoint.env["AWS_SECRET_ACCESS_KEY"] not in r.stderr
    assert s3_endpoint.env["AWS_SECRET_ACCESS_KEY"] not in next(log_dir.rglob("config.yaml")).read_text()


@pytest.mark.parametrize("endpoint", ["rclone", "moto"])
def test_remote_bench_reports_both_sides_and_keeps_the_endpoints_cpu_out_of_the_loaders(synthetic_shards, endpoint):
    """bench/remote_speed.py on the tiny shards: one local and one remote round, the summary's ratios, and the
    endpoint's processes (server, proxy) busy only while the loader reads from the bucket."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "remote_speed.py"), "--shards", str(synthetic_shards),
                        "--endpoint", endpoint,
                        # 10 timed batches: more than a worker reads ahead (2), so the endpoint serves inside the window
                        "--workers", "1", "--rounds", "1", "--batches", "10", "--warmup", "1", "--input-size", "32",
                        "--num-sample", "2", "--latency", "0.01"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    rows, summary = {x["where"]: x for x in lines if "where" in x}, lines[-1]
    assert set(rows) == {"local", "remote"} and all(x["clips_per_s"] > 0 for x in rows.values())
    assert rows["local"]["endpoint_cores"] < rows["remote"]["endpoint_cores"]
    assert all(x["loader_cpu_ms_per_clip"] > 0 for x in rows.values())
    assert summary["endpoint"] == endpoint
    assert summary["remote_over_local"] == pytest.approx(rows["remote"]["clips_per_s"] / rows["local"]["clips_per_s"],
                                                         abs=1e-3)
