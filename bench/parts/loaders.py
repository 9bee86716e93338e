"""Loading part: clips/s and CPU-seconds per clip of amd_fast's loaders and the peers a user would pick instead.

Loaders, all built from the *same* ``DataConfig`` (shards, clip sampling, multi-scale crop to the same size,
``num_sample`` crops per decode, float32 ImageNet-normalized on the device), so they deliver the same clips:

* ``dali`` — amd_fast's DALI pipeline (CPU decoder on CPU; NVDEC 'mixed' on CUDA, at each count of
  ``--loader-pipelines``, with the decoder utilisation sampled by ``nvidia-smi``);
* ``eager`` — amd_fast's eager loader: PyAV in DataLoader workers (seeking to the keyframe before the clip);
* ``torchcodec`` — the eager loader with torchcodec decoding (on CUDA: NVDEC in the main process);
* ``decord`` — the eager loader with decord decoding, the decoder of the VideoMAE / AMD reference loaders.

A peer that cannot decode here keeps its rows as "not measured (<why>)": not installed, or "FFmpeg shared
libraries missing" (torchcodec on a machine without ``apt-get install ffmpeg``), decided once, before any
loader is built, by ``amd_fast.data.decoders.decoder_problem`` (the check the loader itself runs).
``workers`` is the knob a user turns: DataLoader processes for the eager loaders, CPU threads per pipeline
for DALI. Each number is the median
of ``--repeats`` calls of :func:`amd_fast.data.loader_speed.measure_clips_per_s` (fresh loader, warm-up
excluded), whose CPU time covers the whole process tree (workers included).
"""
from __future__ import annotations

import gc
import logging
import os
import subprocess
import threading

import torch

from bench import timing
from bench.parts import decode
from bench.parts.shards import loader_sets, manifest_path

log = logging.getLogger("bench.loaders")

# name -> (backend, eager decoder)
LOADERS = {"dali": ("dali", "pyav"), "eager": ("eager", "pyav"), "torchcodec": ("eager", "torchcodec"),
           "decord": ("eager", "decord")}


def default_workers() -> list[int]:
    cpus = os.cpu_count() or 1
    return [w for w in (1, 2, 4, 8, 16) if w <= cpus] or [1]


def settings_for(args, device: torch.device) -> dict:
    cuda, quick = device.type == "cuda", args.quick
    return {
        "loader_set": "quick" if quick else ("yours" if args.shards else "realistic"),
        "loader_workers": args.loader_workers or ([1] if quick else default_workers()),
        "loader_pipelines": args.loader_pipelines or ([1, 2, 4, 7] if cuda and not quick else [1]),
        "loaders": args.loaders or list(LOADERS),
        "loader_batch_size": args.loader_batch_size or (16 if cuda else 4),
        "loader_batches": args.loader_batches or (4 if quick else (20 if cuda else 8)),
        "input_size": args.input_size or (112 if quick else 224),
        "num_frames": args.num_frames or 16,
        "sampling_rate": args.sampling_rate or (2 if quick else 4),
        "num_sample": args.num_sample or (1 if quick else 4),
        "decode_videos": args.decode_videos or (4 if quick else 16),
        "loader_repeats": args.repeats or (1 if quick else 3),
        "loader_warmup": (1 if quick else 2) if args.warmup is None else args.warmup,
    }


class DecoderUtilisation:
    """Samples ``nvidia-smi``'s decoder utilisation (%) every 200 ms while a measurement runs."""

    def __init__(self, device: torch.device):
        self.samples: list[float] = []
        self._proc = None
        if device.type != "cuda":
            return
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={device.index or 0}", "--query-gpu=utilization.decoder",
                 "--format=csv,noheader,nounits", "-lms", "200"], stdout=subprocess.PIPE, text=True)
        except OSError as e:
            log.warning("decoder utilisation not sampled (%s)", e)
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        busy = self.samples[len(self.samples) // 5:]  # drop the start-up fifth (pipelines filling up)
        return sum(busy) / len(busy) if busy else None


def _measure(cfg, s, device) -> dict:
    from amd_fast.data.loader_speed import measure_clips_per_s

    runs, util = [], []
    for _ in range(s["loader_repeats"]):
        sampler = DecoderUtilisation(device) if cfg.backend == "dali" else None
        runs.append(measure_clips_per_s(cfg, batches=s["loader_batches"], warmup=s["loader_warmup"]))
        if sampler is not None:
            util.append(sampler.stop())
        gc.collect()  # the finished loader's workers / DALI threads must not compete with the next
    t = timing.Timing(tuple(r["clips_per_s"] for r in runs))
    median = lambda key: sorted(r[key] for r in runs)[len(runs) // 2]  # noqa: E731
    util = [u for u in util if u is not None]
    return {"clips_per_s": t.median, "clips_per_s_spread": [t.min, t.max], "cpu_s_per_clip": median("cpu_s_per_clip"),
            "cpu_cores_busy": median("cpu_cores_busy"), "data_wait_ms_per_batch": median("data_wait_ms_per_batch"),
            "startup_s": median("warmup_s"), "bad_samples": max(r["bad_samples"] for r in runs), "repeats": t.n,
            "decoder_utilisation_pct": sum(util) / len(util) if util else None, "status": "measured"}


def run(args, device: torch.device, shards) -> tuple[list[dict], dict, list[str]]:
    from amd_fast.data import DataConfig
    from amd_fast.data.decoders import decoder_problem
    from amd_fast.shard import read_manifest

    s = settings_for(args, device)
    entries, notes = [], []
    sets = loader_sets(args, device)
    for codec, folder in sets.items():
        m = read_manifest(manifest_path(folder, args.split))
        common = dict(shards=str(folder), split=args.split, device=str(device), batch_size=s["loader_batch_size"],
                      num_frames=s["num_frames"], sampling_rate=s["sampling_rate"], input_size=s["input_size"],
                      num_sample=s["num_sample"], seed=0)
        info = {"shards": folder.name, "codec": codec if codec != "yours" else ",".join(m.get("codecs", {})),
                "bytes_per_video": m["bytes"] / max(m["num_samples"], 1), "batch_size": s["loader_batch_size"],
                "num_sample": s["num_sample"]}
        for name in s["loaders"]:
            backend, decoder = LOADERS[name]
            problem = decoder_problem(decoder) if backend == "eager" else None
            if problem is not None:
                status = f"not measured ({problem[0]})"
                log.warning("loader %s: %s: %s", name, status, problem[1])
                if problem[1] not in notes:
                    notes.append(problem[1])
                once = name == "torchcodec" and device.type == "cuda"  # measured once, in the main process
                entries += [{"part": "loaders", "kind": "clips", "loader": name, "backend": backend, "decoder": decoder,
                             "workers": w, "pipelines": None, **info, "clips_per_s": None, "status": status}
                            for w in s["loader_workers"][:1 if once else None]]
                continue
            pipelines = s["loader_pipelines"] if backend == "dali" else [None]
            for workers in s["loader_workers"]:
                for p in pipelines:
                    on_gpu_peer = name == "torchcodec" and device.type == "cuda"
                    cfg = DataConfig(**common, backend=backend, eager_decoder=decoder,
                                     num_workers=0 if on_gpu_peer else workers, dali_threads=workers,
                                     dali_pipelines=p or 1)
                    row = {"part": "loaders", "kind": "clips", "loader": name, "backend": backend, "decoder": decoder,
                           "workers": workers, "pipelines": p, **info}
                    log.info("loader %s on %s shards, %d workers/threads%s", name, codec, workers,
                             f", {p} pipelines" if p else "")
                    try:
                        row.update(_measure(cfg, s, device))
                    except Exception as err:  # a peer not installed, DALI on CPU with H.264 shards, ...
                        row.update(clips_per_s=None, status=f"not measured ({type(err).__name__}: "
                                                             f"{str(err).splitlines()[0][:200]})")
                        log.warning("loader %s: %s", name, row["status"])
                    entries.append(row)
                    if on_gpu_peer:
                        break  # one main-process run: the worker count does not apply
    first = next(iter(sets.values()))
    dec_entries, dec_notes = decode.run(manifest_path(first, args.split), device=device, n_videos=s["decode_videos"],
                                        threads=max(s["loader_workers"]), warmup=1, repeats=s["loader_repeats"])
    entries += dec_entries
    notes += dec_notes
    notes.append(f"Loaders: the same DataConfig for every loader (clip {s['num_frames']} frames x stride "
                 f"{s['sampling_rate']}, {s['num_sample']} multi-scale crops per decoded video to {s['input_size']}px, "
                 f"float32 ImageNet-normalized on {device}); 'workers' = DataLoader processes (eager, torchcodec, "
                 "decord) or CPU threads per DALI pipeline. CPU s/clip = CPU time of the whole process tree per "
                 "delivered clip. Shards: " + ", ".join(f"{c}: {p.name}" for c, p in sets.items()) + ".")
    return entries, s, notes
