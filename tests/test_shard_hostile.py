"""The shard tool under hostile input: concurrent runs, duplicated or malformed listings, truncated sources,
read-only shards. Each asserts the one-line error (exit 2) or the data kept, never a traceback or a loss."""
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amd_fast.shard import ShardOptions, build_shards, read_manifest
from amd_fast.shard.__main__ import main
from amd_fast.shard.lock import SplitLock, ShardLockError, lock_path
from amd_fast.shard.writer import ShardWriter
from tests.shard_fixtures import make_video

REPO = Path(__file__).resolve().parent.parent


def _synthetic_cli(out: Path, count: int = 96):
    return [sys.executable, "-m", "amd_fast.shard", "--src", "synthetic", "--synthetic-count", str(count),
            "--synthetic-frames", "8", "--synthetic-size", "32", "--samples-per-shard", "8", "--out", str(out),
            "--no-progress", "--workers", "0"]


@pytest.mark.slow
def test_second_run_into_the_same_out_refuses_naming_the_first(tmp_path):
    out = tmp_path / "x"
    first = subprocess.Popen(_synthetic_cli(out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not any(out.glob("*.lock")) and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, "first run finished before the second started"
        second = subprocess.run(_synthetic_cli(out), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"being written by another amd_fast.shard run (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-2000:]
    for split in ("train", "val"):  # every tar the manifest lists exists, with the recorded size
        m = read_manifest(out / f"{split}.manifest.json")
        assert all((out / s["tar"]).stat().st_size == s["bytes"] for s in m["shards"])
    assert not list(out.glob("*.lock"))  # released at the end


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    lock_path(out, "train").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "then"}))
    build_shards(ShardOptions(src="synthetic", out=out, synthetic_count=8, synthetic_frames=4, synthetic_size=16,
                              samples_per_shard=4, workers=0, progress=False))
    assert read_manifest(out / "train.manifest.json")["num_samples"] == 6


def test_lock_held_by_this_process_blocks_a_second_holder(tmp_path):
    held = SplitLock(tmp_path, "train").acquire()
    try:
        with pytest.raises(ShardLockError, match=rf"pid {os.getpid()} on "):
            SplitLock(tmp_path, "train").acquire()
    finally:
        held.release()
    SplitLock(tmp_path, "train").acquire().release()  # free again


def test_a_failing_writer_never_deletes_a_tar_it_did_not_publish(tmp_path, monkeypatch):
    tar, idx = tmp_path / "train-000000.tar", tmp_path / "train-000000.idx"
    w = ShardWriter(tar, idx)
    w.add("k", [("cls", b"1")])
    tar.write_bytes(b"another run's finished shard")  # published meanwhile by someone else

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        w.close()
    assert tar.read_bytes() == b"another run's finished shard"
    assert not list(tmp_path.glob("*.tmp"))


# ---- listings ---------------------------------------------------------------------------------------------------

def _k400(root: Path, rows, videos=True):
    (root / "annotations").mkdir(parents=True)
    lines = ["label,youtube_id,time_start,time_end,split"] + [",".join(map(str, r)) for r in rows]
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
    if videos:
        for i, r in enumerate(rows):
            if len(r) >= 4:
                try:
                    make_video(root / "train" / f"{r[1]}_{int(r[2]):06d}_{int(r[3]):06d}.mp4", seed=i)
                except ValueError:
                    pass
    return root


def _run(argv, capsys):
    rc = main([*argv, "--no-progress", "--workers", "0"])
    return rc, capsys.readouterr().err


def test_kinetics_duplicates_with_other_labels_are_an_error_naming_them(tmp_path, capsys):
    root = _k400(tmp_path / "k400", [("yoga", "aaa", 0, 10), ("yoga", "bbb", 0, 10), ("abseiling", "aaa", 0, 10),
                                     ("yoga", "aaa", 0, 10)])
    rc, err = _run(["--src", "kinetics400", "--root", str(root), "--splits", "train", "--out", str(tmp_path / "o")],
                   capsys)
    assert rc == 2 and "aaa_000000_000010" in err and "'yoga'" in err and "'abseiling'" in err
    assert "line 4" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "train.manifest.json").exists()


def test_identical_duplicates_are_kept_once_with_a_warning(tmp_path, caplog):
    root = _k400(tmp_path / "k400", [("yoga", "aaa", 0, 10), ("yoga", "bbb", 0, 10), ("yoga", "aaa", 0, 10)])
    with caplog.at_level("WARNING"):
        m = build_shards(ShardOptions(src="kinetics400", root=root, splits=("train",), out=tmp_path / "o",
                                      workers=0, progress=False))
    assert read_manifest(m["train"])["num_samples"] == 2
    assert "more than once with the same label" in caplog.text


@pytest.mark.parametrize("row, what", [(("yoga", "aaa", "zero", 10), "numeric times"), (("yoga", "aaa"), "numeric"),
                                       (("", "aaa", 0, 10), "empty youtube_id or label")])
def test_kinetics_bad_rows_name_the_line(tmp_path, capsys, row, what):
    root = _k400(tmp_path / "k400", [("yoga", "bbb", 0, 10), row], videos=False)
    rc, err = _run(["--src", "kinetics400", "--root", str(root), "--splits", "train", "--out", str(tmp_path / "o")],
                   capsys)
    assert rc == 2 and "train.csv line 3" in err and what in err and "Traceback" not in err


@pytest.mark.parametrize("content, what", [
    ("path,label\na.mp4,yoga\nb.mp4\n", "line 3: empty label"),
    ("path,label\na.mp4,yoga\nb.mp4, \n", "line 3: empty label"),
    ("path,label\na.mp4,yoga\n,yoga\n", "line 3: no path"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a UTF-8 text file"),
    (b"path,label\na.mp4,yo\x00ga\n", "binary file"),
])
def test_csv_listing_bad_rows_and_binary_files(tmp_path, capsys, content, what):
    lst = tmp_path / "list.csv"
    (lst.write_bytes if isinstance(content, bytes) else lst.write_text)(content)
    rc, err = _run(["--src", "csv", "--list", str(lst), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and what in err and "Traceback" not in err


def test_csv_duplicates_with_conflicting_labels(tmp_path, capsys):
    make_video(tmp_path / "a.mp4")
    (tmp_path / "list.csv").write_text("path,label\na.mp4,yoga\na.mp4,running\n")
    rc, err = _run(["--src", "csv", "--list", str(tmp_path / "list.csv"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "a.mp4" in err and "'running'" in err and "'yoga'" in err


# ---- videos -----------------------------------------------------------------------------------------------------

def test_truncated_source_is_refused_when_reencoding_too(tmp_path):
    videos = tmp_path / "videos" / "cls"
    good = make_video(videos / "good.webm", frames=48, size=32, codec="vp9")
    cut = videos / "cut.webm"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "o"
    build_shards(ShardOptions(src="folder", root=tmp_path / "videos", out=out, codec="vp9", workers=0, progress=False,
                              max_failures=1))
    m = read_manifest(out / "train.manifest.json")
    assert m["num_samples"] == 1 and m["num_failures"] == 1
    fails = [json.loads(line) for line in (out / "train.failures.jsonl").read_text().splitlines()]
    assert fails[0]["source"].endswith("cut.webm") and "truncated" in fails[0]["reason"]


# ---- verify needs only the shards -------------------------------------------------------------------------------

def test_verify_reads_only_the_shards_even_read_only_and_with_the_sources_gone(tmp_path, capsys):
    videos = tmp_path / "videos"
    for i in range(3):
        make_video(videos / f"c{i % 2}" / f"v{i}.mp4", seed=i)
    out = tmp_path / "o"
    build_shards(ShardOptions(src="folder", root=videos, out=out, workers=0, progress=False))
    shutil.rmtree(videos)  # the source folder moved away
    mode = {p: p.stat().st_mode for p in [out, *out.iterdir()]}
    for p in mode:
        p.chmod(mode[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as a user that can write read-only folders (root): the chmod proves nothing")
        rc = main(["--src", "folder", "--root", str(videos), "--out", str(out), "--verify", "--no-progress",
                   "--workers", "0"])
    finally:
        for p, m in mode.items():
            p.chmod(m)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "verify: 1 manifests, 1 shards, 3 samples, 0 problems" in captured.out


def test_verify_only_does_not_touch_a_moved_source(tmp_path, capsys):
    """The same without chmod (root may write anywhere): no source read, no file written."""
    videos = tmp_path / "videos"
    for i in range(2):
        make_video(videos / "c" / f"v{i}.mp4", seed=i)
    out = tmp_path / "o"
    build_shards(ShardOptions(src="folder", root=videos, out=out, workers=0, progress=False))
    shutil.rmtree(videos)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["--src", "folder", "--root", str(videos), "--out", str(out), "--verify", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
