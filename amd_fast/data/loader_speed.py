"""Clips/s and CPU-seconds per clip of a data loader on given shards (used by bench/).

``python -m amd_fast.data.loader_speed --shards shards/synthetic --backend dali eager``

Per loader: build it, run ``warmup`` batches (pipeline start, worker spawn, first decode), then time
``batches`` batches. Reported: clips/s (= videos x num_sample per second of wall time), videos/s, the
mean time ``next()`` blocks per batch (what a training step waits for when the model is faster than
the loader), and the CPU time the whole process tree spent per clip (this process's threads, live
DataLoader workers and workers that exited during the window): the cost of a clip on a machine whose
cores are all busy, which clips/s on an idle machine hides. On CUDA the clock stops after a
``torch.cuda.synchronize()`` so asynchronous copies are counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import tempfile
import time
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from amd_fast.errors import InputError, run_cli

from . import build_loader
from .config import DataConfig
from .decoders import DECODERS

log = logging.getLogger(__name__)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, its live descendants and its reaped children."""
    children: Dict[int, list] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    total, stack = _proc_cpu(os.getpid()), list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += _proc_cpu(pid)
        stack += children.get(pid, [])
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + reaped.ru_utime + reaped.ru_stime


def measure_clips_per_s(cfg: DataConfig, *, batches: int = 20, warmup: int = 3, rank: int = 0,
                        world_size: int = 1, exclude_pids: Sequence[int] = ()) -> Dict[str, float]:
    """Throughput and CPU cost of ``build_loader(cfg)``; cycles epochs when ``warmup + batches`` exceeds one.
    ``exclude_pids``: see :func:`measure_stream`."""
    loader = build_loader(cfg, rank, world_size)

    def stream():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    out = measure_stream(stream(), cfg, batches=batches, warmup=warmup, clips_of=lambda b: b["video"].shape[0],
                         exclude_pids=exclude_pids)
    loader.close()
    return {"backend": loader.backend, **out, "bad_samples": sum(loader.bad_samples.values())}


def measure_stream(it: Iterator, cfg: DataConfig, *, batches: int, warmup: int, clips_of: Callable,
                   exclude_pids: Sequence[int] = ()) -> Dict[str, float]:
    """Time ``batches`` batches of ``it`` after ``warmup`` untimed ones (start-up, first decodes): clips/s, the
    CPU time of the whole process tree and of this process alone per clip, the wait per batch. Also what the
    bench times the peers' own loaders with (``bench/parts/peers.py``). ``exclude_pids``: descendants that are not
    the loader (an S3 endpoint the bench started): their CPU is left out of the tree's and reported apart as
    ``excluded_cores``."""
    device = cfg.resolved_device()
    t_build = time.perf_counter()
    for _ in range(warmup):
        next(it)
    _sync(device)
    clips, wait = 0, 0.0
    main0 = _proc_cpu(os.getpid())
    excluded0 = sum(_proc_cpu(pid) for pid in exclude_pids)
    cpu0, t0 = process_tree_cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        tw = time.perf_counter()
        b = next(it)
        _sync(device)
        wait += time.perf_counter() - tw
        clips += clips_of(b)
    elapsed = time.perf_counter() - t0
    excluded = sum(_proc_cpu(pid) for pid in exclude_pids) - excluded0
    cpu = process_tree_cpu_seconds() - cpu0 - excluded
    main_cpu = _proc_cpu(os.getpid()) - main0  # the training process's own share (receive, transfer, normalize)
    return {
        "clips_per_s": clips / elapsed,
        "videos_per_s": clips / cfg.num_sample / elapsed,
        "cpu_s_per_clip": cpu / clips,
        "cpu_cores_busy": cpu / elapsed,
        "main_cpu_s_per_clip": main_cpu / clips,  # x100 = cores of the main process per 100 clips/s
        "data_wait_ms_per_batch": 1000 * wait / batches,
        "excluded_cores": excluded / elapsed,
        "warmup_s": t0 - t_build,
        "batches": batches,
        "clips": clips,
    }


def compare(cfg: DataConfig, backends: Sequence[str] = ("dali", "eager"), **kw) -> Dict[str, dict]:
    """measure_clips_per_s for each backend on the same config."""
    return {b: measure_clips_per_s(dataclasses.replace(cfg, backend=b), **kw) for b in backends}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m amd_fast.data.loader_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True, help="manifest, shard folder or tar")
    ap.add_argument("--split", default="train")
    ap.add_argument("--backend", nargs="+", default=["dali", "eager"], choices=["dali", "eager", "auto"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--sampling-rate", type=int, default=4)
    ap.add_argument("--num-sample", type=int, default=4)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--eager-decoder", default="pyav", choices=list(DECODERS), help="the eager loader's decoder")
    ap.add_argument("--dali-threads", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_cli(lambda: _run(a), "python -m amd_fast.data.loader_speed")


def _check_device(device: str) -> None:
    """--device must name a device torch has here: refused with one line, not a CUDA traceback mid-measure."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}, but torch sees no CUDA device; run with --device cpu (or auto)")
    if kind not in ("cuda", "cpu"):
        raise InputError(f"--device {device}: the loaders deliver to cpu or cuda only; use auto, cpu or cuda[:N]")


def _run(a: argparse.Namespace) -> int:
    if a.batches < 1 or a.warmup < 0:
        raise InputError(f"--batches must be >= 1 and --warmup >= 0 (got {a.batches}, {a.warmup})")
    if a.json:  # before minutes of measuring, not after
        try:
            if os.path.isdir(a.json):
                raise IsADirectoryError(21, "is a folder")
            with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(a.json))):
                pass
        except OSError as e:
            raise InputError(f"--json {a.json}: cannot write there ({e.strerror or e}); pass a writable file path"
                             ) from None
    try:
        cfg = DataConfig(shards=a.shards, split=a.split, device=a.device, batch_size=a.batch_size,
                         num_frames=a.num_frames, sampling_rate=a.sampling_rate, num_sample=a.num_sample,
                         input_size=a.input_size, num_workers=a.num_workers, eager_decoder=a.eager_decoder,
                         dali_threads=a.dali_threads, dtype=a.dtype)
    except ValueError as e:  # DataConfig's own check names the field
        raise InputError(str(e)) from None
    _check_device(cfg.resolved_device())
    results = compare(cfg, a.backend, batches=a.batches, warmup=a.warmup)
    print(f"{'backend':>8} {'clips/s':>9} {'CPU ms/clip':>12} {'wait ms/batch':>14} {'warmup s':>9}")
    for name, r in results.items():
        print(f"{name:>8} {r['clips_per_s']:9.1f} {1000 * r['cpu_s_per_clip']:12.1f} {r['data_wait_ms_per_batch']:14.1f} "
              f"{r['warmup_s']:9.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "results": results}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
