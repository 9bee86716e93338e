"""``--distributor ray``: the same build as the local process pool, as one Ray task per planned shard.

- Each task encodes its shard's videos in plan order (single-threaded, like a pool worker, with the same
  ``_encode``), writes ``<split>-NNNNNN.tar`` + ``.idx`` through :class:`ShardWriter` (temp names tagged per
  attempt, renamed into place) and returns the manifest entry and its failures. The tar bytes depend only on
  the plan and the options, so they equal the local build's byte for byte, on any node.
- Output: a local ``--out`` must be one folder every node sees (a shared file system; on one machine, the
  local disk). A URL ``--out`` is staged in a temp folder on the task's node and uploaded whole (storage.py).
- Faults: a task whose worker or node dies is run again (``--max-task-retries``) by Ray. Only the driver
  writes the journal, failures log and manifest, and only from a returned result, so a dead attempt's files
  never enter the manifest; its temp files are removed when the split ends.
- Progress: tasks report each video to a small actor on the driver's node; the driver drains it into one
  progress bar (videos/s) and logs failures as they happen, and warns when nothing finished for a while.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from amd_fast.errors import InputError, RunFailed

from . import storage
from .build import _display_source, _encode, _Job, _members, _progress, _shard_paths, capped_workers
from .writer import ShardWriter

log = logging.getLogger(__name__)

# Object store of a cluster started for the build: tasks return small dicts, never video bytes.
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024
POLL_S = 0.5
STALL_WARN_S = 60.0  # "no video finished for ..." is logged at least this often while the build is stuck


@dataclass(frozen=True)
class ShardTask:
    """One planned shard, everything its task needs (pickled to the worker)."""

    split: str
    shard: int
    videos: Tuple[Tuple[_Job, str, str], ...]  # (encode job, sample key, source as the sample json shows it)
    classes: Tuple[str, ...]
    out_dir: str  # --out (a shared folder), or the driver's staging folder for a URL (not used by the task then)
    out_url: Optional[str]


@ray.remote
class ProgressBoard:
    """Per-video events from the tasks, drained by the driver every :data:`POLL_S`."""

    def __init__(self):
        self.events: List[tuple] = []

    def video(self, split: str, ordinal: int, source: str, reason: Optional[str]) -> None:
        self.events.append(("video", split, ordinal, source, reason))

    def started(self, split: str, shard: int, host: str) -> None:
        self.events.append(("started", split, shard, host, None))

    def drain(self) -> List[tuple]:
        events, self.events = self.events, []
        return events


def build_shard(task: ShardTask, board) -> dict:
    """Ray task: encode one shard, publish its tar + idx, return its manifest entry and failures."""
    # Waited for (one round trip per shard): the driver must hear of this attempt even if the node dies next,
    # that is how it counts retried tasks.
    ray.get(board.started.remote(task.split, task.shard, socket.gethostname()))
    if task.out_url:
        workdir = Path(tempfile.mkdtemp(prefix="amd_fast-shard-"))
    else:
        workdir = Path(task.out_dir)
        if not workdir.is_dir():
            return {"error": f"--out {workdir} does not exist on node {socket.gethostname()}: with --distributor ray "
                             "a local --out must be a folder every node sees (a shared file system), or give an "
                             "object-storage URL (s3://bucket/prefix)"}
    tar, idx = _shard_paths(workdir, task.split, task.shard)
    writer: Optional[ShardWriter] = None
    failures, codecs, ok = [], {}, 0
    try:
        for job, key, source in task.videos:
            _, video, reason = _encode(job)
            if video is None:
                failures.append((job.ordinal, source, reason))
            else:
                if writer is None:
                    writer = ShardWriter(tar, idx, tmp_tag=secrets.token_hex(4))
                writer.add(key, _members(video, job.record.label, task.classes, source))
                codecs[video.codec] = codecs.get(video.codec, 0) + 1
                ok += 1
            board.video.remote(task.split, job.ordinal, source, reason)
        entry = None
        if writer is not None:
            entry = {**writer.close().as_dict(), "codecs": dict(sorted(codecs.items()))}
            writer = None
            if task.out_url:  # tar before idx: an idx in the bucket means its tar is whole
                storage.upload(tar, f"{task.out_url}/{tar.name}")
                storage.upload(idx, f"{task.out_url}/{idx.name}")
    finally:
        if writer is not None:
            writer.abort()
        if task.out_url:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"shard": task.shard, "entry": entry, "failures": failures, "ok": ok, "error": None}


class RayRunner:
    """Connects to (or starts) a Ray cluster and runs each split's shards as tasks; ``build._build_split``
    calls :meth:`run_split` where the local path runs its pool."""

    def __init__(self, o, n_videos_max: int, store):
        self.o, self.n_videos_max, self.store = o, n_videos_max, store
        self.started_here = False
        self.board = None
        self.pending: Dict = {}

    def _connect(self) -> None:
        """On the first split with work: a resumed build whose shards are all done never starts a cluster."""
        o, n_videos_max = self.o, self.n_videos_max
        if not ray.is_initialized():
            if o.ray_address:
                try:
                    ray.init(address=o.ray_address, logging_level=logging.WARNING, log_to_driver=False)
                except ConnectionError as e:
                    raise InputError(f"--ray-address {o.ray_address}: no Ray cluster there ({e}); start one with "
                                     "`ray start --head` (then `ray start --address <head>:6379` on the other "
                                     "nodes), or drop --ray-address to start a local one for this build") from None
            else:
                cpus = max(1, capped_workers(o.workers, n_videos_max))
                log.info("starting a local Ray cluster with %d CPU(s) for this build", cpus)
                ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False)
            self.started_here = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        log.info("Ray cluster: %d node(s), %d CPU(s)", len([n for n in ray.nodes() if n["Alive"]]), cpus)
        # Pinned to the driver's node: a dying worker node must not take the progress board with it.
        here = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(here, soft=False)
        self.board = ProgressBoard.options(num_cpus=0, scheduling_strategy=strategy).remote()
        self.task = ray.remote(build_shard).options(num_cpus=1, max_retries=o.max_task_retries,
                                                   retry_exceptions=False)

    def run_split(self, o, index, split: str, planned, todo: Sequence[int], recorder) -> None:
        stats = recorder.stats
        if not todo:
            return
        if self.board is None:
            self._connect()
        for i in todo:
            videos = tuple((_Job(v.ordinal, v.record, o.codec, o.short_side, o.gop, o.seed, o.synthetic_spec(),
                                 o.video_timeout_s), v.key, _display_source(v.record, o.root)) for v in planned[i])
            spec = ShardTask(split, i, videos, tuple(index.classes), str(o.out), o.out_url)
            self.pending[self.task.remote(spec, self.board)] = i
        bar = _progress(sum(len(planned[i]) for i in todo), split, o.progress)
        seen, failed_live, attempts = set(), {}, {}  # failed_live: ordinal -> (source, reason), not yet returned
        shard_of = {v.ordinal: i for i in todo for v in planned[i]}
        last_video = last_warn = time.monotonic()
        stall_s = STALL_WARN_S
        try:
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=POLL_S)
                for kind, event_split, n, what, reason in ray.get(self.board.drain.remote()):
                    if event_split != split:  # a late event of the previous split (ordinals restart per split)
                        continue
                    if kind == "started":
                        attempts[n] = attempts.get(n, 0) + 1
                        if attempts[n] > 1:
                            log.warning("%s: shard %d started again (attempt %d, on %s): its previous worker or "
                                        "node died", split, n, attempts[n], what)
                    elif n not in seen:
                        seen.add(n)
                        last_video = time.monotonic()
                        bar.update(1)
                        if reason is not None:
                            failed_live[n] = (what, reason)
                            log.info("%s: failed: %s: %s", split, what, reason)
                            if stats.videos_failed + len(failed_live) > recorder.limit:
                                # Over budget before the shards finished: log what failed so far, then stop.
                                for ordinal, (source, why) in sorted(failed_live.items()):
                                    recorder.failures.add(source=source, reason=why, shard=shard_of[ordinal])
                                stats.videos_failed += len(failed_live)
                                failed_live.clear()
                                recorder.check_budget(stats.videos_failed, f"{what}: {reason}")
                for ref in ready:
                    i = self.pending.pop(ref)
                    result = self._result(ref, split, i, o)
                    for ordinal, source, reason in result["failures"]:
                        failed_live.pop(ordinal, None)
                        recorder.failure(i, source, reason)
                    stats.videos_ok += result["ok"]
                    stats.encoded += len(planned[i])
                    if result["entry"] is not None:
                        recorder.shard_closed(i, result["entry"], published=bool(o.out_url))
                    else:
                        recorder.empty_shard(i)
                    missing = [v.ordinal for v in planned[i] if v.ordinal not in seen]
                    seen.update(missing)  # events still in flight: the result is authoritative
                    bar.update(len(missing))
                bar.set_postfix(ok=stats.videos_ok, failed=stats.videos_failed + len(failed_live), refresh=False)
                now = time.monotonic()
                if self.pending and now - last_video > stall_s and now - last_warn > stall_s:
                    last_warn = now
                    log.warning("%s: no video finished in the last %.0f s; %d shard task(s) still queued or running "
                                "(`ray status` shows the cluster; --video-timeout-s stops a hung video)", split,
                                now - last_video, len(self.pending))
            # a retry that started and finished within one poll left its "started" event undrained
            for kind, event_split, n, what, _ in ray.get(self.board.drain.remote()):
                if kind == "started" and event_split == split:
                    attempts[n] = attempts.get(n, 0) + 1
        finally:
            bar.close()
            stats.retried += sum(n - 1 for n in attempts.values() if n > 1)
            self._cancel()

    def _result(self, ref, split: str, i: int, o) -> dict:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:
            raise RunFailed(f"{split}: shard {i} failed after {o.max_task_retries} retries ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); finished shards are kept, rerun the same "
                            "command to resume (raise --max-task-retries if nodes are preempted often)") from None
        if result.get("error"):
            raise InputError(result["error"])
        return result

    def _cancel(self) -> None:
        for ref in self.pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or its node is gone: nothing left to stop
                pass
        self.pending = {}

    def close(self, terminate: bool = False) -> None:
        self._cancel()
        if self.board is not None:
            try:
                ray.kill(self.board)
            except Exception:  # the cluster is already gone
                pass
        if self.started_here:
            ray.shutdown()
