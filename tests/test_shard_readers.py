"""Synthetic shards read back by tarfile, stock webdataset and DALI (CPU), and checked for signal."""
import io
import json
import struct
import tarfile

import numpy as np
import pytest

from amd_fast.shard import read_manifest
from amd_fast.shard.synthetic import class_names, render_clip


def _shards(folder, split):
    m = read_manifest(folder / f"{split}.manifest.json")
    return m, [str(folder / s["tar"]) for s in m["shards"]], [str(folder / s["index"]) for s in m["shards"]]


def test_fixture_layout(synthetic_shards, synthetic_shards_h264):
    m, tars, _ = _shards(synthetic_shards, "train")
    assert (m["num_samples"], len(tars)) == (24, 3)
    assert read_manifest(synthetic_shards / "val.manifest.json")["num_samples"] == 8
    assert m["classes"] == class_names(4) and m["options"]["codec"] == "vp9"
    mh, tars_h, _ = _shards(synthetic_shards_h264, "train")
    assert mh["num_samples"] == 12 and len(tars_h) == 2
    with tarfile.open(tars_h[0]) as tf:
        assert any(n.endswith(".mp4") for n in tf.getnames())


def test_tarfile_members_agree(synthetic_shards):
    m, tars, _ = _shards(synthetic_shards, "train")
    keys = []
    for t in tars:
        with tarfile.open(t) as tf:
            names = tf.getnames()
            for n in names[::4]:
                key = n.split(".", 1)[0]
                keys.append(key)
                assert [f"{key}.{e}" for e in ("webm", "cls", "json", "clipinfo")] == names[names.index(n):names.index(n) + 4]
                meta = json.loads(tf.extractfile(f"{key}.json").read())
                assert int(tf.extractfile(f"{key}.cls").read()) == meta["label_index"]
                assert m["classes"][meta["label_index"]] == meta["label"]
                info = struct.unpack("<5i", tf.extractfile(f"{key}.clipinfo").read())
                assert info == (meta["label_index"], 32, 80, 80, 25000)
    assert len(set(keys)) == 24 and keys == sorted(keys)


def test_index_equals_dali_wds2idx(synthetic_shards, tmp_path):
    """Our on-the-fly index is byte-identical to what DALI's own wds2idx tool writes."""
    wds2idx = pytest.importorskip("wds2idx")
    _, tars, idxs = _shards(synthetic_shards, "train")
    for t, i in zip(tars, idxs):
        ref = tmp_path / "ref.idx"
        with wds2idx.IndexCreator(t, str(ref), verbose=False) as ic:
            ic.create_index()
        assert open(i).read() == ref.read_text()


def test_stock_webdataset_reads_shards(synthetic_shards):
    wds = pytest.importorskip("webdataset")
    _, tars, _ = _shards(synthetic_shards, "train")
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == 24
    s = samples[0]
    assert {"webm", "cls", "json", "clipinfo"} <= set(s)
    assert int(s["cls"]) == json.loads(s["json"])["label_index"]
    import av

    with av.open(io.BytesIO(s["webm"])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 32


def test_dali_reader_and_cpu_vp9_decode(synthetic_shards):
    """DALI's webdataset reader with our .idx files + CPU VP9 decode; frames match clipinfo."""
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    _, tars, idxs = _shards(synthetic_shards, "val")

    @dali.pipeline_def(batch_size=4, num_threads=1, device_id=None, seed=0)
    def pipe():
        video, info = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["webm", "clipinfo"],
                                            dtypes=[types.UINT8, types.INT32], name="reader")
        return fn.decoders.video(video, device="cpu"), info

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == 8
    seen = 0
    for _ in range(2):
        frames, info = p.run()
        for k in range(len(frames)):
            f, i = np.asarray(frames[k]), np.asarray(info[k])
            assert f.shape == (i[1], i[3], i[2], 3) == (32, 80, 80, 3)
            seen += 1
    assert seen == 8


def _direction(clip):
    """Angle (deg, 0=right, 90=up) of the foreground centroid's motion, background = temporal median."""
    x = clip.astype(np.float32)
    fg = np.abs(x - np.median(x, axis=0)).sum(-1)
    fg = fg > np.percentile(fg, 90, axis=(1, 2), keepdims=True)
    ys, xs = np.mgrid[0:clip.shape[1], 0:clip.shape[2]]
    cy = (fg * ys).sum((1, 2)) / fg.sum((1, 2))
    cx = (fg * xs).sum((1, 2)) / fg.sum((1, 2))
    k = len(clip) // 4
    dx, dy = cx[-k:].mean() - cx[:k].mean(), cy[-k:].mean() - cy[:k].mean()
    return np.degrees(np.arctan2(-dy, dx)) % 360


def test_synthetic_signal_and_determinism():
    a = render_clip("synthetic://train/3", 1, classes=4, frames=32, size=80, seed=7)
    assert np.array_equal(a, render_clip("synthetic://train/3", 1, classes=4, frames=32, size=80, seed=7))
    assert not np.array_equal(a, render_clip("synthetic://train/3", 1, classes=4, frames=32, size=80, seed=8))
    hits = 0
    for i in range(16):
        label = i % 4
        clip = render_clip(f"synthetic://train/{i}", label, classes=4, frames=32, size=80, seed=0)
        err = (_direction(clip) - 90 * label + 180) % 360 - 180
        hits += abs(err) < 30
    assert hits >= 14  # the label is recoverable from motion alone
