"""Bad input: missing / truncated shards and indexes, incomplete samples, undecodable videos,
codecs the chosen backend cannot decode. Each test damages a copy of the shared fixture."""
import io
import shutil
import tarfile

import pytest
import torch

from amd_fast.data import CodecError, DataConfig, ShardError, build_loader

BACKENDS = ["dali", "eager"]


def cfg_for(shards, backend, **kw):
    base = dict(shards=shards, split="val", backend=backend, device="cpu", batch_size=2, num_frames=8,
                sampling_rate=2, input_size=64, num_workers=0, dali_threads=1, prefetch=1, train=False)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture
def shard_copy(synthetic_shards, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(synthetic_shards, dst)
    return dst


def rewrite_tar(tar_path, edit):
    """Rewrite ``tar_path`` member by member through ``edit(name, data) -> data | None`` (None drops
    the member) and rebuild its DALI index with DALI's own wds2idx."""
    import wds2idx

    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if m.isfile()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m, data in members:
            data = edit(m.name, data)
            if data is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
    with wds2idx.IndexCreator(str(tar_path), str(tar_path.with_suffix(".idx")), verbose=False) as ic:
        ic.create_index()


def member_names(tar_path):
    with tarfile.open(tar_path) as tf:
        return sorted(tf.getnames())


def test_missing_shard_is_named(shard_copy):
    (shard_copy / "train-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"train-000001\.tar is missing"):
        build_loader(cfg_for(shard_copy, "eager", split="train"))


def test_truncated_shard_is_named(shard_copy):
    tar = shard_copy / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"train-000002\.tar is truncated"):
        build_loader(cfg_for(shard_copy, "dali", split="train"))


def test_missing_index_names_the_fix(shard_copy):
    (shard_copy / "val-000000.idx").unlink()
    with pytest.raises(ShardError, match="wds2idx"):
        build_loader(cfg_for(shard_copy, "dali"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_missing_video_or_label_are_skipped_and_counted(shard_copy, backend):
    tar = shard_copy / "val-000000.tar"
    keys = sorted({n.split(".", 1)[0] for n in member_names(tar)})
    drop = {f"{keys[1]}.webm", f"{keys[4]}.clipinfo", f"{keys[4]}.cls"}
    rewrite_tar(tar, lambda name, data: None if name in drop else data)

    loader = build_loader(cfg_for(shard_copy, backend))
    assert loader.bad_samples == {"sample missing its video or label": 2}
    batches = list(loader)
    assert len(batches) == 3 and all(b["video"].shape[0] == 2 for b in batches)

    with pytest.raises(ShardError, match=keys[1]):
        build_loader(cfg_for(shard_copy, backend, on_bad_sample="error"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_undecodable_video_is_skipped_and_counted_never_crashing_the_epoch(shard_copy, backend):
    tar = shard_copy / "val-000000.tar"
    bad_key = sorted({n.split(".", 1)[0] for n in member_names(tar)})[2]
    rewrite_tar(tar, lambda name, data: data[:64] + bytes(len(data) - 64) if name == f"{bad_key}.webm" else data)

    loader = build_loader(cfg_for(shard_copy, backend))
    batches = list(loader)
    assert sum(loader.bad_samples.values()) == 1
    clips = sum(b["video"].shape[0] for b in batches)
    # batches keep their size and count (static shapes, DDP ranks in step): eager replaces the
    # video by the next sample; DALI fails the batch the video is in and takes the next batch
    assert clips == 8 and len(batches) == len(loader) == 4
    assert all(torch.isfinite(b["video"]).all() for b in batches)
    assert loader.state_dict()["epoch"] == 1

    with pytest.raises(RuntimeError, match=bad_key):
        list(build_loader(cfg_for(shard_copy, backend, on_bad_sample="error")))


def test_h264_with_dali_on_cpu_names_the_fix_and_auto_takes_eager(synthetic_shards_h264, caplog):
    with pytest.raises(CodecError, match=r"--codec vp9.*data\.backend=eager"):
        build_loader(cfg_for(synthetic_shards_h264, "dali"))
    loader = build_loader(cfg_for(synthetic_shards_h264, "auto"))
    assert loader.backend == "eager"
    b = next(iter(loader))
    assert b["video"].shape == (2, 3, 8, 64, 64)


def test_auto_on_cpu_takes_the_eager_loader_and_says_why_dali_only_when_asked(synthetic_shards, caplog):
    with caplog.at_level("INFO", logger="amd_fast.data"):
        assert build_loader(cfg_for(synthetic_shards, "auto")).backend == "eager"
    assert "eager (auto): no CUDA device" in caplog.text and "data.backend=dali forces DALI" in caplog.text
    assert build_loader(cfg_for(synthetic_shards, "dali")).backend == "dali"


def test_codec_table_gpu_takes_h264_not_av1_cpu_takes_vp9_only():
    from amd_fast.data.backend import dali_codec_problem, normalize_codec

    assert dali_codec_problem({"h264": 5, "hevc": 1, "vp9": 2}, on_gpu=True) is None
    problem = dali_codec_problem({"h264": 239997, "av1": 3}, on_gpu=True)
    assert "3 of 240000 samples are av1" in problem and "--preset nvdec" in problem
    assert dali_codec_problem({"vp9": 3, "mjpeg": 1}, on_gpu=False) is None
    assert "h264" in dali_codec_problem({normalize_codec("avc1"): 1}, on_gpu=False)


def test_eager_batches_stay_full_when_several_videos_in_a_row_fail(shard_copy):
    """Five undecodable videos in a row (more than a fixed retry count covers): every batch still has
    batch_size videos, each failure is counted, and the replacements are real videos."""
    tar = shard_copy / "val-000000.tar"
    keys = sorted({n.split(".", 1)[0] for n in member_names(tar)})[:5]
    rewrite_tar(tar, lambda name, data: data[:64] + bytes(len(data) - 64)
                if name.split(".", 1)[0] in keys and name.endswith(".webm") else data)
    loader = build_loader(cfg_for(shard_copy, "eager", batch_size=4))
    batches = list(loader)
    assert [b["video"].shape[0] for b in batches] == [4, 4] and len(batches) == len(loader)
    assert [b["label"].shape[0] for b in batches] == [4, 4]
    assert sum(loader.bad_samples.values()) >= 5


def test_eager_stops_cleanly_when_every_video_fails(shard_copy):
    from amd_fast.data.stream import BrokenShardsError

    tar = shard_copy / "val-000000.tar"
    rewrite_tar(tar, lambda name, data: bytes(len(data)) if name.endswith(".webm") else data)
    with pytest.raises(BrokenShardsError, match="samples in a row failed to load.*--verify"):
        list(build_loader(cfg_for(shard_copy, "eager", batch_size=4)))


def test_one_undecodable_codec_deep_in_a_split_is_found_from_the_counts(synthetic_shards, tmp_path):
    """The decision reads every sample's codec (the manifest's counts), not the first member of each tar."""
    import json

    from amd_fast.shard import read_manifest

    m = read_manifest(synthetic_shards / "val.manifest.json")
    assert m["codecs"] == {"vp9": 8} and m["shards"][0]["codecs"] == {"vp9": 8}
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    path = shards / "val.manifest.json"
    doctored = json.loads(path.read_text())
    doctored["codecs"] = {"vp9": 7, "h264": 1}  # as if one sample in the middle were H.264
    path.write_text(json.dumps(doctored))
    with pytest.raises(CodecError, match=r"1 of 8 samples are h264.*--codec vp9"):
        build_loader(cfg_for(shards, "dali"))


def test_old_manifest_without_counts_reads_every_json_and_verify_records_them(synthetic_shards, tmp_path, caplog):
    import json

    from amd_fast.data.backend import shard_codecs
    from amd_fast.data.shards import open_shards
    from amd_fast.shard import verify_shards

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    path = shards / "val.manifest.json"
    old = json.loads(path.read_text())
    del old["codecs"]
    for s in old["shards"]:
        del s["codecs"]
    path.write_text(json.dumps(old))
    with caplog.at_level("WARNING"):
        assert shard_codecs(open_shards(shards, "val")) == {"vp9": 8}
    assert "reading every sample's json" in caplog.text
    report = verify_shards(path)
    assert report.ok and "recorded samples by codec" in report.notes[0]
    assert json.loads(path.read_text())["codecs"] == {"vp9": 8}
