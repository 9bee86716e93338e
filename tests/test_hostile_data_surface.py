"""Shard tool, loader_speed and bench under a hostile new user (round 4): inputs that used to end in a traceback,
silently do something else, or lose finished figures. Each asserts the exit code and the one-line message."""
import json

import pytest

from tests.shard_fixtures import synthetic_shards  # noqa: F401  (fixture)


# ---- shard tool ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", ",", " , "])
def test_shard_splits_naming_nothing_is_refused_not_defaulted(value, tmp_path, capsys):
    """`--splits ""` used to build the default train,val silently."""
    from amd_fast.shard.__main__ import main

    rc = main(["--src", "synthetic", "--synthetic-count", "4", "--out", str(tmp_path / "o"), "--splits", value,
               "--no-progress", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "amd_fast.shard: error: --splits names no split; give at least one (e.g. --splits train,val), or drop "
        "--splits for the source's default"]
    assert not (tmp_path / "o").exists()  # nothing built


def test_shard_overwrite_deletes_only_the_tools_own_files(tmp_path, capsys):
    """--overwrite used to delete anything named <split>-<digit>*.tar* / .idx*, e.g. a user's backup."""
    from amd_fast.shard.__main__ import main

    out = tmp_path / "o"
    argv = ["--src", "synthetic", "--synthetic-count", "4", "--synthetic-frames", "4", "--synthetic-size", "16",
            "--splits", "train", "--out", str(out), "--no-progress", "--workers", "0"]
    assert main(argv) == 0
    keep = {"train-000000.tar.bak": "backup", "train-2019.tar.gz": "mine", "train-000000.idx.orig": "old"}
    for name, text in keep.items():
        (out / name).write_text(text)
    (out / "train-000007.tar.tmp").write_text("a leftover of this tool")
    assert main([*argv, "--overwrite"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    for name, text in keep.items():
        assert (out / name).read_text() == text
    assert not (out / "train-000007.tar.tmp").exists()
    assert (out / "train-000000.tar").is_file() and (out / "train.manifest.json").is_file()


# ---- loader_speed -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,message", [
    ("nonsense", "--device 'nonsense' is not a torch device; use auto, cpu or cuda[:N]"),
    ("meta", "--device meta: the loaders deliver to cpu or cuda only; use auto, cpu or cuda[:N]"),
])
def test_loader_speed_bad_device_is_one_line(device, message, synthetic_shards, capsys):  # noqa: F811
    from amd_fast.data.loader_speed import main

    rc = main(["--shards", str(synthetic_shards), "--backend", "eager", "--batches", "1", "--device", device])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"python -m amd_fast.data.loader_speed: error: {message}"]


def test_loader_speed_cuda_without_a_gpu_is_one_line(synthetic_shards, capsys):  # noqa: F811
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from amd_fast.data.loader_speed import main

    rc = main(["--shards", str(synthetic_shards), "--backend", "eager", "--batches", "1", "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        "python -m amd_fast.data.loader_speed: error: --device cuda, but torch sees no CUDA device; run with "
        "--device cpu (or auto)"]


# ---- bench --------------------------------------------------------------------------------------------------

def _bench(argv, capsys):
    from bench import throughput

    rc = throughput.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, [line for line in err.splitlines() if line.startswith("bench/throughput.py: ")]


def test_bench_shards_given_a_tar_is_refused_up_front(synthetic_shards, tmp_path, capsys):  # noqa: F811
    """It used to run the part and fail with a JSON-decode traceback (exit 1, a -partial record written)."""
    tar = sorted(synthetic_shards.glob("train-*.tar"))[0]
    rc, out, err = _bench(["--device", "cpu", "--parts", "loaders", "--shards", str(tar), "--out", str(tmp_path / "b")],
                          capsys)
    assert rc == 2 and err == [
        f"bench/throughput.py: error: --shards {tar}: not a shard folder or a manifest .json; pass the folder that "
        f"holds train.manifest.json (e.g. --shards {synthetic_shards})"]
    assert not list((tmp_path / "b").glob("*.json"))


def test_bench_shards_with_an_empty_manifest_is_refused_up_front(synthetic_shards, tmp_path, capsys):  # noqa: F811
    m = json.loads((synthetic_shards / "train.manifest.json").read_text())
    m.update(shards=[], num_samples=0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.manifest.json").write_text(json.dumps(m))
    rc, out, err = _bench(["--device", "cpu", "--parts", "loaders", "--shards", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "b")], capsys)
    assert rc == 2 and err == [
        f"bench/throughput.py: error: --shards {tmp_path / 'empty'}: train.manifest.json lists no samples; rebuild "
        "the shards (python -m amd_fast.shard ...) or pass another shard folder"]


@pytest.mark.parametrize("option", ["--kernel-shapes", "--kernel-ops", "--train-models", "--train-paths"])
def test_bench_name_lists_naming_nothing_are_refused_not_defaulted(option, tmp_path, capsys):
    """`--kernel-shapes ""` used to measure the default shapes silently (exit 0)."""
    rc, out, err = _bench(["--device", "cpu", "--parts", "kernels", option, ",", "--out", str(tmp_path)], capsys)
    assert rc == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"bench/throughput.py: error: {option} names nothing; choose from ")
    assert err[0].endswith(f"(or drop {option})")
    assert not list(tmp_path.iterdir())


def test_bench_interrupted_after_a_part_keeps_its_figures(synthetic_shards, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Ctrl-C / SIGTERM during a later part used to drop the finished parts' numbers ("not written")."""
    from bench.parts import train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    rc, out, err = _bench(["--device", "cpu", "--parts", "kernels,train", "--kernel-batch", "1", "--kernel-shapes",
                           "vit_s", "--kernel-ops", "masked_gather", "--repeats", "1", "--warmup", "0",
                           "--shards", str(synthetic_shards), "--out", str(tmp_path)], capsys)
    written = tmp_path / f"{sorted(p.name for p in tmp_path.glob('*-partial.json'))[0]}"
    assert rc == 130 and err == [
        f"bench/throughput.py: interrupted; the finished parts' numbers are in {written}; rerun the same command "
        "for all parts"]
    record = json.loads(written.read_text())
    assert {e["part"] for e in record["entries"]} == {"kernels"}
    assert "Interrupted during part train; it and the parts after it are missing." in record["notes"]
    assert not [p for p in tmp_path.glob("*.json") if not p.name.endswith("-partial.json")]  # no complete record


def test_bench_interrupted_before_any_part_finished_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    from bench.parts import kernels

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(kernels, "run", interrupted)
    rc, out, err = _bench(["--device", "cpu", "--parts", "kernels", "--out", str(tmp_path)], capsys)
    assert rc == 130 and err == ["bench/throughput.py: interrupted; no part had finished; nothing was written"]
    assert not list(tmp_path.glob("*.json"))


# ---- loaders: data.shards -----------------------------------------------------------------------------------

def test_loader_empty_manifest_names_the_fix(synthetic_shards, tmp_path):  # noqa: F811
    from amd_fast.data.shards import ShardError, open_shards

    m = json.loads((synthetic_shards / "train.manifest.json").read_text())
    m.update(shards=[], num_samples=0)
    (tmp_path / "train.manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError) as e:
        open_shards(tmp_path, "train")
    assert str(e.value) == (
        f"no shards listed for split 'train' in {tmp_path} (0 samples); rebuild it with `python -m amd_fast.shard` "
        "(its <split>.failures.jsonl says why videos failed) or point data.shards at another build")


def test_loader_manifest_of_another_split_is_read_but_named(synthetic_shards, caplog):  # noqa: F811
    """data.shards=.../val.manifest.json for a train run used to train on val without a word."""
    from amd_fast.data.shards import open_shards

    with caplog.at_level("WARNING", logger="amd_fast.data.shards"):
        s = open_shards(synthetic_shards / "val.manifest.json", "train")
    assert s.num_samples == 8
    assert (f"data.shards {synthetic_shards / 'val.manifest.json'} is the manifest of split 'val', read here as "
            "split 'train'") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="amd_fast.data.shards"):
        open_shards(synthetic_shards / "train.manifest.json", "train")
    assert "is the manifest of split" not in caplog.text


def test_verify_without_src_only_checks_and_never_builds(tmp_path, capsys):
    from amd_fast.shard.__main__ import main as shard_main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    assert shard_main(["--verify", "--out", str(folder)]) == 2  # what our --verify hints suggest, on a non-shard folder
    assert "no <split>.manifest.json there" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # nothing built there
