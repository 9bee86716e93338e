"""Eager-loader clips/s from local disk vs. from an S3 endpoint with added latency per request (issue 18).

Starts moto's S3 server on 127.0.0.1, uploads a shard folder, puts ``tests/fault_proxy.FaultProxy`` (``--latency``
seconds added to every request) in front of it, and times the eager loader on both, alternating local and
remote rounds so that a busy shared machine penalises both alike. Prints one JSON line per round and a summary.

    python bench/remote_speed.py --shards shards/bench-scenes-320p-vp9-gop32-24 --workers 2 --latency 0.05
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_moto():
    from tests.s3_endpoint import S3Endpoint, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    return proc, S3Endpoint(url=url, env=env)


def clips_per_s(shards: str, a) -> float:
    from amd_fast.data import DataConfig, build_loader, remote

    remote.reset()
    cfg = DataConfig(shards=shards, backend="eager", device="cpu", batch_size=a.batch_size, num_frames=16,
                     sampling_rate=4, num_sample=a.num_sample, input_size=a.input_size, num_workers=a.workers,
                     prefetch=2, remote_concurrency=a.concurrency, drop_last=False)
    loader = build_loader(cfg)
    n, t0, clips = 0, None, 0
    while n < a.warmup + a.batches:
        for b in loader:
            n += 1
            if n == a.warmup:
                t0 = time.perf_counter()
            elif n > a.warmup:
                clips += b["video"].shape[0]
            if n >= a.warmup + a.batches:
                break
    return clips / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="shards/bench-scenes-320p-vp9-gop32-24")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-sample", type=int, default=1)
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from tests.fault_proxy import FaultProxy

    proc, ep = start_moto()
    try:
        url = ep.upload(Path(a.shards), f"s3://{ep.make_bucket('bench')}/shards")
        with FaultProxy(ep.url, latency=a.latency, fault_all=True) as proxy:
            os.environ.update({**ep.env, "AWS_ENDPOINT_URL": proxy.url})
            rows = []
            from amd_fast.data.loader_speed import _proc_cpu

            for r in range(a.rounds):
                for where, shards in (("local", a.shards), ("remote", url)):
                    server0, t0 = _proc_cpu(proc.pid), time.perf_counter()
                    rate = clips_per_s(shards, a)
                    # the S3 server's CPU share of the round: on a 2-core machine it competes with the decoders
                    server_cores = (_proc_cpu(proc.pid) - server0) / (time.perf_counter() - t0)
                    row = {"round": r, "where": where, "workers": a.workers, "latency_s": a.latency,
                           "clips_per_s": round(rate, 2), "s3_server_cores": round(server_cores, 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        mean = {w: sum(x["clips_per_s"] for x in rows if x["where"] == w) / a.rounds for w in ("local", "remote")}
        print(json.dumps({"summary": mean, "remote_over_local": round(mean["remote"] / mean["local"], 3),
                          "shards": a.shards, "requests_through_proxy": proxy.counts["requests"]}))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
