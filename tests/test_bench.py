"""bench/: the harness runs end to end in a tiny mode and its numbers are assembled correctly.

Speed itself is never asserted (DESIGN: "Speed is measured by bench/, never asserted").
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ is a folder of scripts, not an installed package

from bench import report, timing  # noqa: E402


def _run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--device", "cpu", "--out", str(out),
         "--repeats", "1", "--warmup", "0", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jsons = list(out.glob("cpu-*.json"))
    assert len(jsons) == 1, list(out.iterdir())
    stem = jsons[0].with_suffix("")
    for ext in (".md", ".png"):
        assert stem.with_suffix(ext).stat().st_size > 0
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in proc.stdout  # the stdout summary names the files
    return json.loads(jsons[0].read_text())


def test_kernels_part_tiny_run_writes_every_op_shape_impl(tmp_path):
    rec = _run_bench(tmp_path, "--parts", "kernels", "--kernel-batch", "1")
    env = rec["environment"]
    for key in ("torch", "triton", "dali", "av", "cpu_model", "date", "device"):
        assert key in env
    rows = {(e["op"], e["shape"], e["impl"]): e for e in rec["entries"] if e["part"] == "kernels"}
    ops = {"masked_gather", "masked_gather_strided", "align_loss", "norm_pixel_loss"}
    assert {k[0] for k in rows} == ops
    assert {k[1] for k in rows} == {"vit_s", "vit_b"}
    for op in ops:
        for shape in ("vit_s", "vit_b"):
            for impl in ("amd_reference", "eager"):
                e = rows[(op, shape, impl)]
                assert e["batch"] == 1 and e["ms_median"] > 0 and e["ms_spread"][0] <= e["ms_median"] <= e["ms_spread"][1]
                assert e["bytes_modeled"] > 0 and e["gbps"] > 0
            tri = rows[(op, shape, "triton")]
            assert tri["ms_median"] is None and "not measured" in tri["status"]  # no CUDA: never a fake number
            assert tri["bytes_modeled"] > 0


def test_loaders_part_tiny_run_measures_loaders_peers_and_decode(tmp_path, synthetic_shards):
    # 4 timed batches: the warm-up lets the workers run ahead, so a single timed batch may cost no CPU inside the window
    rec = _run_bench(tmp_path, "--parts", "loaders", "--shards", str(synthetic_shards), "--loader-workers", "1",
                     "--loader-batches", "4", "--loader-batch-size", "2", "--num-frames", "4",
                     "--sampling-rate", "2", "--input-size", "32", "--num-sample", "2", "--decode-videos", "2")
    clips = {e["loader"]: e for e in rec["entries"] if e["part"] == "loaders" and e["kind"] == "clips"}
    assert set(clips) == {"dali", "eager", "torchcodec", "decord", "spdl", "amd-reference", "eager+torchcodec",
                          "eager+decord", "eager+spdl"}  # every peer keeps its rows: used as documented, and inside ours
    for name in ("dali", "eager"):
        e = clips[name]
        assert e["clips_per_s"] > 0 and e["workers"] == 1 and e["num_sample"] == 2 and e["cpu_s_per_clip"] > 0
        assert e["main_cpu_s_per_clip"] >= 0
    # the decode limit of the set (GOP 8 from its manifest) and each loader's share of it
    (limit,) = [e for e in rec["entries"] if e.get("kind") == "decode_limit"]
    assert limit["decoded_frames_per_clip"] > 0 and limit["clips_per_cpu_s"] > 0
    eager = clips["eager"]
    assert eager["decode_limit_fraction"] == pytest.approx(1 / eager["cpu_s_per_clip"] / limit["clips_per_cpu_s"])
    for e in clips.values():  # a peer that is not installed is "not measured", never a made-up number
        assert (e["clips_per_s"] is None) == e["status"].startswith("not measured")
    from amd_fast.data.decoders import decoder_problem

    for name in ("torchcodec", "decord", "spdl"):  # e.g. torchcodec without FFmpeg's shared libraries
        problem = decoder_problem(name)
        for row in (clips[name], clips[f"eager+{name}"]):
            if problem is not None:
                assert row["status"] == f"not measured ({problem[0]})" and problem[1] in rec["notes"]
            else:
                assert row["clips_per_s"] > 0 and row["cpu_s_per_clip"] > 0 and row["main_cpu_s_per_clip"] >= 0
                assert row["decode_limit_fraction"] > 0
    assert clips["torchcodec"]["backend"] == "peer" and clips["eager+torchcodec"]["backend"] == "eager"
    ref = clips["amd-reference"]  # the AMD reference's own loader (decord + PIL), beside the eager loader
    assert ref["backend"] == "peer" and ref["decoder"] == "decord"
    if decoder_problem("decord") is None:
        assert ref["clips_per_s"] > 0 and ref["cpu_s_per_clip"] > 0
    _check_documented_peers_read_our_clips(synthetic_shards)  # the peer rows measure the same clips as ours
    decoders = {(e["backend"], e["threads"]) for e in rec["entries"] if e.get("kind") == "decode" and e["frames_per_s"]}
    assert {("pyav", "1"), ("pyav", "auto"), ("dali", "1")} <= decoders


def _check_documented_peers_read_our_clips(synthetic_shards) -> None:
    """Each peer used as documented (bench/parts/peers.py) reads the same samples, frames, crops and flips as our
    eager loader: one batch each, pixels within the resampling filters' difference (PyAV's swscale vs torch)."""
    from amd_fast.data import DataConfig, build_loader
    from amd_fast.data.decoders import decoder_problem
    from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD
    from bench.parts import peers
    from bench.parts.loaders import LOADERS

    cfg = DataConfig(shards=str(synthetic_shards), split="train", device="cpu", batch_size=2, num_frames=4,
                     sampling_rate=2, input_size=32, num_sample=2, seed=0, dtype="uint8", backend="eager",
                     num_workers=0)
    ours = next(iter(build_loader(cfg)))["video"].float()
    checked = 0
    for name in peers.PEERS:
        if decoder_problem(LOADERS[name][1]) is not None:
            continue
        got = peers.first_batch(name, cfg)
        assert got.shape == ours.shape, name
        if name == "amd-reference":  # float32, normalized in the worker, as the reference delivers it
            assert got.dtype == torch.float32
            got = (got * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) * 255
        else:
            assert got.dtype == torch.uint8, name
        assert (got.float() - ours).abs().mean() < 3, name
        checked += 1
    # and a different epoch / seed is a different clip: the bound above is not loose enough to pass anything
    if checked:
        name = next(n for n in peers.PEERS if decoder_problem(LOADERS[n][1]) is None)
        other = peers.first_batch(name, dataclasses.replace(cfg, seed=1))
        assert (other.float() - ours).abs().mean() > 3


def test_timing_median_spread_and_iqr():
    t = timing.Timing((5.0, 1.0, 3.0, 2.0, 4.0))
    assert t.median == 3.0 and (t.min, t.max) == (1.0, 5.0)
    assert t.iqr == (2.0, 4.0)
    ms = t.to_ms()
    assert ms["ms_median"] == 3000.0 and ms["ms_spread"] == [1000.0, 5000.0] and ms["repeats"] == 5
    with pytest.raises(ValueError, match="repeats"):
        timing.time_fn(lambda: None, device="cpu", repeats=0)


def test_speedups_are_reference_over_impl_and_fast_over_eager():
    entries = [
        {"part": "kernels", "op": "a", "shape": "s", "impl": "amd_reference", "ms_median": 10.0},
        {"part": "kernels", "op": "a", "shape": "s", "impl": "eager", "ms_median": 4.0},
        {"part": "kernels", "op": "a", "shape": "s", "impl": "triton", "ms_median": None},
        {"part": "loaders", "kind": "clips", "loader": "dali", "backend": "dali", "codec": "vp9", "workers": 2,
         "pipelines": 1, "clips_per_s": 30.0, "cpu_s_per_clip": 0.02},
        {"part": "loaders", "kind": "clips", "loader": "dali", "backend": "dali", "codec": "vp9", "workers": 2,
         "pipelines": 2, "clips_per_s": 50.0, "cpu_s_per_clip": 0.02},
        {"part": "loaders", "kind": "clips", "loader": "eager", "backend": "eager", "codec": "vp9", "workers": 2,
         "pipelines": None, "clips_per_s": 10.0, "cpu_s_per_clip": 0.03},
        {"part": "train", "model": "m", "path": "fast", "clips_per_s": 6.0},
        {"part": "train", "model": "m", "path": "eager", "clips_per_s": 2.0},
    ]
    assert report.kernel_speedups(entries) == {("a", "s", None): {"amd_reference": 1.0, "eager": 2.5}}
    assert report.loader_speedups(entries) == {("vp9", 2, "eager"): (3.0, pytest.approx(1.5))}
    assert report.train_speedups(entries) == {"m": 3.0}


def test_train_part_tiny_run_reports_both_paths(tmp_path, synthetic_shards):
    rec = _run_bench(tmp_path, "--parts", "train", "--shards", str(synthetic_shards), "--train-steps", "1",
                     "--train-paths", "fast,eager", "--train-batch-size", "2", "--train-workers", "1")
    rows = {e["path"]: e for e in rec["entries"] if e["part"] == "train"}
    assert set(rows) == {"fast", "eager"}
    assert rows["fast"]["loader"] == "dali" and rows["eager"]["loader"] == "eager"
    assert rows["fast"]["ops"] == "eager" and rows["eager"]["ops"] == "eager"  # CPU: no Triton on either path
    for e in rows.values():
        assert e["model"] == "vit_tiny_cpu:vit_mini_cpu" and e["config"] == "configs/tiny-cpu.yaml"
        clips = e["batch_clips"]
        assert clips == 2 * e["batch_videos"] and e["batch_videos"] == 2  # tiny-cpu.yaml: num_sample 2
        assert e["steps_per_s"] > 0 and abs(e["clips_per_s"] - clips * e["steps_per_s"]) < 1e-9
        assert 0.0 <= e["data_wait_fraction"] <= 1.0


def test_numbers_are_written_without_matplotlib(tmp_path, monkeypatch, caplog):
    """No matplotlib: the JSON and Markdown records are still written, the chart is skipped with a warning."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    record = {"environment": timing.environment(__import__("torch").device("cpu")), "settings": {}, "entries": [],
              "notes": []}
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with caplog.at_level("WARNING"):
        paths = report.write_all(record, tmp_path)
    assert set(paths) == {"json", "md"} and all(p.stat().st_size > 0 for p in paths.values())
    assert not list(tmp_path.glob("*.png")) and "matplotlib is not installed" in caplog.text


def test_gop_part_quick_run_reports_bytes_and_decode_cost(tmp_path):
    rec = _run_bench(tmp_path, "--parts", "gop", "--quick", "--gops", "1,16", "--num-frames", "4", "--input-size", "32")
    rows = {(e["gop"], e["loader"]): e for e in rec["entries"] if e["part"] == "gop"}
    assert set(rows) == {(1, "dali"), (1, "eager"), (16, "dali"), (16, "eager")}
    assert all(e["clips_per_s"] > 0 for e in rows.values())
    # intra-only costs bytes and saves decode; the computed ratio follows the GOP
    assert rows[(1, "dali")]["bytes_per_video"] > rows[(16, "dali")]["bytes_per_video"]
    assert rows[(1, "dali")]["decoded_per_delivered_frame"] < rows[(16, "dali")]["decoded_per_delivered_frame"]


def test_decoded_frames_per_delivered_frame_is_computed_from_gop_and_span():
    from bench.parts.gop import decoded_per_delivered

    # 16 frames at stride 4 span 61; a 61-frame video has one start: 61 decoded frames for 16 x 4 delivered
    assert decoded_per_delivered([61], gop=16, num_frames=16, stride=4, num_sample=4) == pytest.approx(61 / 64)
    # starts 0..3 with GOP 2: lead-ins 0, 1, 0, 1
    assert decoded_per_delivered([64], gop=2, num_frames=16, stride=4, num_sample=1) == pytest.approx(61.5 / 16)


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_skipping_gpu_parts(tmp_path):
    """bench/gpu_check.sh, the prepared device check, on this CPU machine: the gpu tests skip, the bench runs
    its quick mode, every GPU-only number is "not measured", and the folder holds the JSON, MD and PNG."""
    out = tmp_path / "check"
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=900, env={**__import__("os").environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tests = (out / "gpu-tests.txt").read_text()
    assert "skipped" in tests and "failed" not in tests and (out / "gpu-tests.xml").exists()
    (record,) = [json.loads(p.read_text()) for p in out.glob("cpu-*.json")]
    assert {e["part"] for e in record["entries"]} == {"kernels", "train", "loaders"}
    assert all(e["ms_median"] is None and "not measured" in e["status"]
               for e in record["entries"] if e["part"] == "kernels" and e["impl"] == "triton")
    assert list(out.glob("cpu-*.md")) and list(out.glob("cpu-*.png"))
    assert "done: tests rc=0, bench rc=0" in (out / "gpu-check.log").read_text()


# ---- bad input and lost figures ---------------------------------------------------------------------------

TINY_KERNELS = ["--device", "cpu", "--parts", "kernels", "--kernel-batch", "1", "--kernel-shapes", "vit_s",
                "--kernel-ops", "masked_gather", "--repeats", "1", "--warmup", "0"]


def _main(argv, capsys):
    from bench import throughput

    rc = throughput.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_an_unwritable_out_is_refused_before_anything_is_measured(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), *TINY_KERNELS,
                           "--out", str(tmp_path / "a_file" / "sub")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"bench/throughput.py: error: --out {tmp_path / 'a_file' / 'sub'}: cannot write there (Not a directory); "
        "pass a folder you can write (it is created if missing)"]  # no "part kernels ..." log line: nothing ran


@pytest.mark.parametrize("option,value", [("--kernel-batch", "0"), ("--kernel-batch", "2,0"), ("--loader-workers", "0"),
                                          ("--gops", "8,-1"), ("--repeats", "0"), ("--input-size", "0"),
                                          ("--train-steps", "-2"), ("--decode-videos", "0")])
def test_size_and_count_options_below_one_are_refused_in_one_line(option, value, tmp_path, capsys):
    rc, out, err = _main(["--device", "cpu", "--out", str(tmp_path), option, value], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"bench/throughput.py: error: {option} ") and ">= 1" in err
    assert not list(tmp_path.iterdir())  # refused before measuring or writing


@pytest.mark.parametrize("option,value", [("--kernel-ops", "gather"), ("--kernel-shapes", "vit_q"),
                                          ("--train-models", "a:b"), ("--train-paths", "slow")])
def test_unknown_names_any_part_would_reject_are_refused_up_front(option, value, tmp_path, capsys):
    rc, out, err = _main(["--device", "cpu", "--out", str(tmp_path), "--parts", "loaders,kernels,train", option, value],
                         capsys)
    assert rc == 2 and out == "" and f"{option}: unknown ['{value}']" in err and len(err.strip().splitlines()) == 1


def test_a_failed_write_at_the_end_keeps_the_figures(tmp_path, capsys, monkeypatch):
    """The folder accepted the start-up check, then refused the files (a full disk): the summary and the full
    tables are already on stdout, the record is saved elsewhere, and the run fails naming it."""
    def disk_full(record, out_dir, suffix=""):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_all", disk_full)
    rc, out, err = _main([*TINY_KERNELS, "--out", str(tmp_path / "out")], capsys)
    assert rc == 1 and "No space left on device" in err
    assert "kernels  masked_gather" in out  # the one-screen summary, printed before the write
    assert "### Kernels (forward + backward" in out  # and the full tables, once the write failed
    saved = Path(err.split("the record is saved in ", 1)[1].split()[0])
    rec = json.loads(saved.read_text())
    saved.unlink()
    assert {(e["op"], e["impl"]) for e in rec["entries"]} >= {("masked_gather", "amd_reference"),
                                                              ("masked_gather", "eager")}


def test_a_part_rejecting_its_input_keeps_the_other_parts_numbers(tmp_path, capsys, monkeypatch, synthetic_shards):
    from amd_fast.errors import InputError
    from bench.parts import train

    def bad_override(args, device, shards):
        raise InputError("--train-override: unknown key model.nope")

    monkeypatch.setattr(train, "run", bad_override)
    out_dir = tmp_path / "out"
    rc, out, err = _main([*TINY_KERNELS, "--parts", "kernels,train", "--shards", str(synthetic_shards),
                          "--out", str(out_dir)], capsys)
    assert rc == 2 and "part train: --train-override: unknown key model.nope" in err
    (partial,) = out_dir.glob("cpu-*-partial.json")
    rec = json.loads(partial.read_text())
    assert any(e["part"] == "kernels" and e["ms_median"] for e in rec["entries"])
    assert any("Part train NOT RUN" in n for n in rec["notes"])
