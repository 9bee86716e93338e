"""build_shards: plan -> encode in worker processes -> one writer -> manifest.

Workers (``multiprocessing`` spawn pool; ``workers=0`` runs in-process) turn one planned
video into encoded bytes or a failure reason; the parent consumes results in plan order
(``imap``) and is the only process that writes files, so shards come out deterministic.
"""
from __future__ import annotations

import contextlib
import json
import os
import logging
import multiprocessing as mp
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from amd_fast.cores import usable_cores
from amd_fast.errors import InputError, RunFailed

from . import sources, storage, synthetic
from .lock import SplitLocks
from .manifest import ShardLog, failures_path, journal_path, manifest_path, read_jsonl, read_manifest, write_manifest
from .options import ShardOptions
from .plan import PlannedVideo, check_or_write_plan, plan_dict, plan_split
from .transcode import EncodedVideo, VideoError, copy_video, encode_frames, resized, transcode_video
from .format import read_index, sample_keys, sample_members, sample_meta
from .verify import VerifyReport, verify_shards
from .writer import ShardWriter, finished_shard

log = logging.getLogger(__name__)


class TooManyFailures(RunFailed):
    pass


class ShardsWithoutPlan(InputError):
    """--out holds a split's tars but not the plan.json they were built with (a deleted plan, someone else's tars)."""


@dataclass
class SplitStats:
    videos_ok: int = 0
    videos_failed: int = 0
    shards: int = 0
    shards_kept: int = 0
    bytes: int = 0
    encoded: int = 0  # videos processed in this run (for videos/s)
    retried: int = 0  # --distributor ray: shard task attempts run again after their worker or node died


@dataclass
class BuildReport:
    splits: Dict[str, SplitStats] = field(default_factory=dict)
    manifests: Dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0  # the build, without --verify
    failure_logs: Dict[str, Path] = field(default_factory=dict)
    verify: Optional[VerifyReport] = None  # set when opts.verify
    left_out: Dict[str, int] = field(default_factory=dict)  # listed videos of splits not requested, by split
    include_all: str = ""  # the --splits value that would build them too


def load_index(o: ShardOptions) -> sources.SourceIndex:
    """The labelled videos of each split, each video once (see ``sources.drop_duplicates``)."""
    if o.src == "synthetic":
        return synthetic.synthetic_index(o.splits, o.synthetic_count, o.synthetic_classes, o.seed)
    if o.src == "kinetics400":
        index = sources.load_kinetics400(o.root, o.splits, o.classes_file)
    elif o.src == "ssv2":
        index = sources.load_ssv2(o.root, o.splits)
    elif o.src == "ucf101":
        index = sources.load_ucf101(o.root, o.splits, o.fold)
    elif o.src == "hmdb51":
        index = sources.load_hmdb51(o.root, o.splits, o.fold)
    elif o.src == "csv":
        index = sources.load_csv(o.list_file, o.splits, o.root, o.classes_file)
    else:
        index = sources.load_folder(o.root, o.splits)
    return sources.drop_duplicates(index)


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one video (picklable)."""

    ordinal: int
    record: sources.VideoRecord
    codec: str
    short_side: Optional[int]
    gop: Optional[int]
    seed: int
    synthetic: Optional[synthetic.SyntheticSpec]  # what to render for --src synthetic
    timeout_s: float = 0.0  # --video-timeout-s (0: no limit)


class _VideoTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _VideoTimeout


@contextlib.contextmanager
def _video_deadline(seconds: float):
    """Interrupt this video after ``seconds`` with SIGALRM: a blocking read (a FIFO, a hung network mount)
    returns EINTR and PyAV's per-packet loop runs Python between packets, so both stop at the deadline.
    Only the main thread can take signals (pool workers, Ray tasks and the CLI run there); elsewhere the
    video runs without a limit."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _encode(job: _Job):
    """Worker: -> (ordinal, EncodedVideo | None, failure reason | None). Never raises."""
    try:
        with _video_deadline(job.timeout_s):
            if job.synthetic is not None:
                clip = synthetic.render(job.record.source, job.record.label, job.synthetic, job.seed)
                w, h = resized(clip.shape[2], clip.shape[1], job.short_side)
                return job.ordinal, encode_frames(clip, w, h, synthetic.FPS, job.codec, job.gop), None
            if job.codec == "copy":
                return job.ordinal, copy_video(job.record.path), None
            return job.ordinal, transcode_video(job.record.path, job.codec, job.short_side, job.gop), None
    except _VideoTimeout:
        return job.ordinal, None, f"timed out after {job.timeout_s:g} s (the transcoder hung; --video-timeout-s)"
    except VideoError as e:
        return job.ordinal, None, str(e)
    except Exception as e:  # a worker must report, not die: one odd file must not stop the run
        return job.ordinal, None, f"{type(e).__name__}: {e}"


def _members(v: EncodedVideo, label: int, classes, source: str) -> list:
    meta = sample_meta(label_name=classes[label], label=label, frames=v.frames, fps=v.fps, width=v.width,
                       height=v.height, codec=v.codec, container=v.container, source=source)
    return sample_members(v.data, meta)


def _display_source(rec: sources.VideoRecord, root: Optional[Path]) -> str:
    if rec.path is not None and root is not None:
        try:
            return str(rec.path.relative_to(root))
        except ValueError:
            pass
    return rec.source


def _shard_paths(out: Path, split: str, i: int):
    return out / f"{split}-{i:06d}.tar", out / f"{split}-{i:06d}.idx"


def _shard_file_pattern(split: str, tmp_only: bool = False) -> str:
    """Exactly the names the writer makes (<split>-NNNNNN.tar|.idx and their [.<tag>].tmp), never a user's
    look-alike such as train-000000.tar.bak or train-2019.tar."""
    return rf"{re.escape(split)}-\d{{6,}}\.(tar|idx)" + (r"(\.[0-9a-f]+)?\.tmp" if tmp_only else r"((\.[0-9a-f]+)?\.tmp)?")


def _remove_files(out: Path, split: str, tmp_only: bool = False) -> None:
    ours = re.compile(_shard_file_pattern(split, tmp_only))
    for p in sorted(out.glob(f"{split}-[0-9]*")):
        if ours.fullmatch(p.name) and p.is_file():
            p.unlink()


def _remove_split(out: Path, split: str, store=None) -> None:
    """--overwrite: delete only files this tool writes for ``split`` (here, and in the bucket for a URL)."""
    _remove_files(out, split)
    for name in (f"{split}.manifest.json", f"{split}.failures.jsonl", f"{split}.plan.json", f"{split}.progress.jsonl"):
        (out / name).unlink(missing_ok=True)
        if store is not None:
            store.remove(name)
    if store is not None:
        for name in store.remote_files(_shard_file_pattern(split)):
            store.remove(name)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Pool:
    """imap over jobs in a spawn pool, or inline when workers == 0."""

    def __init__(self, workers: int):
        # Workers ignore Ctrl-C: the parent alone handles it (aborts the open shard, then terminates them).
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_ignore_sigint) if workers > 0 else None

    def imap(self, jobs):
        return self.pool.imap(_encode, jobs, chunksize=1) if self.pool else map(_encode, jobs)

    def close(self, terminate: bool = False) -> None:
        if self.pool:
            (self.pool.terminate if terminate else self.pool.close)()
            self.pool.join()


def _finished_shards(out: Path, split: str, planned: List[List[PlannedVideo]], store=None) -> Dict[int, dict]:
    """Shards a previous run finished: tar + idx consistent, keys as planned, and recorded in the
    progress journal (with the same size) when closed. Their manifest entries, by shard number.
    For a URL ``--out``: tar of the journal's size and idx in the bucket (the idx is fetched to check keys)."""
    journal = {r.get("shard"): r for r in read_jsonl(journal_path(out, split))}
    done = {}
    for i, shard in enumerate(planned):
        rec = journal.get(i)
        if rec is None:
            continue
        tar, idx = _shard_paths(out, split, i)
        if store is not None and store.url:
            found = _finished_remote_shard(store, tar.name, idx)
        else:
            found = finished_shard(tar, idx)
        if (found is not None and (rec.get("samples"), rec.get("bytes")) == found
                and set(sample_keys(read_index(idx))) <= {v.key for v in shard}):
            done[i] = {k: rec[k] for k in ("tar", "index", "samples", "bytes", "sha256", "codecs") if k in rec}
    return done


def _finished_remote_shard(store, tar_name: str, idx: Path):
    """(samples, tar bytes) of a shard in the bucket, or None; leaves its index in the staging folder."""
    size = store.remote_size(tar_name)
    if size is None or store.remote_size(idx.name) is None:
        return None
    store.fs.get_file(store._remote(idx.name), str(idx))
    try:
        return len(read_index(idx)), size
    except (ValueError, OSError):
        return None


def capped_workers(requested: int, jobs: Optional[int] = None) -> int:
    """``requested`` worker processes, at most one per usable CPU core and per job (logged when capped):
    each worker encodes single-threaded, so more would only cost memory and start-up time."""
    if requested == 0:
        log.info("--workers 0: encoding in this process, one video at a time (no worker pool)")
    if requested <= 1:
        return requested
    cores = usable_cores()
    n = min(requested, cores, jobs if jobs else requested)
    if n < requested:
        why = (f"only {jobs} video(s) to process" if jobs is not None and jobs < cores
               else f"this machine gives this process {cores} CPU core(s)")
        log.info("--workers %d capped to %d: %s", requested, n, why)
    return n


def _refuse_unplanned_shards(o: ShardOptions, split: str, store=None) -> None:
    """Tars of ``split`` without the plan.json that says how they were built cannot be resumed or trusted."""
    if o.overwrite or (o.out / f"{split}.plan.json").exists():
        return
    tars = sorted(o.out.glob(f"{split}-[0-9]*.tar"))
    if store is not None and store.url:
        tars = [Path(n) for n in store.remote_files(rf"{re.escape(split)}-\d{{6,}}\.tar")]
    if tars:
        raise ShardsWithoutPlan(
            f"{o.out_url or o.out} holds {len(tars)} {split} shard(s) ({tars[0].name}{', ...' if len(tars) > 1 else ''}) but no "
            f"{split}.plan.json, so this run cannot tell how they were built or resume them. Pick a new --out, or "
            f"rerun with --overwrite to delete this tool's {split} files there and rebuild (or move the "
            f"{split}-*.tar files away)")


def _no_videos(o: ShardOptions, index: sources.SourceIndex, split: str) -> sources.LayoutError:
    where = {"csv": f" in {o.list_file}", "synthetic": ""}.get(o.src, f" under {o.root}")
    msg = f"split {split!r} of --src {o.src} has no videos{where}"
    if index.left_out:
        msg += (f"; the source lists videos for {', '.join(f'{s} ({n})' for s, n in sorted(index.left_out.items()))}: "
                f"choose from those with --splits (split names match case-insensitively)")
    return sources.LayoutError(msg)


def _log_left_out(o: ShardOptions, index: sources.SourceIndex, report: BuildReport) -> None:
    """Listed videos of splits not requested: one line, with the --splits that would include them."""
    if not index.left_out:
        return
    report.left_out = dict(sorted(index.left_out.items()))
    report.include_all = ",".join([*o.splits, *report.left_out])
    log.warning("%d listed video(s) not built: their split is not in --splits %s (%s); --splits %s would "
                "include them", sum(report.left_out.values()), ",".join(o.splits),
                ", ".join(f"{s}: {n}" for s, n in report.left_out.items()), report.include_all)


class SplitRecorder:
    """The driver's side of one split, whichever distributor encodes: it alone appends to the failures log and
    the progress journal, enforces the failure budget, publishes closed shards (uploads them for a URL
    ``--out``) and keeps the manifest entries. A shard enters the journal (and so the manifest) only once its
    tar and index are in place under their final names."""

    def __init__(self, o: ShardOptions, split: str, n_videos: int, done: Dict[int, dict], stats: SplitStats, store):
        self.o, self.split, self.done, self.stats, self.store = o, split, done, stats, store
        self.failures = ShardLog(failures_path(o.out, split), set(done))
        self.finished = ShardLog(journal_path(o.out, split), set(done))
        self.limit = o.max_failures_for(n_videos)
        stats.shards_kept = len(done)
        stats.videos_ok += sum(s["samples"] for s in done.values())
        stats.videos_failed = self.failures.count

    def failure(self, i: int, source: str, reason: str) -> None:
        self.failures.add(source=source, reason=reason, shard=i)
        self.stats.videos_failed += 1
        log.debug("skipped %s: %s", source, reason)
        self.check_budget(self.stats.videos_failed, f"{source}: {reason}")

    def check_budget(self, failed: int, last: str) -> None:
        if failed > self.limit:
            raise TooManyFailures(
                f"{self.split}: {failed} videos failed, more than --max-failures {self.limit} (last: {last}). "
                f"See {self.store.describe(failures_path(self.o.out, self.split).name)}; finished shards are kept, "
                "fix or remove the bad inputs (or raise --max-failures) and rerun to resume")

    def shard_closed(self, i: int, entry: dict, published: bool = False) -> None:
        """``published``: a Ray task already uploaded it (URL ``--out``)."""
        if not published:
            tar, idx = _shard_paths(self.o.out, self.split, i)
            self.store.publish(tar)  # tar before idx: an idx in the bucket means its tar is whole
            self.store.publish(idx)
        self.done[i] = entry
        self.finished.add(shard=i, **entry)
        self.store.sync_logs(self._logs())

    def empty_shard(self, i: int) -> None:
        log.warning("%s: shard %d has no readable video; not written", self.split, i)

    def _logs(self):
        return [journal_path(self.o.out, self.split), failures_path(self.o.out, self.split)]

    def close(self) -> None:
        self.failures.close()
        self.finished.close()

    def finish(self, index: sources.SourceIndex, options: dict) -> Path:
        """Failures log in plan order (the same file whichever distributor ran), then the manifest, last."""
        path = failures_path(self.o.out, self.split)
        records = read_jsonl(path)
        records.sort(key=lambda r: r.get("shard", 0))  # stable: within a shard, plan order already
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)
        self.store.sync_logs(self._logs(), force=True)
        shards = [self.done[i] for i in sorted(self.done)]
        self.stats.shards = len(shards)
        self.stats.bytes = sum(s["bytes"] for s in shards)
        manifest = write_manifest(manifest_path(self.o.out, self.split), source=self.o.src, split=self.split,
                                  classes=index.classes, shards=shards, num_failures=self.stats.videos_failed,
                                  options=options, unbuilt_splits=index.left_out)
        self.store.publish(manifest, keep_local=True)
        return manifest


def _build_split(o: ShardOptions, index: sources.SourceIndex, split: str, planned: List[List[PlannedVideo]],
                 pool, stats: SplitStats, store=None) -> Path:
    """``pool``: a :class:`_Pool` (local) or a ``ray_build.RayRunner``; ``store``: where files go (storage.py)."""
    store = store or storage.LocalOutput(o.out)
    out = o.out
    n_videos = sum(len(s) for s in planned)
    options = {**o.content_dict(), "split": split}
    if o.overwrite:
        _remove_split(out, split, store if store.url else None)
    resumed = check_or_write_plan(out / f"{split}.plan.json", plan_dict(options, index.classes, planned))
    store.publish(out / f"{split}.plan.json", keep_local=True)

    done = _finished_shards(out, split, planned, store) if resumed else {}
    if len(done) < len(planned):
        # Work to do: the split is no longer complete, so its old manifest must not outlive this run.
        store.remove(manifest_path(out, split).name)
    for i in range(len(planned)):
        if i not in done:  # clear leftovers, so a shard whose videos all fail now leaves nothing behind
            for p in _shard_paths(out, split, i):
                p.unlink(missing_ok=True)
    _remove_files(out, split, tmp_only=True)  # temp files of attempts that died (any tag)
    recorder = SplitRecorder(o, split, n_videos, done, stats, store)
    if done:
        log.info("%s: keeping %d finished shard(s) of %d", split, len(done), len(planned))
    todo = [i for i in range(len(planned)) if i not in done]
    try:
        if hasattr(pool, "run_split"):
            pool.run_split(o, index, split, planned, todo, recorder)
        else:
            _run_local(o, index, split, planned, todo, pool, recorder)
    finally:
        recorder.close()
        with contextlib.suppress(Exception):  # the failures log the error message points to, also on failure
            store.sync_logs(recorder._logs(), force=True)
    _remove_files(out, split, tmp_only=True)
    return recorder.finish(index, options)


def _run_local(o: ShardOptions, index: sources.SourceIndex, split: str, planned: List[List[PlannedVideo]],
               todo: List[int], pool: "_Pool", recorder: SplitRecorder) -> None:
    """Encode in the process pool, in plan order; this process writes every tar."""
    out, stats = o.out, recorder.stats
    spec = o.synthetic_spec()
    jobs = [_Job(v.ordinal, v.record, o.codec, o.short_side, o.gop, o.seed, spec, o.video_timeout_s)
            for i in todo for v in planned[i]]
    by_ordinal = {v.ordinal: (i, v) for i in todo for v in planned[i]}
    remaining = {i: len(planned[i]) for i in todo}
    writers: Dict[int, ShardWriter] = {}
    codecs: Dict[int, Dict[str, int]] = {}  # per open shard: samples by codec (recorded in the manifest)
    bar = _progress(len(jobs), f"{split}", o.progress)
    try:
        for ordinal, video, reason in pool.imap(jobs):
            i, pv = by_ordinal[ordinal]
            stats.encoded += 1
            if video is None:
                recorder.failure(i, _display_source(pv.record, o.root), reason)
            else:
                if i not in writers:
                    writers[i] = ShardWriter(*_shard_paths(out, split, i))
                writers[i].add(pv.key, _members(video, pv.record.label, index.classes, _display_source(pv.record, o.root)))
                codecs.setdefault(i, {})[video.codec] = codecs.get(i, {}).get(video.codec, 0) + 1
                stats.videos_ok += 1
            remaining[i] -= 1
            if remaining[i] == 0:
                if i in writers:
                    entry = {**writers[i].close().as_dict(), "codecs": dict(sorted(codecs.pop(i).items()))}
                    del writers[i]  # only now: if close() is interrupted, the finally below aborts it
                    recorder.shard_closed(i, entry)
                else:
                    recorder.empty_shard(i)
            bar.update(1)
            bar.set_postfix(ok=stats.videos_ok, failed=stats.videos_failed, refresh=False)
    finally:
        bar.close()
        for w in writers.values():
            w.abort()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="video", disable=not enabled, dynamic_ncols=True)


def _complete_splits(o: ShardOptions) -> bool:
    return all(manifest_path(o.out, s).is_file() for s in o.splits)


def _report_existing(o: ShardOptions, report: BuildReport) -> None:
    """Counts of complete splits, from their manifests (verify-only runs read nothing else)."""
    for split in o.splits:
        m = read_manifest(manifest_path(o.out, split))
        report.splits[split] = SplitStats(videos_ok=m["num_samples"], videos_failed=m["num_failures"],
                                          shards=len(m["shards"]), shards_kept=len(m["shards"]), bytes=m["bytes"])
        report.manifests[split] = manifest_path(o.out, split)
        report.failure_logs[split] = failures_path(o.out, split)


def build_shards_report(opts: ShardOptions) -> BuildReport:
    """Like :func:`build_shards`, also returning per-split counts and the wall time.

    With ``verify`` and every requested split already complete (its manifest present), nothing is built
    and the sources are not read: the shards alone are verified, so shards on read-only storage or whose
    source folder moved can be checked. Building takes ``<out>/<split>.lock`` for every split first
    (``shard.lock``): a second run into the same output refuses, naming the first.
    """
    t0 = time.perf_counter()
    o = opts.resolved()
    report = BuildReport()
    if o.verify and not o.overwrite and _complete_splits(o):
        log.info("every requested split in %s is complete (%s): verifying the shards only, without reading "
                 "the sources", o.out, ", ".join(o.splits))
        _report_existing(o, report)
    else:
        index = load_index(o)
        # Every split is planned and checked before any is built: a bad second split must not cost the first's build.
        plans = {split: plan_split(index.splits[split], split, o.seed, o.samples_per_shard, o.shard_bytes, o.limit)
                 for split in o.splits}
        for split, planned in plans.items():
            n = sum(len(s) for s in planned)
            if n == 0:
                raise _no_videos(o, index, split)
            if n < len(index.splits[split]):
                log.info("%s: --limit %d: building %d of the %d listed videos", split, o.limit, n,
                         len(index.splits[split]))
        _log_left_out(o, index, report)
        o.out.mkdir(parents=True, exist_ok=True)
        store = storage.output_for(o.out, o.out_url)
        with SplitLocks(o.out, o.splits), store.lease(o.splits):
            for split in o.splits:
                store.fetch_state([f"{split}.{name}" for name in ("plan.json", "progress.jsonl", "failures.jsonl")])
                _refuse_unplanned_shards(o, split, store)
            n_max = max(sum(len(s) for s in p) for p in plans.values())
            if o.distributor == "ray":
                from .ray_build import RayRunner  # Ray is an optional extra: imported only when asked for

                pool = RayRunner(o, n_max, store)
            else:
                pool = _Pool(capped_workers(o.workers, n_max))
            ok = False
            try:
                for split in o.splits:
                    report.splits[split] = SplitStats()
                    manifest = _build_split(o, index, split, plans[split], pool, report.splits[split], store)
                    report.manifests[split] = store.describe(manifest.name) if o.out_url else manifest
                    report.failure_logs[split] = (store.describe(failures_path(o.out, split).name) if o.out_url
                                                  else failures_path(o.out, split))
                ok = True
            finally:
                pool.close(terminate=not ok)
    report.wall_s = time.perf_counter() - t0
    if o.verify:
        report.verify = verify_shards(o.out, manifests=list(report.manifests.values()),
                                      workers=capped_workers(o.workers), progress=o.progress)
    return report


class VerifyFailed(RunFailed):
    pass


def build_shards(opts: ShardOptions) -> Dict[str, Path]:
    """Build (or resume) the shards described by ``opts``; returns split -> manifest path.

    With ``opts.verify`` the result is re-read afterwards and :class:`VerifyFailed` lists the problems.
    """
    report = build_shards_report(opts)
    if report.verify is not None and not report.verify.ok:
        raise VerifyFailed(f"--verify found {len(report.verify.problems)} problem(s): "
                           + "; ".join(report.verify.problems[:10]))
    return report.manifests
