"""Loading part: clips/s and CPU-seconds per clip of amd_fast's loaders and the peers a user would pick instead.

Loaders, all given the *same* ``DataConfig`` (shards, per-rank epoch order, clip plan per position, multi-scale
crops to the same size, ``num_sample`` crops per decode, uint8 on the device), so they deliver the same clips:

* ``dali`` — amd_fast's DALI pipeline (CPU decoder on CPU; NVDEC 'mixed' on CUDA, at each count of
  ``--loader-pipelines``, with the decoder utilisation sampled by ``nvidia-smi``);
* ``eager`` — amd_fast's eager loader: PyAV in DataLoader workers (seeking to the keyframe before the clip,
  crop+scale+RGB in one FFmpeg filter-chain pass per crop, crops written into shared-memory batch buffers the
  main process hands out without a copy);
* ``torchcodec``, ``decord``, ``spdl`` — the peers used as their own documentation shows them
  (:mod:`bench.parts.peers`): torchcodec's VideoDecoder in a DataLoader Dataset with torchvision v2 crops,
  decord's VideoReader the way the VideoMAE / AMD reference loaders use it, SPDL's thread-pool pipeline;
  each reads the same samples in the same order with the same clip plan as ours;
* ``amd-reference`` — the AMD reference's own pretraining loader as written (decord, PIL crops and resizes per
  frame, float normalisation in the worker; :mod:`bench.parts.peers`), on the same clips;
* ``eager+torchcodec``, ``eager+decord``, ``eager+spdl`` — amd_fast's eager harness with only the decoder
  swapped (``data.eager_decoder``; on CUDA ``eager+torchcodec`` decodes with NVDEC in the main process).

A peer that cannot decode here keeps its rows as "not measured (<why>)": not installed, or "FFmpeg shared
libraries missing" (torchcodec on a machine without ``apt-get install ffmpeg``), decided once, before any
loader is built, by ``amd_fast.data.decoders.decoder_problem`` (the check the loader itself runs).
``workers`` is the knob a user turns: DataLoader processes for the eager loaders and the torchcodec / decord
peers, SPDL's thread concurrency, CPU threads per pipeline for DALI. Each number is the median
of ``--repeats`` calls of :func:`amd_fast.data.loader_speed.measure_clips_per_s` (or its twin
:func:`bench.parts.peers.measure_clips_per_s`; fresh loader, warm-up excluded), whose CPU time covers the whole
process tree (workers included).
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

# name -> (backend, decoder): backend "peer" = the decoder's project used as its documentation shows (peers.py)
LOADERS = {"dali": ("dali", "pyav"), "eager": ("eager", "pyav"),
           "torchcodec": ("peer", "torchcodec"), "decord": ("peer", "decord"), "spdl": ("peer", "spdl"),
           "amd-reference": ("peer", "decord"),
           "eager+torchcodec": ("eager", "torchcodec"), "eager+decord": ("eager", "decord"),
           "eager+spdl": ("eager", "spdl")}


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


def _measure(cfg, s, device, peer: str | None = None, workers: int = 0) -> dict:
    from amd_fast.data.loader_speed import measure_clips_per_s

    from bench.parts import peers

    runs, util = [], []
    # steady state for every loader alike: warm up until each worker's prefetch queue (and the eager loader's
    # ring of prefetch + 1 shared buffers per worker, mapped once by the main process) has cycled once
    warmup = max(s["loader_warmup"], (cfg.prefetch + 1) * max(cfg.num_workers, workers, 1))
    for _ in range(s["loader_repeats"]):
        sampler = DecoderUtilisation(device) if cfg.backend == "dali" else None
        if peer is not None:  # the peer as documented, on the same clips
            runs.append(peers.measure_clips_per_s(peer, cfg, batches_=s["loader_batches"], warmup=warmup,
                                                  workers=workers))
        else:
            runs.append(measure_clips_per_s(cfg, batches=s["loader_batches"], warmup=warmup))
        if sampler is not None:
            util.append(sampler.stop())
        gc.collect()  # the finished loader's workers / DALI threads must not compete with the next
    t = timing.Timing(tuple(r["clips_per_s"] for r in runs))
    median = lambda key: sorted(r[key] for r in runs)[len(runs) // 2]  # noqa: E731
    util = [u for u in util if u is not None]
    return {"clips_per_s": t.median, "clips_per_s_spread": [t.min, t.max], "cpu_s_per_clip": median("cpu_s_per_clip"),
            "main_cpu_s_per_clip": median("main_cpu_s_per_clip"),
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
        # uint8 clips on the device: what the trainers take (they normalize as the step's first op)
        common = dict(shards=str(folder), split=args.split, device=str(device), batch_size=s["loader_batch_size"],
                      num_frames=s["num_frames"], sampling_rate=s["sampling_rate"], input_size=s["input_size"],
                      num_sample=s["num_sample"], seed=0, dtype="uint8")
        set_entries, limit = decode_limit(folder, args.split, s, device, codec)
        entries += set_entries
        info = {"shards": folder.name, "codec": codec if codec != "yours" else ",".join(m.get("codecs", {})),
                "bytes_per_video": m["bytes"] / max(m["num_samples"], 1), "batch_size": s["loader_batch_size"],
                "num_sample": s["num_sample"]}
        for name in s["loaders"]:
            backend, decoder = LOADERS[name]
            problem = decoder_problem(decoder) if backend != "dali" else None
            if problem is not None:
                status = f"not measured ({problem[0]})"
                log.warning("loader %s: %s: %s", name, status, problem[1])
                if problem[1] not in notes:
                    notes.append(problem[1])
                once = name == "eager+torchcodec" and device.type == "cuda"  # measured once, in the main process
                entries += [{"part": "loaders", "kind": "clips", "loader": name, "backend": backend, "decoder": decoder,
                             "workers": w, "pipelines": None, **info, "clips_per_s": None, "status": status}
                            for w in s["loader_workers"][:1 if once else None]]
                continue
            pipelines = s["loader_pipelines"] if backend == "dali" else [None]
            for workers in s["loader_workers"]:
                for p in pipelines:
                    on_gpu_peer = name == "eager+torchcodec" and device.type == "cuda"
                    cfg = DataConfig(**common, backend="eager" if backend == "peer" else backend, eager_decoder=decoder,
                                     num_workers=0 if on_gpu_peer else workers, dali_threads=workers,
                                     dali_pipelines=p or 1)
                    row = {"part": "loaders", "kind": "clips", "loader": name, "backend": backend, "decoder": decoder,
                           "workers": workers, "pipelines": p, **info}
                    log.info("loader %s on %s shards, %d workers/threads%s", name, codec, workers,
                             f", {p} pipelines" if p else "")
                    try:
                        row.update(_measure(cfg, s, device, peer=name if backend == "peer" else None,
                                            workers=workers))
                        if limit and row.get("cpu_s_per_clip"):
                            row["decode_limit_fraction"] = 1 / row["cpu_s_per_clip"] / limit
                    except Exception as err:  # a peer not installed, DALI on CPU with H.264 shards, ...
                        row.update(clips_per_s=None, status=f"not measured ({type(err).__name__}: "
                                                             f"{str(err).splitlines()[0][:200]})")
                        log.warning("loader %s: %s", name, row["status"])
                    entries.append(row)
                    if on_gpu_peer:
                        break  # one main-process run: the worker count does not apply
    notes.append(f"Loaders: the same clips for every loader (the same samples in the same per-rank epoch order, "
                 f"the same clip plan per position: clip {s['num_frames']} frames x stride {s['sampling_rate']}, "
                 f"{s['num_sample']} multi-scale crops per decoded video to {s['input_size']}px, uint8 on {device}, as "
                 "the trainers take them: they normalize as the step's first op). Rows: dali = amd_fast's DALI "
                 "pipeline; eager = amd_fast's eager loader (PyAV in DataLoader workers, crop+scale+RGB in one FFmpeg "
                 "filter-chain pass per crop, crops written into shared-memory batch buffers handed out without a "
                 "copy); torchcodec, decord, spdl = each "
                 "peer used as its own documentation shows it (bench/parts/peers.py): torchcodec = its VideoDecoder "
                 "(approximate seek, 1 FFmpeg thread) in a map-style Dataset, torchvision v2 resized_crop per crop, "
                 "default collate, DataLoader workers; decord = its VideoReader + get_batch as the VideoMAE / AMD "
                 "reference loaders use it, torchvision crops, default collate, DataLoader workers; spdl = its "
                 "pipeline (PipelineBuilder, a thread pool of 'workers' threads: demux_video + sample_decode_video "
                 "to rgb24, torch crops, aggregate, collate); amd-reference = the AMD reference's pretraining loader "
                 "as written (decord get_batch, a PIL image per frame, PIL crop + bilinear resize per frame and crop, "
                 "Stack, ToTorchFormatTensor, GroupNormalize, float32 clips out of DataLoader workers); eager+torchcodec, eager+decord, eager+spdl = amd_fast's "
                 "eager harness with only the decoder swapped (data.eager_decoder; full RGB frames, a torch resize "
                 "per crop"
                 + ("; eager+torchcodec decodes with NVDEC in the main process" if device.type == "cuda" else "")
                 + "). 'workers' = DataLoader processes (eager, eager+<decoder>, torchcodec, decord), SPDL's "
                 "thread concurrency, or CPU threads per DALI pipeline. CPU ms/clip = CPU time of the whole "
                 "process tree per delivered clip; main = the training process's own share, in cores per 100 clips/s. "
                 "Decode-limit fraction = the loader's clips per CPU-second over the decode limit's (PyAV, one thread, "
                 "frames left in YUV, divided by the frames a clip costs to decode: span plus the lead-in from the "
                 "keyframe before it, shared by the crops; computed from the GOP). Shards: "
                 + ", ".join(f"{c}: {p.name}" for c, p in sets.items()) + ".")
    return entries, s, notes


def decode_limit(folder, split: str, s: dict, device: torch.device, codec: str) -> tuple[list[dict], float | None]:
    """Decode-only entries of one shard set and its decode limit in clips per CPU-second (None if unknown)."""
    from amd_fast.data.shards import open_shards, read_clip_info
    from amd_fast.shard import read_manifest
    from bench.parts.gop import decoded_per_delivered

    manifest = manifest_path(folder, split)
    entries, _ = decode.run(manifest, device=device, n_videos=s["decode_videos"], threads=max(s["loader_workers"]),
                            warmup=1, repeats=s["loader_repeats"])
    for e in entries:
        e["codec"] = codec
    gop = (read_manifest(manifest).get("options") or {}).get("gop")
    one = next((e for e in entries if e["backend"] == "pyav" and e.get("threads") == "1" and e.get("frames_per_s")), None)
    if not gop or one is None:
        return entries, None
    frames = [read_clip_info(x).frames for x in open_shards(str(folder), split).samples]
    per_clip = decoded_per_delivered(frames, int(gop), s["num_frames"], s["sampling_rate"], s["num_sample"]) * s["num_frames"]
    limit = one["frames_per_s"] / per_clip
    entries.append({"part": "loaders", "kind": "decode_limit", "codec": codec, "decoded_frames_per_clip": per_clip,
                    "clips_per_cpu_s": limit, "status": "computed"})
    return entries, limit
