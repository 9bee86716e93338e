"""Build behaviour: bad inputs, failure budget, resume, option changes, --verify, CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amd_fast.shard import ShardOptions, build_shards, read_manifest, verify_shards
from amd_fast.shard.__main__ import main
from amd_fast.shard.build import TooManyFailures, build_shards_report
from amd_fast.errors import InputError
from amd_fast.shard.plan import PlanMismatch
from tests.shard_fixtures import make_video

REPO = Path(__file__).resolve().parents[1]


def _k400_with_bad_videos(root: Path) -> Path:
    """CVDF tree: 6 good train videos + truncated, zero-length, garbage and missing ones."""
    rows = []
    for i in range(6):
        make_video(root / "train" / f"good{i}_000000_000010.mp4", seed=i)
        rows.append(("jump" if i % 2 else "run", f"good{i}"))
    full = make_video(root / "train" / "trunc_000000_000010.mp4", seed=9).read_bytes()
    (root / "train" / "trunc_000000_000010.mp4").write_bytes(full[: len(full) // 2])
    (root / "train" / "empty_000000_000010.mp4").write_bytes(b"")
    (root / "train" / "junk_000000_000010.mp4").write_bytes(os.urandom(3000))
    rows += [("run", "trunc"), ("jump", "empty"), ("run", "junk"), ("jump", "missing")]
    (root / "annotations").mkdir(parents=True)
    lines = ["label,youtube_id,time_start,time_end,split"] + [f"{lab},{yt},0,10,train" for lab, yt in rows]
    (root / "annotations" / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def _opts(**kw):
    base = dict(workers=0, progress=False)
    base.update(kw)
    return ShardOptions(**base)


def test_bad_videos_are_skipped_and_logged(tmp_path):
    root = _k400_with_bad_videos(tmp_path / "k400")
    out = tmp_path / "out"
    rep = build_shards_report(_opts(src="kinetics400", root=root, out=out, splits=("train",), samples_per_shard=4,
                                    max_failures=4))
    s = rep.splits["train"]
    assert (s.videos_ok, s.videos_failed) == (6, 4)
    m = read_manifest(rep.manifests["train"])
    assert m["num_samples"] == 6 and m["num_failures"] == 4 and m["classes"] == ["jump", "run"]
    fails = {Path(f["source"]).name.split("_")[0]: f["reason"]
             for f in map(json.loads, (out / "train.failures.jsonl").read_text().splitlines())}
    assert set(fails) == {"trunc", "empty", "junk", "missing"}
    assert fails["empty"] == "zero-length file" and fails["missing"] == "missing file"
    assert verify_shards(out).ok


def test_too_many_failures_stops_nonzero_and_keeps_work(tmp_path, capsys):
    root = _k400_with_bad_videos(tmp_path / "k400")
    out = tmp_path / "out"
    with pytest.raises(TooManyFailures, match="max-failures 1"):
        build_shards(_opts(src="kinetics400", root=root, out=out, splits=("train",), max_failures=1))
    assert not list(out.glob("*.tmp")) and not (out / "train.manifest.json").exists()
    assert len((out / "train.failures.jsonl").read_text().splitlines()) == 2
    rc = main(["--src", "kinetics400", "--root", str(root), "--out", str(out), "--splits", "train",
               "--max-failures", "1", "--workers", "0", "--no-progress"])
    assert rc == 1 and "max-failures" in capsys.readouterr().err


def test_cli_missing_root_names_layout(tmp_path, capsys):
    rc = main(["--src", "kinetics400", "--root", str(tmp_path / "none"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "annotations/{train,val,test}.csv" in err  # bad input


def _syn(out, **kw):
    return _opts(src="synthetic", out=out, synthetic_count=16, synthetic_frames=8, synthetic_size=32,
                 samples_per_shard=4, **kw)


def _snapshot(out):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("*-*.tar"))}


def test_resume_keeps_finished_shards_and_rebuilds_the_rest(tmp_path):
    out = tmp_path / "out"
    build_shards(_syn(out))
    ref = _snapshot(out)
    assert len(ref) == 4  # 12 train in 3 shards + 4 val in 1
    ref_manifest = read_manifest(out / "train.manifest.json")
    # Simulate a crash: shard 1 never renamed (only its .tmp), shard 2's tar renamed but no idx yet,
    # manifest not written.
    (out / "train-000001.tar").rename(out / "train-000001.tar.tmp")
    (out / "train-000001.idx").unlink()
    (out / "train-000002.idx").unlink()
    (out / "train.manifest.json").unlink()
    time.sleep(0.01)
    rep = build_shards_report(_syn(out))
    assert rep.splits["train"].shards_kept == 1 and rep.splits["val"].shards_kept == 1
    assert rep.splits["train"].encoded == 8
    now = _snapshot(out)
    assert now["train-000000.tar"] == ref["train-000000.tar"]  # untouched: same mtime and bytes
    assert now["train-000001.tar"][1] == ref["train-000001.tar"][1]  # rebuilt byte-identically
    assert now["train-000002.tar"][0] != ref["train-000002.tar"][0]
    assert not list(out.glob("*.tmp"))
    m = read_manifest(out / "train.manifest.json")
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in ref_manifest["shards"]]


def test_rerun_with_other_options_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    build_shards(_syn(out))
    with pytest.raises(PlanMismatch, match=r"codec='vp9' \(now 'mjpeg'\).*--overwrite"):
        build_shards(_syn(out, codec="mjpeg"))
    m = read_manifest(build_shards(_syn(out, codec="mjpeg", overwrite=True))["train"])
    assert m["options"]["codec"] == "mjpeg" and m["num_samples"] == 12
    with pytest.raises(InputError, match="no val.plan.json"):
        (out / "val.plan.json").unlink()
        build_shards(_syn(out, codec="mjpeg"))


def test_verify_reports_corruption(tmp_path, capsys):
    out = tmp_path / "out"
    build_shards(_syn(out))
    assert verify_shards(out).ok
    tar = out / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    (out / "val-000000.idx").write_text("v1.2 1\nwebm 512 10 x.webm\n")
    rep = verify_shards(out)
    assert any("train-000001.tar: sha256" in p for p in rep.problems)
    assert any("val-000000.idx" in p for p in rep.problems)
    rc = main(["--src", "synthetic", "--out", str(out), "--synthetic-count", "16", "--synthetic-frames", "8",
               "--synthetic-size", "32", "--samples-per-shard", "4", "--workers", "0", "--no-progress", "--verify"])
    assert rc == 1 and "sha256" in capsys.readouterr().out


def test_interrupted_cli_run_resumes(tmp_path):
    """SIGINT a real multi-process run mid-way; nothing half-written is left; a rerun completes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "amd_fast.shard", "--src", "synthetic", "--out", str(out), "--splits", "train",
           "--synthetic-count", "200", "--synthetic-frames", "8", "--synthetic-size", "32",
           "--samples-per-shard", "10", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / "train-000001.idx").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("run finished before the interrupt")
    assert proc.returncode == 130, err.decode()[-2000:]
    kept = _snapshot(out)
    assert kept
    assert not list(out.glob("*.tar.tmp")) and not list(out.glob("*.idx.tmp"))
    assert not (out / "train.manifest.json").exists()
    for name in kept:  # every tar under its final name has its index
        assert (out / name.replace(".tar", ".idx")).exists()
    done = subprocess.run(cmd + ["--verify"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 problems" in done.stdout
    after = _snapshot(out)
    assert all(after[n] == kept[n] for n in kept)
    assert read_manifest(out / "train.manifest.json")["num_samples"] == 200


def test_keys_are_tar_and_webdataset_safe():
    from amd_fast.shard.plan import safe_key

    assert safe_key(3, "a.b c/ü--x") == "0000003_a_b_c_--x"
    assert safe_key(0, "...") == "0000000_video"
    assert len(safe_key(1, "x" * 500)) == 80


def test_plan_is_deterministic_with_limit_and_shard_bytes(tmp_path):
    from amd_fast.shard.plan import plan_split
    from amd_fast.shard.sources import VideoRecord

    recs = [VideoRecord(source=f"s{i}", label=i % 3, stem=f"v{i}", size=100) for i in range(20)]
    a = plan_split(recs, "train", 0, 256, 350, 10)
    assert [len(s) for s in a] == [3, 3, 3, 1]
    assert a == plan_split(recs, "train", 0, 256, 350, 10)
    assert [v.record for s in a for v in s] != recs[:10]  # shuffled (lists are often sorted by class)
    assert plan_split(recs, "train", 1, 256, None, None) != plan_split(recs, "train", 0, 256, None, None)


def test_mjpeg_reencode_with_short_side_decodes_in_dali(tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    vids = tmp_path / "v"
    make_video(vids / "a" / "x.mp4", frames=8, size=48)
    make_video(vids / "b" / "y.webm", frames=6, size=48, codec="vp9")
    out = tmp_path / "out"
    m = read_manifest(build_shards(_opts(src="folder", root=vids, out=out, codec="mjpeg", short_side=32))["train"])
    tar, idx = str(out / m["shards"][0]["tar"]), str(out / m["shards"][0]["index"])

    @dali.pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        v, info = fn.readers.webdataset(paths=[tar], index_paths=[idx], ext=["avi", "clipinfo"],
                                        dtypes=[types.UINT8, types.INT32])
        return fn.decoders.video(v, device="cpu"), info

    p = pipe()
    p.build()
    frames, info = p.run()
    shapes = sorted(np.asarray(frames[k]).shape for k in range(2))
    assert shapes == [(6, 32, 32, 3), (8, 32, 32, 3)]
    assert sorted(int(np.asarray(info[k])[1]) for k in range(2)) == [6, 8]


def test_crash_during_rebuild_leaves_no_stale_manifest(tmp_path, monkeypatch):
    """Shard 2 published but not journaled (crash between rename and journal line): the rerun rebuilds
    it; if that rerun is interrupted too, the old manifest is gone and no half shard is published."""
    from amd_fast.shard import writer

    out = tmp_path / "out"
    build_shards(_syn(out, splits=("train",)))
    journal = out / "train.progress.jsonl"
    journal.write_text("".join(l + "\n" for l in journal.read_text().splitlines() if '"shard": 2' not in l))

    def interrupted_close(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.ShardWriter, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        build_shards(_syn(out, splits=("train",)))
    assert not (out / "train.manifest.json").exists()
    assert sorted(p.name for p in out.glob("train-*")) == [f"train-00000{i}.{e}" for i in (0, 1, 3)
                                                           for e in ("idx", "tar")]
    monkeypatch.undo()
    rep = build_shards_report(_syn(out, splits=("train",)))
    assert (rep.splits["train"].shards_kept, rep.splits["train"].encoded) == (3, 4)
    assert verify_shards(out).ok


def test_presets_fill_unset_options_and_explicit_ones_win():
    from amd_fast.shard.options import preset_gop

    o = ShardOptions(src="kinetics400", root="/data", preset="nvdec").resolved()
    assert (o.codec, o.short_side, o.gop) == ("h264", 320, 32)  # span 61 (16 frames x stride 4) -> GOP 32
    o = ShardOptions(src="kinetics400", root="/data", preset="cpu", clip_span=31, gop=4).resolved()
    assert (o.codec, o.short_side, o.gop) == ("vp9", 320, 4)  # an explicit --gop wins over the preset's
    assert preset_gop(31) == 16 and preset_gop(1) == 2 and preset_gop(1000) == 64
    with pytest.raises(ValueError, match="--preset"):
        ShardOptions(src="kinetics400", root="/data", preset="gpu").resolved()
