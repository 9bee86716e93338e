#!/usr/bin/env python
"""Measure amd_fast's fast paths against their eager baselines and peers, side by side, in one run.

    python bench/throughput.py                                   # everything, on the device it finds
    python bench/throughput.py --quick                           # small inputs: a smoke test in ~a minute
    python bench/throughput.py --parts kernels --kernel-batch 4  # one part
    python bench/throughput.py --shards shards/kinetics400 --device cuda --out /tmp/bench

Parts (``--parts``, comma separated; default all four):

* ``loaders`` — clips/s and CPU seconds per clip of the DALI pipeline, the eager loader (PyAV) and the
  peers a user would pick instead (torchcodec, decord, spdl, each used as its documentation shows, and each
  as the decoder inside our eager loader: eager+<decoder>), on realistic shards (320p camera-like video,
  10-12 s, 224 crops, num_sample 4) with the same sampling and augmentation, at several worker counts
  (and DALI pipeline counts on CUDA); plus the decode limit (frames/s of PyAV alone, DALI's decoder alone).
* ``gop`` — the same realistic videos encoded at several keyframe intervals: clips/s, CPU s/clip,
  bytes per video and decoded frames per delivered clip frame.
* ``kernels`` — forward+backward time of each memory-bound op as the AMD reference writes
  it, as our eager code and as our Triton kernel (CUDA only), at ViT-S and ViT-B shapes,
  with achieved GB/s from the kernels' modeled bytes and peak memory.
* ``train`` — steps/s, clips/s and data-wait fraction of the whole AMD step, fast path vs
  all-eager path (see ``bench/parts/train.py`` for the exact definition of each path).

Outputs: ``<out>/<device>-<date>.json`` (the record: one entry per measured path),
``.md`` (tables) and ``.png`` (chart), plus a one-screen summary on stdout, printed before the files are
written (if they cannot be written after all, the full tables follow on stdout and the JSON goes to a
temporary file). Every option is checked before anything is measured: names, sizes and counts (>= 1),
and that ``--out`` is a folder this process can write (it is created if missing); bad input exits 2 with
one line.
Run from anywhere; the repository root is put on ``sys.path`` below so that ``bench.*``
(this folder, a namespace package) and an un-installed checkout of ``amd_fast`` import.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python bench/throughput.py` puts bench/ (not the repo root) on sys.path; the bench
    # modules import each other as `bench.*`, so the root must be importable.
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from amd_fast.errors import EXIT_INTERRUPTED, InputError, RunFailed, run_cli  # noqa: E402
from bench import report, timing  # noqa: E402

log = logging.getLogger("bench")

PARTS = ("loaders", "gop", "kernels", "train")
# bench.parts.loaders.LOADERS' names (kept here: validating the options must not import torch)
LOADER_NAMES = ("dali", "eager", "torchcodec", "decord", "spdl", "amd-reference", "eager+torchcodec", "eager+decord",
                "eager+spdl")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4 (got {text!r})")
    return vals  # the values' range is checked by validate(), which names the option in one line


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/throughput.py",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--parts", type=_str_list, default=list(PARTS),
                   help="which parts to run (default: loaders,gop,kernels,train)")
    p.add_argument("--quick", action="store_true",
                   help="small inputs everywhere (tiny shape clips, 112 px, few batches): a smoke test, not a result")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default) = cuda if available, else cpu")
    p.add_argument("--shards", type=Path, default=None,
                   help="shard dir (with <split>.manifest.json) or manifest file; default: build realistic synthetic "
                        "shards under shards/bench-* (reused on later runs)")
    p.add_argument("--split", default="train", help="split of --shards to read (default: train)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output folder (default: bench/results)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default: 5; loaders 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls/batches/steps (default: 2; train 3)")
    g = p.add_argument_group("loaders (clip options apply to the loaders part; train uses its config's)")
    g.add_argument("--loaders", type=_str_list, default=None,
                   help=f"default: {','.join(LOADER_NAMES)} (torchcodec, decord, spdl: each used as its "
                   "documentation shows; amd-reference: the AMD reference's own pretraining loader; eager+<decoder>: our "
                   "eager loader with that decoder)")
    g.add_argument("--loader-workers", type=_int_list, default=None,
                   help="worker/thread counts to compare (default: 1,2,4,8,... up to the CPU count)")
    g.add_argument("--loader-pipelines", type=_int_list, default=None,
                   help="DALI pipelines per rank to compare (default: cuda 1,2,4,7; cpu 1)")
    g.add_argument("--num-sample", type=int, default=None, help="crops per decoded video (default: 4; quick 1)")
    g.add_argument("--loader-videos", type=int, default=None, help="videos in the realistic sets (default: 24)")
    g.add_argument("--gops", type=_int_list, default=None, help="GOP sweep (default: 1,4,8,16,32,256)")
    g.add_argument("--loader-batch-size", type=int, default=None, help="videos per batch (default: cuda 16, cpu 4)")
    g.add_argument("--loader-batches", type=int, default=None, help="timed batches per repeat (default: cuda 20, cpu 12)")
    g.add_argument("--input-size", type=int, default=None, help="crop size (default: 224; quick 112)")
    g.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: 16)")
    g.add_argument("--sampling-rate", type=int, default=None, help="frame stride (default: 4; quick 2)")
    g.add_argument("--decode-videos", type=int, default=None, help="videos decoded for the decode limit (default: 16)")
    g = p.add_argument_group("kernels")
    g.add_argument("--kernel-batch", type=_int_list, default=None,
                   help="batches B for the kernel shapes, comma separated (default: cuda 32,64; cpu 32)")
    g.add_argument("--kernel-shapes", type=_str_list, default=None, help="default: cuda vit_s,vit_b,vit_l; cpu vit_s,vit_b")
    g.add_argument("--kernel-ops", type=_str_list, default=None,
                   help="default: masked_gather,masked_gather_strided,align_loss,norm_pixel_loss")
    g = p.add_argument_group("train")
    g.add_argument("--train-models", type=_str_list, default=None,
                   help="student:teacher arch pairs (default: cuda vit_small:vit_large,vit_base:vit_large,"
                        "vit_small:vit_base; cpu vit_tiny_cpu:vit_mini_cpu)")
    g.add_argument("--train-paths", type=_str_list, default=None, help="default: fast,eager,eager_naive_attn")
    g.add_argument("--train-steps", type=int, default=None, help="timed steps per path (default: cuda 20, cpu 10)")
    g.add_argument("--train-batch-size", type=int, default=None, help="videos per step (default: the config's)")
    g.add_argument("--train-num-sample", type=int, default=None,
                   help="clips per video (repeated augmentation; default: the config's)")
    g.add_argument("--train-workers", type=int, default=None,
                   help="loader workers/threads in the train part (default: the config's)")
    g.add_argument("--train-override", action="append", metavar="KEY=VALUE",
                   help="extra amd_fast config override for the train part, repeatable (e.g. model.drop_path=0.1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but torch sees no CUDA device; run with --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# Every size / count option, each must be >= 1: a 0 would otherwise fall back to the default silently (the
# parts read ``args.x or default``) or crash deep inside a part (``--kernel-batch 0``: a reshape).
COUNT_OPTIONS = ("repeats", "num_sample", "loader_videos", "loader_batch_size", "loader_batches", "input_size",
                 "num_frames", "sampling_rate", "decode_videos", "train_steps", "train_batch_size",
                 "train_num_sample", "train_workers")
COUNT_LISTS = ("loader_workers", "loader_pipelines", "gops", "kernel_batch")


def validate(args: argparse.Namespace) -> None:
    """Every option a part would reject, checked before anything is measured (one line, exit 2)."""
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown or not args.parts:
        raise InputError(f"--parts: unknown {unknown or 'empty list'}; choose from {','.join(PARTS)}")
    unknown = [x for x in (args.loaders or []) if x not in LOADER_NAMES]
    if unknown:
        raise InputError(f"--loaders: unknown {unknown}; choose from {','.join(LOADER_NAMES)}")
    if args.shards is None and args.split != "train":
        raise InputError("--split: the bench's own shards have a train split only; pass --shards for others")
    for name in COUNT_OPTIONS:
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
    for name in COUNT_LISTS:
        v = getattr(args, name)
        if v is not None and (not v or min(v) < 1):
            raise InputError(f"--{name.replace('_', '-')} takes integers >= 1 like 1,2,4 (got "
                             f"{','.join(map(str, v)) or 'nothing'})")
    if args.warmup is not None and args.warmup < 0:
        raise InputError(f"--warmup must be >= 0 (got {args.warmup})")
    from bench.parts import kernels, train

    for option, given, known in (("kernel-ops", args.kernel_ops, kernels.OPS),
                                 ("kernel-shapes", args.kernel_shapes, kernels.SHAPES),
                                 ("train-models", args.train_models, train.MODELS),
                                 ("train-paths", args.train_paths, train.PATHS)):
        unknown = [x for x in given or [] if x not in known]
        if given is not None and not given:  # "" or "," would silently fall back to the default list
            raise InputError(f"--{option} names nothing; choose from {','.join(known)} (or drop --{option})")
        if unknown:
            raise InputError(f"--{option}: unknown {unknown}; choose from {','.join(known)}")
    if args.shards is not None and {"loaders", "train"} & set(args.parts):
        from bench.parts.shards import manifest_path

        m = manifest_path(args.shards, args.split)
        if not m.is_file():
            raise InputError(f"--shards {args.shards}: no {m.name} there; build shards with `python -m amd_fast.shard "
                             f"... --out {args.shards}` or pass the folder that holds the manifest")
        if m.suffix != ".json":
            raise InputError(f"--shards {args.shards}: not a shard folder or a manifest .json; pass the folder that "
                             f"holds {args.split}.manifest.json (e.g. --shards {m.parent})")
        from amd_fast.shard.manifest import read_manifest

        try:  # a .tar or another file passed as --shards: refused here, not as a traceback inside the part
            manifest = read_manifest(m)
        except ValueError as e:
            raise InputError(str(e).splitlines()[0]) from None
        if manifest["num_samples"] < 1:
            raise InputError(f"--shards {args.shards}: {m.name} lists no samples; rebuild the shards "
                             "(python -m amd_fast.shard ...) or pass another shard folder")


def check_out(out: Path) -> None:
    """``--out`` must be a folder we can write, before minutes of measuring: create it, write a temp file."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror or e}); pass a folder you can write "
                         "(it is created if missing)") from None


def summary(record: dict, seconds: float) -> str:
    """The one-screen stdout summary: headline numbers and ratios (printed before the files are written)."""
    entries = record["entries"]
    env = record["environment"]
    lines = [f"amd_fast bench on {env['device']} ({env.get('gpu_name') or env['cpu_model']}), {seconds:.0f} s"]
    for (codec, workers, peer), r in sorted(report.eager_over_peers(entries).items()):
        lines.append(f"loaders  {codec} {workers} workers: eager / {peer}: clips per CPU-second ×{r:.2f}")
    for (codec, workers, peer), (r_clips, r_cpu) in sorted(report.loader_speedups(entries).items()):
        lines.append(f"loaders  {codec} {workers} workers: DALI / {peer}: clips/s ×{r_clips:.2f}, "
                     f"clips per CPU-second ×{r_cpu:.2f}")
    for e in entries:
        if e["part"] == "loaders" and e.get("kind") == "clips" and e.get("clips_per_s"):
            pipes = f", {e['pipelines']} pipelines" if e.get("pipelines") else ""
            util = (f", decoder {e['decoder_utilisation_pct']:.0f} %" if e.get("decoder_utilisation_pct") is not None
                    else "")
            frac = f", {100 * e['decode_limit_fraction']:.0f} % of the decode limit" if e.get("decode_limit_fraction") else ""
            lines.append(f"         {e['loader']:<16} {e['codec']:<4} {e['workers']:>2} workers{pipes}: "
                         f"{e['clips_per_s']:8.1f} clips/s, {1000 * e['cpu_s_per_clip']:6.1f} CPU ms/clip{frac}{util}")
        if e["part"] == "loaders" and e.get("kind") == "decode_limit":
            lines.append(f"         decode limit {e['codec']}: {e['clips_per_cpu_s']:.0f} clips per CPU-second "
                         f"({e['decoded_frames_per_clip']:.1f} decoded frames per clip)")
        if e["part"] == "loaders" and e.get("kind") == "decode" and e.get("frames_per_s"):
            lines.append(f"         decode limit {e['backend']} ({e.get('threads')} threads): {e['frames_per_s']:.0f} frames/s")
        if e["part"] == "gop" and e.get("clips_per_s"):
            lines.append(f"gop {e['gop']:>4} {e['loader']:<6}: {e['clips_per_s']:6.1f} clips/s, "
                         f"{1000 * e['cpu_s_per_clip']:6.1f} CPU ms/clip, {e['bytes_per_video'] / 1e3:7.0f} kB/video, "
                         f"{e['decoded_per_delivered_frame']:.2f} decoded frames per clip frame")
    for (op, shape, batch), ratios in sorted(report.kernel_speedups(entries).items()):
        others = ", ".join(f"{impl} ×{r:.2f}" for impl, r in ratios.items() if impl != "amd_reference")
        ref = next(e for e in entries if e["part"] == "kernels" and (e["op"], e["shape"], e.get("batch")) == (op, shape, batch)
                   and e["impl"] == "amd_reference")
        lines.append(f"kernels  {op:<21} {shape:<5} B={batch:<3} ref {ref['ms_median']:8.2f} ms; speed-up vs ref: {others}")
    for e in entries:
        if e["part"] == "train" and e.get("clips_per_s"):
            wait = e.get("data_wait_fraction")
            lines.append(f"train    {e['model']:<26} {e['path']:<16} {e['steps_per_s']:7.2f} steps/s "
                         f"{e['clips_per_s']:8.1f} clips/s  data wait {100 * wait:4.0f} %")
    for model, r in report.train_speedups(entries).items():
        lines.append(f"train    {model}: fast / all-eager clips/s ×{r:.2f}")
    skipped = [e for e in entries if e.get("status", "measured") != "measured"]
    if skipped:
        lines.append(f"{len(skipped)} entries not measured (reasons in the .md/.json), e.g. {skipped[0].get('status')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_cli(lambda: _bench_interruptible(args), "bench/throughput.py", "no part had finished; nothing was written")


def _bench_interruptible(args: argparse.Namespace) -> int:
    """``bench``; a Ctrl-C / SIGTERM after some parts finished ends with exit 130 naming their -partial record."""
    try:
        return bench(args)
    except KeyboardInterrupt as e:
        if not e.args:
            raise
        print(f"\nbench/throughput.py: interrupted; {e.args[0]}; rerun the same command for all parts", file=sys.stderr)
        return EXIT_INTERRUPTED


def bench(args: argparse.Namespace) -> int:
    validate(args)
    check_out(args.out)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    env = timing.environment(device)
    record = {"environment": env, "settings": {"device": str(device), "parts": ",".join(args.parts)},
              "entries": [], "notes": []}
    log.info("bench on %s (%s); parts: %s", device, env.get("gpu_name") or env["cpu_model"], ",".join(args.parts))

    failed: list[str] = []
    bad_input: list[str] = []
    shards = None
    if "train" in args.parts:
        from bench.parts import shards as shard_part

        shards = shard_part.resolve(args, device)
        record["settings"]["shards"] = str(shards)

    for part in PARTS:
        if part not in args.parts:
            continue
        log.info("part %s ...", part)
        tp = time.perf_counter()
        if part == "loaders":
            from bench.parts import loaders as mod
        elif part == "gop":
            from bench.parts import gop as mod
        elif part == "kernels":
            from bench.parts import kernels as mod
        else:
            from bench.parts import train as mod
        try:
            entries, settings, notes = mod.run(args, device, shards=shards)
        except KeyboardInterrupt:
            if record["entries"]:  # hours of finished parts are kept, as a -partial record, never a complete one
                record["notes"].append(f"Interrupted during part {part}; it and the parts after it are missing.")
                print(summary(record, time.perf_counter() - t0), flush=True)
                paths = write_record(record, args.out, suffix="-partial")
                print("\n".join(f"wrote {p}" for p in paths.values()), flush=True)
                raise KeyboardInterrupt(f"the finished parts' numbers are in {paths['json']}") from None
            raise
        except InputError as err:  # input only this part rejects: keep the other parts' numbers, exit 2
            log.error("part %s: %s", part, err)
            failed.append(part)
            bad_input.append(f"part {part}: {err}")
            record["notes"].append(f"Part {part} NOT RUN (bad input: {err}); its numbers are missing from this record.")
            continue
        except Exception as err:  # keep the other parts' numbers; the failure is recorded and the exit code set
            log.exception("part %s failed", part)
            failed.append(part)
            record["notes"].append(f"Part {part} FAILED ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
                                   "its numbers are missing from this record.")
            continue
        record["entries"] += entries
        record["settings"].update(settings)
        record["notes"] += notes
        record["settings"][f"{part}_seconds"] = round(time.perf_counter() - tp, 1)

    if bad_input and not record["entries"]:
        raise InputError("; ".join(bad_input))  # nothing was measured: nothing to write
    seconds = time.perf_counter() - t0
    record["settings"]["total_seconds"] = round(seconds, 1)
    record["environment"]["loadavg_end"] = timing.load_average()
    # The figures reach stdout before any file is written, so a failed write cannot lose them.
    print(summary(record, seconds), flush=True)
    paths = write_record(record, args.out, suffix="-partial" if failed else "")
    print("\n".join(f"wrote {p}" for p in paths.values()))
    if bad_input:
        raise InputError("; ".join(bad_input) + f" (the other parts' numbers are in {paths['json']})")
    if failed:
        raise RunFailed(f"part(s) {', '.join(failed)} failed (tracebacks above); the other parts' numbers are in "
                        f"{paths['json']}")
    return 0


def write_record(record: dict, out: Path, suffix: str) -> dict:
    """``report.write_all``; a run with a failed part never replaces a complete record of the same device and
    day (``suffix``). If the folder refuses the files after all (full disk, permissions changed during the
    run), the full tables go to stdout and the JSON record to a temporary file, and the run fails naming it."""
    try:
        return report.write_all(record, out, suffix=suffix)
    except OSError as e:
        print(report.markdown(record), flush=True)
        fd, fallback = tempfile.mkstemp(prefix="amd_fast-bench-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, default=str)
        raise RunFailed(f"could not write the results to {out} ({e.strerror or e}); the tables are printed above "
                        f"and the record is saved in {fallback}") from None


if __name__ == "__main__":
    sys.exit(main())
