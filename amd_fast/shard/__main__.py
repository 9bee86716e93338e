"""python -m amd_fast.shard — build WebDataset video shards (see shards/FORMAT.md).

Examples::

    python -m amd_fast.shard --src synthetic                          # demo data -> shards/synthetic
    python -m amd_fast.shard --src kinetics400 --root /data/k400      # copy videos as they are
    python -m amd_fast.shard --src kinetics400 --root /data/k400 --preset nvdec --workers 32   # for GPU training
    python -m amd_fast.shard --src ssv2 --root /data/ssv2 --codec vp9 --short-side 224 --gop 8 --workers 16
    python -m amd_fast.shard --src kinetics400 --root /data/k400 --verify   # re-check what was built
    python -m amd_fast.shard --src kinetics400 --root /data/k400 --preset cpu --distributor ray --ray-address auto --out s3://bucket/k400   # on a Ray cluster, into a bucket

Exit codes: 0 ok, 1 the build failed (too many failed videos, disk full) or --verify found problems,
2 bad input (options, dataset layout, a folder another run is writing), 130 interrupted (rerun the
same command to resume).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

from amd_fast.errors import InputError, RunFailed, run_cli

from .build import build_shards_report
from .options import CODECS, DEFAULT_CLIP_SPAN, DISTRIBUTORS, PRESETS, SOURCES, ShardOptions
from .synthetic import CONTENTS
from .verify import verify_shards

log = logging.getLogger("amd_fast.shard")


def _size(text: str) -> int:
    """'500M', '2G', '1048576' -> bytes."""
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    return int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m amd_fast.shard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", choices=SOURCES, help="dataset layout (default: synthetic; with --verify and no "
                   "--src, nothing is built: only the shards in --out are checked)")
    p.add_argument("--root", type=Path, help="dataset folder (all sources but synthetic; for csv optional: where "
                   "relative paths start, default the CSV's folder)")
    p.add_argument("--list", dest="list_file", type=Path,
                   help="--src csv: CSV with header path,label[,split]; rows of splits not in --splits are counted "
                        "in the log and the manifest ('unbuilt_splits'), rows without a split go to the first split")
    p.add_argument("--classes", dest="classes_file", type=Path,
                   help="kinetics400/csv: text file, one class name per line (index = line); overrides the "
                        "layout's own list")
    p.add_argument("--out", help="output folder, or an fsspec URL such as s3://bucket/prefix (each tar is staged on "
                   "local disk and uploaded whole, the manifest last) (default: shards/<src>)")
    p.add_argument("--splits", help="comma-separated splits (default: train,val; ucf101/hmdb51: train,test; csv/folder: "
                   "train). Case-insensitive: 'Train' rows or a 'Train/' folder belong to split train; files are "
                   "named in lowercase")
    p.add_argument("--fold", type=int, default=1, help="ucf101/hmdb51 official split number, 1-3 (default: 1)")
    p.add_argument("--samples-per-shard", type=int, default=256, help="videos per tar (default: 256)")
    p.add_argument("--shard-bytes", type=_size, help="close a shard at this many source bytes (e.g. 1G)")
    p.add_argument("--workers", type=int, default=2,
                   help="encoder processes, capped at this machine's CPU cores and the number of videos (logged); "
                        "0 = in this process (default: 2)")
    p.add_argument("--distributor", choices=DISTRIBUTORS, default="local",
                   help="local: a process pool on this machine (default); ray: shard-sized tasks on a Ray cluster "
                        "(pip install 'amd_fast[ray]'; README 'Building shards on a Ray cluster')")
    p.add_argument("--ray-address", help="--distributor ray: an existing cluster ('auto' after `ray start` on this "
                   "node, or host:port); default: start a local one for the build with --workers CPUs")
    p.add_argument("--max-task-retries", type=int, default=3,
                   help="--distributor ray: run a shard task again this many times when its worker or node dies "
                        "(default: 3)")
    p.add_argument("--video-timeout-s", type=float, default=600.0,
                   help="stop a video's transcode after this many seconds and log it as failed (a file that hangs "
                        "the decoder); 0 = no limit (default: 600)")
    p.add_argument("--codec", choices=CODECS, help="default: vp9 for synthetic, copy for real datasets")
    p.add_argument("--short-side", type=int,
                   help="resize so the short side is this, an even number in 16..4096 (re-encoding codecs)")
    p.add_argument("--gop", type=int, help="keyframe interval in frames, 1..100000 (re-encoding codecs)")
    p.add_argument("--preset", choices=tuple(PRESETS), help="decode-efficient training shards: nvdec = H.264 for "
                   "GPU decode, cpu = VP9 for DALI's CPU decoder; both short side 320 and a GOP from --clip-span "
                   "(options given explicitly win). README: 'Decode-efficient shards'")
    p.add_argument("--clip-span", type=int, default=DEFAULT_CLIP_SPAN,
                   help="frames one training clip covers, (num_frames-1)*sampling_rate+1, for the preset's GOP "
                        f"(default {DEFAULT_CLIP_SPAN}: 16 frames at stride 4; SSv2's 16 at stride 2: 31)")
    p.add_argument("--limit", type=int, help="at most this many videos per split (after the seeded shuffle)")
    p.add_argument("--seed", type=int, default=0, help="shuffle + synthetic content seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="delete this tool's files for the splits and rebuild")
    p.add_argument("--max-failures", type=int, help="videos a split may skip before the run fails (default 5%%)")
    p.add_argument("--verify", action="store_true",
                   help="re-read and check every shard: after building (or resuming) with --src, or, without --src, "
                        "only the shards already in --out (reads only, builds nothing)")
    p.add_argument("--synthetic-count", type=int, default=320, help="total clips; a quarter go to val (default: 320)")
    p.add_argument("--synthetic-frames", type=int, default=32, help="frames per clip (default: 32)")
    p.add_argument("--synthetic-size", type=int, default=80,
                   help="clip short side (shapes: width = height; scenes: 4:3) (default: 80)")
    p.add_argument("--synthetic-classes", type=int, default=4, help="motion directions = classes (default: 4)")
    p.add_argument("--synthetic-content", choices=CONTENTS, default="shapes",
                   help="shapes: moving shapes (the demo); scenes: a camera panning over natural-statistics "
                        "scenes, camera-video bitrates (the loader bench) (default: shapes)")
    p.add_argument("--synthetic-min-frames", type=int,
                   help="give each clip its own length in [this, --synthetic-frames] (default: all equal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log every skipped video")
    return p.parse_args(argv)


def options_from_args(a: argparse.Namespace) -> ShardOptions:
    return ShardOptions(
        src=a.src or "synthetic", root=a.root, list_file=a.list_file, classes_file=a.classes_file, out=a.out,
        splits=tuple(s.strip() for s in a.splits.split(",") if s.strip()) if a.splits is not None else None,
        samples_per_shard=a.samples_per_shard, shard_bytes=a.shard_bytes, workers=a.workers, codec=a.codec,
        short_side=a.short_side, gop=a.gop, limit=a.limit, seed=a.seed, fold=a.fold, overwrite=a.overwrite,
        max_failures=a.max_failures, verify=a.verify, progress=not a.no_progress, preset=a.preset,
        clip_span=a.clip_span, synthetic_count=a.synthetic_count, synthetic_frames=a.synthetic_frames,
        synthetic_size=a.synthetic_size, synthetic_classes=a.synthetic_classes,
        synthetic_content=a.synthetic_content, synthetic_min_frames=a.synthetic_min_frames,
        distributor=a.distributor, ray_address=a.ray_address, max_task_retries=a.max_task_retries,
        video_timeout_s=a.video_timeout_s)


def _summary(report) -> str:
    lines = []
    ok = failed = encoded = 0
    for split, s in report.splits.items():
        lines.append(f"  {split:>6}: {s.videos_ok} videos ok, {s.videos_failed} failed, {s.shards} shards "
                     f"({s.shards_kept} kept from a previous run), {s.bytes / 1e6:.1f} MB"
                     + (f"; {s.retried} shard task(s) retried after a worker or node died" if s.retried else ""))
        ok, failed, encoded = ok + s.videos_ok, failed + s.videos_failed, encoded + s.encoded
    rate = encoded / report.wall_s if report.wall_s > 0 else 0.0
    lines.append(f"  total: {ok} ok, {failed} failed; {encoded} videos processed in {report.wall_s:.1f} s "
                 f"({rate:.1f} videos/s)")
    if report.left_out:
        lines.append(f"  not built (listed for splits not in --splits): "
                     f"{', '.join(f'{s} {n}' for s, n in report.left_out.items())}; "
                     f"--splits {report.include_all} builds them too")
    for split, m in report.manifests.items():
        lines.append(f"  {split} manifest: {m}")
        if report.splits[split].videos_failed:
            lines.append(f"  {split} failures (source, reason): {report.failure_logs[split]}")
    return "\n".join(lines)


def verify_only(out: Optional[Path]) -> int:
    """``--verify`` without ``--src``: check the shard folder as it is (what our error messages suggest); a
    folder without manifests is bad input, never a place to build synthetic shards in."""
    if out is None:
        raise InputError("--verify without --src needs --out: the shard folder to check")
    if "://" in str(out):
        raise InputError(f"--verify --out {out}: --verify reads a local folder; copy the shards down first")
    out = Path(out)
    if not out.is_dir() or not any(out.glob("*.manifest.json")):
        raise InputError(f"--verify --out {out}: no <split>.manifest.json there, so nothing to check; point --out at "
                         "a shard folder, or add --src ... to build (and then check) shards there")
    rep = verify_shards(out, progress=True)
    print(f"verify: {rep.manifests} manifests, {rep.shards} shards, {rep.samples} samples, {len(rep.problems)} problems")
    for problem in rep.problems[:20]:
        print(f"  {problem}")
    return 0 if rep.ok else 1


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def shard() -> int:
        if a.verify and a.src is None:
            return verify_only(a.out)
        opts = options_from_args(a).resolved()
        try:
            report = build_shards_report(opts)
        except OSError as e:  # disk full, permissions, a vanished folder: the run could not finish
            raise RunFailed(f"{e}; finished shards are kept, fix the cause and rerun the same command to resume") \
                from None
        print("summary:\n" + _summary(report))
        if report.verify is None:
            return 0
        rep = report.verify
        print(f"verify: {rep.manifests} manifests, {rep.shards} shards, {rep.samples} samples, "
              f"{len(rep.problems)} problems")
        for note in rep.notes:
            print(f"  note: {note}")
        for p in rep.problems[:50]:
            print(f"  {p}")
        if len(rep.problems) > 50:
            print(f"  ... and {len(rep.problems) - 50} more")
        return 1 if rep.problems else 0

    return run_cli(shard, "amd_fast.shard", "finished shards are kept; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
