"""--distributor ray on real Ray clusters: a local one started by the build, and two raylets on this machine with
one killed mid-build. The tars must equal the local process pool's byte for byte, every listed video must
appear exactly once (in a tar or in the failures log), and a hung video must be stopped and logged.

Ray is heavy on a 2-core CI runner: clusters get 1 CPU per raylet, a 100 MB object store, no dashboard, and
are always torn down (by the pids of the processes that carry the cluster's own temp dir).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from amd_fast.shard import ShardOptions, build_shards_report, read_manifest
from amd_fast.shard.format import read_index, sample_keys
from amd_fast.shard.lock import ShardLockError, SplitLocks
from tests.s3_endpoint import free_port
from tests.shard_fixtures import make_video

pytest.importorskip("ray", reason="ray is part of the test extra")

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
HANG_AFTER_S = 2.0  # --video-timeout-s for the FIFO that blocks forever


def kinetics_tree(root: Path, n_good: int = 16) -> Path:
    """CVDF Kinetics layout: ``n_good`` real videos, then broken ones (truncated, zero-length, garbage, listed
    but missing) and a FIFO without a writer, which blocks whoever opens it: a video that hangs the reader."""
    rows = []
    for i in range(n_good):
        make_video(root / "train" / f"good{i:02d}_000000_000010.mp4", frames=24, size=48, seed=i)
        rows.append(("jump" if i % 2 else "run", f"good{i:02d}"))
    full = make_video(root / "train" / "trunc_000000_000010.mp4", frames=24, size=48, seed=99).read_bytes()
    (root / "train" / "trunc_000000_000010.mp4").write_bytes(full[: len(full) // 2])
    (root / "train" / "empty_000000_000010.mp4").write_bytes(b"")
    (root / "train" / "junk_000000_000010.mp4").write_bytes(os.urandom(3000))
    os.mkfifo(root / "train" / "hang_000000_000010.mp4")
    rows += [("run", "trunc"), ("jump", "empty"), ("run", "junk"), ("jump", "missing"), ("run", "hang")]
    (root / "annotations").mkdir(parents=True)
    lines = ["label,youtube_id,time_start,time_end,split"] + [f"{lab},{yt},0,10,train" for lab, yt in rows]
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def build_args(root: Path, out: Path) -> list:
    return ["--src", "kinetics400", "--root", str(root), "--out", str(out), "--splits", "train", "--codec", "vp9",
            "--short-side", "32", "--gop", "8", "--samples-per-shard", "3", "--max-failures", "5",
            "--video-timeout-s", str(HANG_AFTER_S), "--no-progress"]


def options(root: Path, out: Path, **kw) -> ShardOptions:
    base = dict(src="kinetics400", root=root, out=out, splits=("train",), codec="vp9", short_side=32, gop=8,
                samples_per_shard=3, max_failures=5, video_timeout_s=HANG_AFTER_S, workers=0, progress=False)
    base.update(kw)
    return ShardOptions(**base)


def shard_files(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".idx")}


def assert_same_build(out: Path, reference: Path) -> None:
    """Same tars and indexes byte for byte, same failures log, same manifest but for its time stamp."""
    assert shard_files(out) == shard_files(reference)
    assert (out / "train.failures.jsonl").read_text() == (reference / "train.failures.jsonl").read_text()
    a, b = read_manifest(out / "train.manifest.json"), read_manifest(reference / "train.manifest.json")
    a.pop("created"), b.pop("created")
    assert a == b
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def assert_each_video_once(out: Path, root: Path) -> None:
    """Every listed video is in exactly one tar or exactly once in the failures log, never both."""
    listed = {line.split(",")[1] for line in (root / "annotations" / "train.csv").read_text().splitlines()[1:]}
    in_tars = [k.split("_", 1)[1] for p in sorted(out.glob("train-*.idx")) for k in sample_keys(read_index(p))]
    failed = [Path(json.loads(line)["source"]).name.split("_")[0]
              for line in (out / "train.failures.jsonl").read_text().splitlines()]
    seen = [k.split("_")[0] for k in in_tars] + failed
    assert sorted(seen) == sorted(listed), "a video was lost or duplicated"


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    return kinetics_tree(tmp_path_factory.mktemp("k400"))


@pytest.fixture(scope="module")
def local_build(k400, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    rep = build_shards_report(options(k400, out))
    s = rep.splits["train"]
    assert (s.videos_ok, s.videos_failed) == (16, 5)
    reasons = {Path(r["source"]).name.split("_")[0]: r["reason"]
               for r in map(json.loads, (out / "train.failures.jsonl").read_text().splitlines())}
    assert reasons["hang"].startswith(f"timed out after {HANG_AFTER_S:g} s")
    return out


@pytest.fixture
def ray_tmp(monkeypatch):
    """A short private temp dir for Ray (its socket paths must stay under 108 bytes), removed afterwards."""
    d = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", d)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Every process of the test cluster agrees on no token auth (Ray >= 2.5x otherwise turns it on when a token
    # exists in ~/.ray, and writes one there for a new local cluster): a private cluster on 127.0.0.1.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    try:
        yield d
    finally:
        kill_processes_of(d)
        shutil.rmtree(d, ignore_errors=True)


def processes_of(temp_dir: str, marker: str = "") -> list:
    """Pids of the processes whose command line names ``temp_dir`` (and ``marker``): this cluster's, nobody else's."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmd and marker in cmd:
            pids.append(int(p.name))
    return pids


def children_of(pid: int) -> list:
    """(pid, command line) of the direct children of ``pid`` (a raylet's children are its worker processes)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and f"PPid:\t{pid}\n" in (p / "status").read_text():
                found.append((int(p.name), (p / "cmdline").read_bytes().decode(errors="replace")))
        except OSError:
            continue
    return found


def tar_being_written_under(raylet_pid: int, out: Path):
    """The temp tar a worker of this raylet has open in ``out`` right now (None if none): that worker is
    mid-shard, past its start, with a half-written tar on disk."""
    for pid, _ in children_of(raylet_pid):
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(str(out)) and target.endswith(".tmp"):
                    return Path(target)
        except OSError:
            continue
    return None


def kill_processes_of(temp_dir: str) -> None:
    for _ in range(3):  # a dying raylet may still spawn a worker: sweep again
        pids = processes_of(temp_dir)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)


@contextlib.contextmanager
def two_raylets(temp_dir: str):
    """`ray start --head` and a second `ray start --address` on this machine, 1 CPU each, on free ports.
    Yields (GCS address, the second raylet's node-manager port). The GCS declares a dead node after ~1.5 s
    instead of the default ~15 s, so the test does not wait on it."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--object-store-memory=100000000", f"--temp-dir={temp_dir}", "--disable-usage-stats"]

    def ports(*names):
        return [f"--{n}={free_port()}" for n in names]

    gcs_port, worker_nm_port = free_port(), free_port()
    head = [RAY, "start", "--head", f"--port={gcs_port}", "--include-dashboard=false", *common,
            *ports("node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-port",
                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                   "metrics-export-port"),
            '--system-config={"health_check_period_ms": 500, "health_check_failure_threshold": 3, '
            '"health_check_initial_delay_ms": 0}']
    address = f"127.0.0.1:{gcs_port}"
    second = [RAY, "start", f"--address={address}", *common, f"--node-manager-port={worker_nm_port}",
              *ports("object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port")]
    try:
        for cmd in (head, second):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
        yield address, worker_nm_port
    finally:
        kill_processes_of(temp_dir)


def test_ray_local_cluster_matches_local_bytes_resumes_and_locks(k400, local_build, tmp_path, ray_tmp):
    """A local Ray cluster started for the build: same bytes and failures log as the process pool; a rerun
    keeps every shard without starting Ray; a second build into a folder being written is refused."""
    out = tmp_path / "ray"
    rep = build_shards_report(options(k400, out, distributor="ray", workers=2))
    assert_same_build(out, local_build)
    assert_each_video_once(out, k400)
    assert not processes_of(ray_tmp, "raylet"), "the cluster started for the build was left running"

    again = build_shards_report(options(k400, out, distributor="ray", workers=2)).splits["train"]
    assert (again.shards_kept, again.encoded) == (rep.splits["train"].shards, 0)
    assert_same_build(out, local_build)

    with SplitLocks(out, ["train"]):
        with pytest.raises(ShardLockError, match="being written by another"):
            build_shards_report(options(k400, out, distributor="ray", workers=2, overwrite=True))
    assert_same_build(out, local_build)  # the refused run deleted nothing


def test_two_raylets_one_killed_mid_build(k400, local_build, tmp_path, ray_tmp):
    """Kill the second raylet (SIGKILL) once the build is under way: its task is retried on the head, the
    build completes, nothing is lost or duplicated, and the bytes equal the local build's."""
    out = tmp_path / "ray2"
    with two_raylets(ray_tmp) as (address, worker_port):
        victims = processes_of(ray_tmp, f"--node_manager_port={worker_port}")
        assert len(victims) == 1, victims
        cmd = [PY, "-m", "amd_fast.shard", *build_args(k400, out), "--distributor", "ray", "--ray-address", address,
               "--max-task-retries", "3"]
        build = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(build.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while (half_written := tar_being_written_under(victims[0], out)) is None:
                assert build.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "no shard task ever wrote on the second raylet"
                time.sleep(0.01)
            # The node dies: its raylet and the workers it started, mid-task (a worker left alive would
            # finish its task straight to the driver, which needs no raylet).
            workers = [pid for pid, _ in children_of(victims[0])]
            for pid in [victims[0], *workers]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            rc = build.wait(timeout=120)
        finally:
            if build.poll() is None:
                build.kill()
            reader.join(timeout=5)
    text = "".join(lines)
    assert rc == 0, text
    retried = re.search(r"(\d+) shard task\(s\) retried after a worker or node died", text)
    assert retried and int(retried.group(1)) >= 1, text  # the killed node's task ran again elsewhere
    assert not half_written.exists()  # the dead attempt's temp tar: cleaned up, never in the manifest
    assert_same_build(out, local_build)
    assert_each_video_once(out, k400)


def test_ray_without_ray_is_one_line_and_exit_2(k400, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from amd_fast.shard.__main__ import main; "
            f"sys.exit(main({build_args(k400, tmp_path / 'out') + ['--distributor', 'ray']!r}))")
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["amd_fast.shard: error: --distributor ray needs Ray: pip install "
                                             "'amd_fast[ray]'"]
    assert not (tmp_path / "out").exists()
