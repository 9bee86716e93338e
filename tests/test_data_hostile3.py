"""Hostile inputs to the loaders, as a new user produces them: a folder mixing the tars of two shard builds,
an index that belongs to another tar, an impossible clip record, more workers than cores, an empty folder,
a tar cut mid-sample, and the loader-speed CLI's answers to them (one line, exit 2)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amd_fast.data import ShardError, build_loader, decoders
from amd_fast.data.config import usable_cores
from amd_fast.data.shards import open_shards
from amd_fast.data.stream import BadSampleError
from amd_fast.shard.format import ClipInfo
from tests.test_data_bad_input import BACKENDS, cfg_for, member_names, rewrite_tar

ROOT = Path(__file__).resolve().parent.parent


def _build(out: Path, **kw) -> Path:
    from amd_fast.shard import ShardOptions, build_shards

    build_shards(ShardOptions(src="synthetic", out=out, splits=("train",), samples_per_shard=9, synthetic_count=12,
                              synthetic_frames=16, gop=8, seed=1, workers=0, progress=False, **kw))
    return out


@pytest.fixture(scope="module")
def other_builds(tmp_path_factory):
    """Two more builds beside the shared fixture (VP9, 80 px, 4 classes): one with 8 classes (class 1 is
    move_045deg there, move_090deg in the fixture), one in MJPEG at 48 px with the fixture's classes."""
    root = tmp_path_factory.mktemp("other_builds")
    return {"classes8": _build(root / "classes8", codec="vp9", synthetic_classes=8, synthetic_size=80),
            "mjpeg48": _build(root / "mjpeg48", codec="mjpeg", synthetic_size=48)}


def mixed_folder(tmp_path, fixture: Path, other: Path, with_plan: bool = False) -> Path:
    """The fixture's three train tars and one tar of ``other`` (as train-000003), no manifest."""
    d = tmp_path / "mixed"
    d.mkdir()
    for i in range(3):
        for ext in ("tar", "idx"):
            shutil.copy(fixture / f"train-00000{i}.{ext}", d)
    for ext in ("tar", "idx"):
        shutil.copy(other / f"train-000000.{ext}", d / f"train-000003.{ext}")
    if with_plan:
        shutil.copy(fixture / "train.plan.json", d)
    return d


# ---- one folder, two builds ------------------------------------------------------------------------------------


def test_one_folder_with_two_builds_class_lists_is_refused_naming_both_tars(synthetic_shards, other_builds, tmp_path):
    d = mixed_folder(tmp_path, synthetic_shards, other_builds["classes8"])
    with pytest.raises(ShardError, match=r"train-000000\.tar and .*train-000003\.tar come from different builds: "
                                         r"class 1 is 'move_090deg' in the first and 'move_045deg' in the second "
                                         r"\(different class lists\).*manifest"):
        build_loader(cfg_for(d, "eager", split="train"))


@pytest.mark.parametrize("with_plan", [False, True])
def test_one_folder_with_two_builds_options_is_refused(synthetic_shards, other_builds, tmp_path, with_plan):
    """Same class list, other --codec and frame size. Without a plan: both tars are uniform (every sample one
    codec and short side) and differ. With the fixture's plan.json beside them: the foreign tar is not the
    plan's codec."""
    d = mixed_folder(tmp_path, synthetic_shards, other_builds["mjpeg48"], with_plan)
    if with_plan:
        what = r"train-000003\.tar was not written by the build in .*train\.plan\.json: its samples are mjpeg, " \
               r"the build's --codec is vp9"
    else:
        what = r"train-000000\.tar and .*train-000003\.tar come from different builds: every sample of the first " \
               r"is vp9 with short side 80, of the second mjpeg with short side 48"
    with pytest.raises(ShardError, match=what):
        open_shards(d, "train")


def test_a_manifestless_folder_of_one_build_loads_and_its_jsons_are_read_once(synthetic_shards, tmp_path, caplog):
    d = tmp_path / "one_build"
    shutil.copytree(synthetic_shards, d)
    for m in d.glob("*.manifest.json"):
        m.unlink()
    shards = open_shards(d, "train")
    assert shards.codecs == {"vp9": 24} and shards.num_samples == 24
    with caplog.at_level("WARNING"):
        loader = build_loader(cfg_for(d, "dali", split="train", batch_size=4))
    assert loader.backend == "dali"  # the codec check's counts came from open_shards' scan ...
    assert "reading every sample's json" not in caplog.text  # ... not from a second pass over the tars
    # train and val tars of one build, listed explicitly: one class list, nothing to refuse
    both = open_shards(sorted(str(t) for t in d.glob("*.tar")))
    assert both.num_samples == 32


# ---- an index that is not its tar's, an impossible clip record ----------------------------------------------


@pytest.fixture
def shard_copy(synthetic_shards, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(synthetic_shards, dst)
    return dst


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("donor,victim", [("train-000000", "train-000001"), ("train-000001", "train-000000")])
def test_an_index_of_another_tar_is_refused_when_the_loader_is_built(shard_copy, backend, donor, victim):
    """Smaller tar's index on a bigger tar (every member 'inside' the tar: once NaN / ZeroDivisionError deep in a
    worker) and the other way round (once reported as a truncated tar)."""
    shutil.copy(shard_copy / f"{donor}.idx", shard_copy / f"{victim}.idx")
    with pytest.raises(ShardError, match=rf"index .*{victim}\.idx does not match shard .*{victim}\.tar \(another tar's index.*"
                                         rf"wds2idx.*python -m amd_fast\.shard --verify --out {shard_copy}"):
        build_loader(cfg_for(shard_copy, backend, split="train"))


def test_a_tar_with_long_member_names_passes_the_index_check(synthetic_shards, tmp_path):
    """Other tools' tars: names over 100 characters live in a pax header, the member's own header keeps a
    truncated name; the check must accept it (and the samples load)."""
    import io
    import tarfile

    import wds2idx

    out = tmp_path / "val-000000.tar"
    with tarfile.open(synthetic_shards / "val-000000.tar") as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            info = tarfile.TarInfo("videos_" + "x" * 100 + "/" + m.name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with wds2idx.IndexCreator(str(out), str(out.with_suffix(".idx")), verbose=False) as ic:
        ic.create_index()
    assert open_shards([out]).num_samples == 8
    assert len(list(build_loader(cfg_for([str(out)], "eager")))) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_impossible_clip_record_is_a_bad_sample_naming_the_tar_and_verify(shard_copy, backend, caplog):
    """A clip record claiming 0 frames (damage the header check at start-up cannot see: a middle sample) was
    planned and decoded as if valid; now the sample is counted and replaced, and the reason names --verify."""
    tar = shard_copy / "val-000000.tar"
    key = sorted({n.split(".", 1)[0] for n in member_names(tar)})[3]

    def zero_frames(name, data):
        if name != f"{key}.clipinfo":
            return data
        info = ClipInfo.unpack(data)
        return info._replace(frames=0).pack()

    rewrite_tar(tar, zero_frames)
    with caplog.at_level("WARNING"):
        loader = build_loader(cfg_for(shard_copy, backend))
        batches = list(loader)
    assert sum(loader.bad_samples.values()) == 1 and len(batches) == len(loader) == 4
    assert all(b["video"].shape[0] == 2 for b in batches)
    assert f"{tar}:{key}" in caplog.text and "0 frames" in caplog.text and "--verify" in caplog.text
    with pytest.raises(BadSampleError, match=rf"{key}.*0 frames.*python -m amd_fast\.shard --verify"):
        list(build_loader(cfg_for(shard_copy, backend, on_bad_sample="error")))


def test_clip_records_are_checked_field_by_field(shard_copy):
    from amd_fast.data.shards import read_clip_info

    s = open_shards(shard_copy, "val").samples[0]
    good = read_clip_info(s)
    assert good.frames == 32 and (good.width, good.height) == (80, 80) and good.fps_milli > 0
    raw = bytearray((shard_copy / "val-000000.tar").read_bytes())
    for field, value in [("width", 0), ("height", -80), ("fps_milli", 0), ("label", -1), ("width", 1 << 20)]:
        bad = good._replace(**{field: value}).pack()
        tar = shard_copy / "val-000000.tar"
        tar.write_bytes(bytes(raw[:s.info[0]]) + bad + bytes(raw[s.info[0] + len(bad):]))
        with pytest.raises(ShardError, match=r"impossible clip record.*--verify"):
            read_clip_info(s)


# ---- more workers than cores --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,knob", [("eager", "num_workers"), ("dali", "dali_pipelines")])
def test_workers_or_pipelines_far_above_the_cores_warn_naming_the_core_count(synthetic_shards, caplog, backend, knob,
                                                                            monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = usable_cores()
    with caplog.at_level("WARNING", logger="amd_fast.data"):
        build_loader(cfg_for(synthetic_shards, backend, **{knob: 2 * cores + 1}))
    assert f"data.{knob}={2 * cores + 1} is more than twice the {cores} usable CPU cores" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="amd_fast.data"):
        build_loader(cfg_for(synthetic_shards, backend, **{knob: 2 * cores}))
        build_loader(cfg_for(synthetic_shards, backend, **{knob: "auto" if knob == "dali_pipelines" else 0}))
    assert "usable CPU cores" not in caplog.text


def test_ranks_on_one_node_share_the_cores(synthetic_shards, caplog, monkeypatch):
    cores = usable_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # one core per rank
    with caplog.at_level("WARNING", logger="amd_fast.data"):
        build_loader(cfg_for(synthetic_shards, "eager", num_workers=3))
    assert f"shared by {cores} ranks (1 each)" in caplog.text


# ---- what a new user tries first ----------------------------------------------------------------------------


def test_an_empty_folder_and_a_tar_cut_mid_sample_are_named(shard_copy, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"empty has neither train\.manifest\.json nor train-\*\.tar"):
        build_loader(cfg_for(tmp_path / "empty", "eager", split="train"))
    s = open_shards(shard_copy, "val").samples[3]
    tar = shard_copy / "val-000000.tar"
    tar.write_bytes(tar.read_bytes()[:s.video[0] + s.video[1] // 2])  # inside the 4th sample's video
    with pytest.raises(ShardError, match=r"val-000000\.tar is truncated"):
        build_loader(cfg_for(shard_copy, "eager"))


def _loader_speed(*args):
    return subprocess.run([sys.executable, "-m", "amd_fast.data.loader_speed", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_loader_speed_cli_answers_bad_input_in_one_line(tmp_path, synthetic_shards):
    (tmp_path / "empty").mkdir()
    r = _loader_speed("--shards", str(tmp_path / "empty"), "--batches", "1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "has neither train.manifest.json" in r.stderr and "Traceback" not in r.stderr
    problem = decoders.decoder_problem("torchcodec")
    if problem is None or problem[0] != decoders.FFMPEG_MISSING:
        pytest.skip("the real FFmpeg-missing refusal needs torchcodec without FFmpeg's libraries (simulated in "
                    "test_data_decoders.py)")
    r = _loader_speed("--shards", str(synthetic_shards), "--split", "val", "--backend", "eager", "--eager-decoder",
                      "torchcodec", "--num-workers", "0", "--batches", "1", "--warmup", "0")
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "FFmpeg shared libraries missing" in errors[0] and "apt-get install ffmpeg" in errors[0]
