"""The demo at toy size: both lanes run, every phase is timed in the table and in summary.json."""
import json

import pytest

from amd_fast.demo import main


def test_demo_times_every_phase_and_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["--out", str(out), "--shards", str(tmp_path / "shards"), "--videos", "32", "--teacher-steps", "2",
               "--student-steps", "2", "--finetune-steps", "2", "data.input_size=32", "log.tensorboard=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    names = [p["name"] for p in summary["phases"]]
    assert names[0] == "shard build" and len(names) == 1 + 4 + 5  # shards; lane 1: 4 phases; lane 2: 5
    for want in ("teacher", "student: AMD", "student: VideoMAE", "fine-tune + test: AMD", "fine-tune + test: VideoMAE",
                 "fine-tune + test: random init", "linear probe: AMD", "linear probe: VideoMAE",
                 "linear probe: random init"):
        assert sum(want in n for n in names) == 1, want
    for p in summary["phases"]:
        assert p["seconds"] > 0 and p["name"] in printed
        if p["name"] != "shard build":
            assert p["clips_per_s"] > 0, p
    assert summary["lanes"] == 2 and summary["machine"]["cores"] >= 1
    assert set(summary["results"]) == {"AMD (distilled)", "VideoMAE", "random init"}
    assert "total (wall)" in printed


def test_demo_sizes_below_one_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--lanes", "0"])
    assert e.value.code == 2 and "--lanes must be >= 1" in capsys.readouterr().err


def test_a_failing_lane_stops_the_demo_with_its_own_exit_code(tmp_path, capsys):
    # an override no pretraining config knows: both lanes fail at their first run; one line, exit 2
    rc = main(["--out", str(tmp_path / "demo"), "--shards", str(tmp_path / "shards"), "--videos", "32",
               "--teacher-steps", "2", "--student-steps", "2", "--finetune-steps", "2", "model.no_such_key=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_key" in err and "Traceback" not in err


def test_demo_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    rc = main(["--out", str(f), "--shards", str(tmp_path / "shards")])
    assert rc == 2 and "is a file" in capsys.readouterr().err and not (tmp_path / "shards").exists()
