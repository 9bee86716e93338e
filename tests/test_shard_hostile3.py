"""The shard tool under a new user's commands (issue #20): listed videos never vanish without a word, symlink
loops, tars without their plan, impossible sizes, misleading messages, worker counts, and odd paths. Each runs
the command and asserts the exit code and the one-line message (or the accounting), never a traceback."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from amd_fast.shard import ShardOptions, read_manifest
from amd_fast.shard import build
from amd_fast.shard.__main__ import main
from amd_fast.shard.build import load_index
from tests.shard_fixtures import make_video

REPO = Path(__file__).resolve().parent.parent


def _run(argv, capsys):
    """The CLI in this process: (exit code, stdout, the one error line or '')."""
    rc = main([*argv, "--no-progress"] + ([] if "--workers" in argv else ["--workers", "0"]))
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    errors = [line for line in cap.err.splitlines() if line.startswith("amd_fast.shard: ")]
    assert len(errors) <= 1, cap.err
    return rc, cap.out, errors[0] if errors else ""


def _videos(folder: Path, names):
    for i, name in enumerate(names):
        make_video(folder / name, seed=i)
    return folder


def _synthetic(out: Path):
    return ["--src", "synthetic", "--synthetic-count", "8", "--synthetic-frames", "4", "--synthetic-size", "16",
            "--samples-per-shard", "4", "--out", str(out)]


# ---- 2: every listed row is built, a logged failure, or counted as left out ------------------------------------

def test_csv_rows_of_other_splits_are_counted_and_split_names_match_case_insensitively(tmp_path, capsys, caplog):
    _videos(tmp_path, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"])
    (tmp_path / "list.csv").write_text("path,label,split\na.mp4,dog,train\nb.mp4,cat,Train\nc.mp4,dog,val\n"
                                       "d.mp4,cat,VAL\ngone.mp4,cat,TRAIN\ne.mp4,dog,test\n")
    out = tmp_path / "o"
    with caplog.at_level(logging.INFO):
        rc, stdout, err = _run(["--src", "csv", "--list", str(tmp_path / "list.csv"), "--out", str(out)], capsys)
    assert rc == 0, err
    m = read_manifest(out / "train.manifest.json")
    failures = (out / "train.failures.jsonl").read_text().splitlines()
    # 6 rows: 2 built (train + Train), 1 failure (TRAIN, missing file), 3 counted (val 2, test 1)
    assert (m["num_samples"], len(failures), m["unbuilt_splits"]) == (2, 1, {"test": 1, "val": 2})
    assert "gone.mp4" in failures[0]
    assert "3 listed video(s) not built" in caplog.text and "--splits train,test,val would include them" in caplog.text
    assert "not built (listed for splits not in --splits): test 1, val 2; --splits train,test,val" in stdout

    rc, _, err = _run(["--src", "csv", "--list", str(tmp_path / "list.csv"), "--out", str(out), "--splits",
                       "Train,VAL"], capsys)
    assert rc == 0, err
    assert read_manifest(out / "val.manifest.json")["num_samples"] == 2  # written lowercase: val.manifest.json
    assert read_manifest(out / "train.manifest.json")["unbuilt_splits"] == {"test": 1}


def test_csv_header_names_are_case_insensitive_so_the_split_column_is_not_ignored(tmp_path, capsys):
    _videos(tmp_path, ["a.mp4", "b.mp4"])
    (tmp_path / "list.csv").write_text("Path, Label, Split\na.mp4,dog,train\nb.mp4,dog,val\n")
    rc, _, err = _run(["--src", "csv", "--list", str(tmp_path / "list.csv"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    m = read_manifest(tmp_path / "o" / "train.manifest.json")
    assert m["num_samples"] == 1 and m["unbuilt_splits"] == {"val": 1}  # the val row is not built into train


def test_a_requested_split_the_listing_lacks_fails_before_any_split_is_built(tmp_path, capsys):
    _videos(tmp_path, ["a.mp4"])
    (tmp_path / "list.csv").write_text("path,label,split\na.mp4,dog,train\na.mp4,dog,test\n")
    rc, _, err = _run(["--src", "csv", "--list", str(tmp_path / "list.csv"), "--out", str(tmp_path / "o"),
                       "--splits", "train,val"], capsys)
    assert rc == 2
    assert "split 'val' of --src csv has no videos" in err and "the source lists videos for test (1)" in err
    assert not list((tmp_path / "o").glob("train-*.tar"))  # train was not built first and then abandoned


def test_folder_split_folders_match_case_insensitively_and_others_are_counted(tmp_path, capsys, caplog):
    root = _videos(tmp_path / "v", ["Train/dog/a.mp4", "Train/cat/b.mp4", "VAL/dog/c.mp4"])
    (root / "Train" / "dog" / "notes.txt").write_text("not a video")
    out = tmp_path / "o"
    with caplog.at_level(logging.INFO):
        rc, _, err = _run(["--src", "folder", "--root", str(root), "--out", str(out)], capsys)
    assert rc == 0, err
    m = read_manifest(out / "train.manifest.json")
    assert m["num_samples"] == 2 and m["classes"] == ["cat", "dog"] and m["unbuilt_splits"] == {"val": 1}
    assert "1 .txt file(s)" in caplog.text
    rc, _, err = _run(["--src", "folder", "--root", str(root), "--out", str(out), "--splits", "train,val"], capsys)
    assert rc == 0, err
    assert read_manifest(out / "val.manifest.json")["num_samples"] == 1


def test_other_list_sources_count_the_splits_they_do_not_build(tmp_path):
    def index(src, root, **kw):
        return load_index(ShardOptions(src=src, root=root, workers=0, progress=False, **kw).resolved())

    k400 = tmp_path / "k400"  # VideoMAE lists: test.csv is not built by default
    k400.mkdir()
    (k400 / "train.csv").write_text("a.mp4 0\n")
    (k400 / "val.csv").write_text("b.mp4 0\n")
    (k400 / "test.csv").write_text("c.mp4 0\nd.mp4 0\n\n")
    assert index("kinetics400", k400).left_out == {"test": 2}

    ucf = tmp_path / "ucf" / "ucfTrainTestlist"
    ucf.mkdir(parents=True)
    (ucf / "classInd.txt").write_text("1 Archery\n")
    (ucf / "trainlist01.txt").write_text("Archery/a.avi 1\n")
    (ucf / "testlist01.txt").write_text("Archery/b.avi\nArchery/c.avi\n")
    assert index("ucf101", ucf.parent, splits=("train",)).left_out == {"test": 2}

    ssv2 = tmp_path / "ssv2"
    ssv2.mkdir()
    (ssv2 / "something-something-v2-labels.json").write_text(json.dumps({"Holding something": "0"}))
    (ssv2 / "something-something-v2-train.json").write_text(json.dumps([{"id": "1", "template": "Holding [something]"}]))
    (ssv2 / "something-something-v2-validation.json").write_text(json.dumps([{"id": "2", "template": "x"}] * 3))
    assert index("ssv2", ssv2, splits=("train",)).left_out == {"val": 3}

    hmdb = tmp_path / "hmdb" / "testTrainMulti_7030_splits"
    hmdb.mkdir(parents=True)
    (hmdb / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\nw3.avi 0\n")
    assert index("hmdb51", hmdb.parent, splits=("train",)).left_out == {"test": 1}


@pytest.mark.parametrize("files, what", [
    ({"ucfTrainTestlist/classInd.txt": "1 Archery extra\n"}, "classInd.txt line 1: expected '<index> <ClassName>'"),
    ({"ucfTrainTestlist/classInd.txt": "one Archery\n"}, "classInd.txt line 1: expected '<index> <ClassName>'"),
])
def test_ucf101_malformed_class_index_names_the_line(tmp_path, capsys, files, what):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    rc, _, err = _run(["--src", "ucf101", "--root", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and what in err


def test_hmdb51_malformed_line_is_named_not_skipped(tmp_path, capsys):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi train\n")
    rc, _, err = _run(["--src", "hmdb51", "--root", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "wave_test_split1.txt line 2: expected '<video>.avi <0|1|2>'" in err


# ---- 11: symlink loops -----------------------------------------------------------------------------------------

def test_folder_symlink_loops_are_skipped_and_named(tmp_path):
    root = _videos(tmp_path / "v", ["dog/a.mp4"])
    (root / "dog" / "loop.mp4").symlink_to("loop.mp4")
    (root / "dog" / "ping.mp4").symlink_to("pong.mp4")
    (root / "dog" / "pong.mp4").symlink_to("ping.mp4")
    (root / "cat").symlink_to("cat")
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "amd_fast.shard", "--src", "folder", "--root", str(root), "--out",
                        str(out), "--workers", "0", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    for name in ("dog/loop.mp4", "dog/ping.mp4", "dog/pong.mp4", "cat"):
        assert f"skipping {root / name}: a symlink loop" in r.stderr
    assert "skipped 4 symlink loop(s)" in r.stderr
    m = read_manifest(out / "train.manifest.json")
    assert m["num_samples"] == 1 and m["classes"] == ["dog"]


def test_a_looping_root_or_listed_path_is_an_input_error_or_a_failure(tmp_path, capsys):
    (tmp_path / "root").symlink_to("root")
    rc, _, err = _run(["--src", "folder", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "a symlink loop" in err and "--root" in err
    _videos(tmp_path, ["a.mp4"])
    (tmp_path / "b.mp4").symlink_to("b.mp4")
    (tmp_path / "list.csv").write_text("path,label\na.mp4,dog\nb.mp4,dog\n")
    rc, _, err = _run(["--src", "csv", "--list", str(tmp_path / "list.csv"), "--out", str(tmp_path / "o"),
                       "--max-failures", "1"], capsys)
    assert rc == 0, err  # a listed loop is a row like any unreadable one: it goes to the failures log
    assert "b.mp4" in (tmp_path / "o" / "train.failures.jsonl").read_text()


# ---- 12: tars without a plan.json --------------------------------------------------------------------------------

def test_shards_whose_plan_was_deleted_are_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = _run(_synthetic(out), capsys)
    assert rc == 0, err
    (out / "val.plan.json").unlink()
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    train_mtime = (out / "train-000000.tar").stat().st_mtime_ns
    rc, _, err = _run(_synthetic(out), capsys)
    assert rc == 2
    assert f"{out} holds 1 val shard(s) (val-000000.tar) but no val.plan.json" in err
    assert "new --out" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before  # nothing lost
    assert (out / "train-000000.tar").stat().st_mtime_ns == train_mtime  # refused before train was touched


def test_someone_elses_tars_are_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"not ours")
    rc, _, err = _run(_synthetic(out), capsys)
    assert rc == 2 and "no train.plan.json" in err and str(out) in err
    assert (out / "train-000000.tar").read_bytes() == b"not ours"


# ---- 15a / 16: impossible sizes, misleading messages -------------------------------------------------------------

@pytest.mark.parametrize("flags, what", [
    (["--short-side", "100000"], "--short-side 100000: must be an even number of pixels in 16..4096"),
    (["--short-side", "8"], "in 16..4096"),
    (["--short-side", "321"], "in 16..4096"),
    (["--short-side", "0"], "in 16..4096"),
    (["--gop", "0"], "--gop 0: the keyframe interval must be in 1..100000"),
    (["--gop", "2147483648"], "in 1..100000"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
    (["--synthetic-size", "100000"], "--synthetic-size 100000: must be even (yuv420p) and at most 4096"),
    (["--synthetic-size", "2048", "--synthetic-frames", "512"], "GiB in memory (at most 1 GiB)"),
])
def test_impossible_numbers_are_refused_up_front(tmp_path, capsys, flags, what):
    out = tmp_path / "o"
    rc, _, err = _run([*_synthetic(out), "--codec", "vp9", *flags], capsys)
    assert rc == 2 and what in err
    assert not out.exists()  # refused before any video was tried


def test_the_largest_short_side_and_gop_are_accepted():
    o = ShardOptions(src="synthetic", codec="vp9", short_side=4096, gop=100_000).resolved()
    assert (o.short_side, o.gop) == (4096, 100_000)


@pytest.mark.parametrize("flags, want, not_want", [
    (["--preset", "nvdec", "--codec", "copy"],
     ["--preset nvdec sets --short-side 320 and --gop 32", "drop --codec copy (the preset encodes h264)"], ["given"]),
    (["--preset", "cpu", "--codec", "copy", "--short-side", "64"],
     ["--preset cpu sets --gop 32; --short-side 64 given"], []),
    (["--codec", "copy", "--gop", "4"], ["--gop 4 given", "add --codec vp9"], ["--preset", "--short-side"]),
])
def test_copy_with_resizing_names_what_asked_for_it(tmp_path, capsys, flags, want, not_want):
    root = tmp_path / "v"
    root.mkdir()
    rc, _, err = _run(["--src", "folder", "--root", str(root), *flags], capsys)
    assert rc == 2 and "--codec copy keeps the source bytes" in err
    assert all(w in err for w in want) and not any(w in err for w in not_want), err


# ---- 8: workers ------------------------------------------------------------------------------------------------------

def test_negative_workers_are_refused(tmp_path, capsys):
    rc, _, err = _run([*_synthetic(tmp_path / "o"), "--workers", "-1"], capsys)
    assert rc == 2 and "--workers -1" in err and "0 to encode in this process" in err


@pytest.mark.parametrize("cores, want, why", [(64, 6, "only 6 video(s) to process"),
                                              (3, 3, "this machine gives this process 3 CPU core(s)")])
def test_workers_above_the_jobs_or_cores_are_capped_with_a_log_line(tmp_path, capsys, caplog, monkeypatch,
                                                                    cores, want, why):
    started = []

    class InlinePool(build._Pool):  # records the pool size, encodes in this process (spawning costs seconds)
        def __init__(self, workers):
            started.append(workers)
            super().__init__(0)

    monkeypatch.setattr(build, "_Pool", InlinePool)
    monkeypatch.setattr(build, "usable_cores", lambda: cores)
    with caplog.at_level(logging.INFO):
        rc, _, err = _run([*_synthetic(tmp_path / "o"), "--workers", "32"], capsys)  # 6 train, 2 val videos
    assert rc == 0, err
    assert started == [want] and f"--workers 32 capped to {want}: {why}" in caplog.text


# ---- more of a new user's inputs ------------------------------------------------------------------------------------

def test_out_that_is_a_file_or_under_one_is_refused_and_left_alone(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for out, what in ((f, f"--out {f} is a file"), (f / "sub", f"is under {f}, which is a file")):
        rc, _, err = _run(_synthetic(out), capsys)
        assert rc == 2 and what in err
    assert f.read_text() == "mine"


def test_a_class_folder_without_videos_says_what_it_ignored(tmp_path, capsys, caplog):
    root = tmp_path / "v"
    (root / "dog").mkdir(parents=True)
    (root / "dog" / "a.MTS").write_text("x")
    (root / "dog" / "b.txt").write_text("x")
    with caplog.at_level(logging.INFO):
        rc, _, err = _run(["--src", "folder", "--root", str(root), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and f"split 'train' of --src folder has no videos under {root}" in err
    assert "1 .mts file(s), 1 .txt file(s)" in caplog.text and ".mp4" in caplog.text  # why, and what is taken


@pytest.mark.parametrize("flags, what", [
    (["--src", "csv", "--list", "{tmp}"], "is a folder; give the CSV file"),
    (["--src", "folder", "--root", "{tmp}/f.txt"], "is a file; give the dataset folder"),
    (["--src", "folder", "--root", "{tmp}", "--splits", "../x"], "'../x' is not a split name"),
    (["--src", "folder", "--root", "{tmp}", "--splits", "train,Train"], "names 'train' twice"),
    (["--src", "synthetic", "--root", "{tmp}"], "--root would be ignored"),
    (["--src", "folder", "--root", "{tmp}", "--list", "{tmp}/f.txt"], "--list is read by --src csv only"),
    (["--src", "folder", "--root", "{tmp}", "--classes", "{tmp}/f.txt"], "--classes would be ignored"),
    (["--src", "folder", "--root", "{tmp}", "--fold", "2"], "drop --fold"),
    (["--src", "folder", "--root", "{tmp}", "--clip-span", "31"], "--clip-span only sets the keyframe interval"),
])
def test_options_that_would_be_ignored_or_misread_are_refused(tmp_path, capsys, flags, what):
    (tmp_path / "f.txt").write_text("x")
    rc, _, err = _run([f.format(tmp=tmp_path) for f in flags] + ["--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and what in err
