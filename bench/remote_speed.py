"""Eager-loader clips/s from local disk vs. from an S3 endpoint with added latency per request (issue 18).

Starts moto's S3 server on 127.0.0.1, uploads a shard folder, puts ``tests/fault_proxy`` (``--latency`` seconds
added to every request) in front of it, each in its own process, and times the eager loader on both, alternating
local and remote rounds so that a busy shared machine penalises both alike. Prints one JSON line per round and a
summary. Per round it also reports the CPU the loader itself spent per clip (this process and its workers, the
endpoint's two processes left out) and the cores the endpoint took: on a small machine the S3 server and the
proxy compete with the decoders for the same cores, which a bucket in another building would not.

    python bench/remote_speed.py --shards shards/bench-scenes-320p-vp9-gop32-24 --workers 2 --latency 0.05

Defaults are AMD pretraining's clip (16 frames at stride 4, 224 px, 4 clips per decoded video), delivered as uint8 as
the trainers take them (they normalize on the model's device), like the loaders part of ``bench/throughput.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_moto():
    from tests.s3_endpoint import S3Endpoint, free_port, wait_until_serving

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_serving(f"{url}/moto-api/", proc, "moto server")
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
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
    ap.add_argument("--shards", default="shards/bench-scenes-320p-vp9-gop32-24")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-sample", type=int, default=4)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    moto, ep = start_moto()
    proxy = None
    try:
        url = ep.upload(Path(a.shards), f"s3://{ep.make_bucket('bench')}/shards")
        proxy, proxy_url = start_proxy(ep.url, a.latency)
        os.environ.update({**ep.env, "AWS_ENDPOINT_URL": proxy_url})
        rows = []
        for r in range(a.rounds):
            for where, shards in (("local", a.shards), ("remote", url)):
                row = {"round": r, "where": where, "workers": a.workers, "latency_s": a.latency,
                       **measure(shards, a, (moto.pid, proxy.pid))}
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
            "shards": a.shards, "workers": a.workers, "input_size": a.input_size, "num_sample": a.num_sample}))
    finally:
        for p in (proxy, moto):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)


if __name__ == "__main__":
    main()
