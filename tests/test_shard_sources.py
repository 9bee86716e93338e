"""Dataset layouts -> records, on tiny trees made here (never committed binaries)."""
import json
import tarfile

import pytest

from amd_fast.shard import ShardOptions, build_shards, read_manifest
from amd_fast.shard.build import load_index
from amd_fast.shard.sources import LayoutError, UnknownLabelError
from tests.shard_fixtures import make_video


def _opts(**kw):
    return ShardOptions(workers=0, progress=False, **kw).resolved()


def _cvdf_tree(root, videos=True):
    """K400 CVDF layout: 3 classes, 4 train and 2 val videos."""
    rows = {"train": [("playing drums", "abc-DEF_123", 0, 10), ("yoga", "zzz", 5, 15),
                      ("abseiling", "q.q", 1, 11), ("yoga", "yyy", 0, 10)],
            "val": [("abseiling", "vvv", 3, 13), ("playing drums", "www", 0, 10)]}
    (root / "annotations").mkdir(parents=True)
    for split, rs in rows.items():
        lines = ["label,youtube_id,time_start,time_end,split"]
        for i, (lab, yt, t0, t1) in enumerate(rs):
            lines.append(f'"{lab}",{yt},{t0},{t1},{split}')
            if videos:
                make_video(root / split / f"{yt}_{t0:06d}_{t1:06d}.mp4", seed=i)
        (root / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_kinetics_cvdf_classes_sorted_and_paths(tmp_path):
    root = _cvdf_tree(tmp_path / "k400", videos=False)
    idx = load_index(_opts(src="kinetics400", root=root))
    assert idx.classes == ["abseiling", "playing drums", "yoga"]
    train = idx.splits["train"]
    assert [r.label for r in train] == [1, 2, 0, 2]
    assert train[0].path == root / "train" / "abc-DEF_123_000000_000010.mp4"
    assert len(idx.splits["val"]) == 2


def test_kinetics_cvdf_build_copy_mode(tmp_path):
    root = _cvdf_tree(tmp_path / "k400")
    out = tmp_path / "shards"
    manifests = build_shards(ShardOptions(src="kinetics400", root=root, out=out, samples_per_shard=3,
                                          workers=0, progress=False))
    m = read_manifest(manifests["train"])
    assert m["classes"] == ["abseiling", "playing drums", "yoga"]
    assert m["num_samples"] == 4 and m["num_failures"] == 0 and len(m["shards"]) == 2
    assert m["options"]["codec"] == "copy"
    with tarfile.open(out / m["shards"][0]["tar"]) as tf:
        names = tf.getnames()
    assert all("." not in n.split(".", 1)[0] for n in names)  # keys carry no dot ("q.q" became q_q)
    src = {n.split(".", 1)[1] for n in names}
    assert src == {"mp4", "cls", "json", "clipinfo"}
    # copy mode keeps the bytes exactly
    with tarfile.open(out / m["shards"][0]["tar"]) as tf:
        first = [n for n in tf.getnames() if n.endswith(".json")][0]
        meta = json.loads(tf.extractfile(first).read())
        video = tf.extractfile(first.replace(".json", ".mp4")).read()
    assert video == (root / meta["source"]).read_bytes()
    assert meta["frames"] == 8 and meta["codec"] == "h264" and (meta["width"], meta["height"]) == (32, 32)


def test_kinetics_list_layout_numeric_and_named(tmp_path):
    root = tmp_path / "lists"
    for i in range(3):
        make_video(root / "videos" / f"clip {i}.mp4", seed=i)
    (root / "train.csv").write_text("videos/clip 0.mp4 2\nvideos/clip 1.mp4 0\n")
    (root / "val.csv").write_text(f"{root}/videos/clip 2.mp4 1\n")
    idx = load_index(_opts(src="kinetics400", root=root))
    assert idx.classes == ["0", "1", "2"]
    assert [r.label for r in idx.splits["train"]] == [2, 0]
    assert idx.splits["val"][0].path == root / "videos" / "clip 2.mp4"
    (root / "classes.txt").write_text("a\nb\nc\n")
    assert load_index(_opts(src="kinetics400", root=root)).classes == ["a", "b", "c"]
    (root / "train.csv").write_text("videos/clip 0.mp4 7\n")
    with pytest.raises(UnknownLabelError, match="7"):
        load_index(_opts(src="kinetics400", root=root))


def test_missing_root_and_annotations_name_the_layout(tmp_path):
    with pytest.raises(LayoutError, match="annotations"):
        load_index(_opts(src="kinetics400", root=tmp_path / "nope"))
    root = _cvdf_tree(tmp_path / "k400", videos=False)
    (root / "annotations" / "val.csv").unlink()
    with pytest.raises(LayoutError, match=r"val\.csv"):
        load_index(_opts(src="kinetics400", root=root))
    for src, hint in [("ssv2", "labels.json"), ("ucf101", "classInd"), ("hmdb51", "testTrainMulti")]:
        with pytest.raises(LayoutError, match=hint):
            load_index(_opts(src=src, root=tmp_path))


def test_unknown_label_is_named(tmp_path):
    root = _cvdf_tree(tmp_path / "k400", videos=False)
    (root / "annotations" / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nsurfing,x,0,10,val\n")
    idx = load_index(_opts(src="kinetics400", root=root))  # union of annotation files: surfing is a class
    assert "surfing" in idx.classes
    classes = tmp_path / "classes.txt"
    classes.write_text("abseiling\nplaying drums\nyoga\n")
    with pytest.raises(UnknownLabelError, match="surfing"):
        load_index(_opts(src="kinetics400", root=root, classes_file=classes))


def test_ssv2_layout(tmp_path):
    root = tmp_path / "ssv2"
    root.mkdir()
    labels = {"Pushing something from left to right": "1", "Holding something": "0"}
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels))
    train = [{"id": "11", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
             {"id": "12", "label": "pushing", "template": "Pushing [something] from left to right", "placeholders": []}]
    val = [{"id": "13", "label": "x", "template": "Holding [something]", "placeholders": []}]
    (root / "something-something-v2-train.json").write_text(json.dumps(train))
    (root / "something-something-v2-validation.json").write_text(json.dumps(val))
    for i in (11, 12, 13):
        make_video(root / "20bn-something-something-v2" / f"{i}.webm", codec="vp9", seed=i)
    idx = load_index(_opts(src="ssv2", root=root))
    assert idx.classes == ["Holding something", "Pushing something from left to right"]
    assert [r.label for r in idx.splits["train"]] == [0, 1]
    out = tmp_path / "out"
    m = read_manifest(build_shards(ShardOptions(src="ssv2", root=root, out=out, workers=0, progress=False))["val"])
    assert m["num_samples"] == 1
    with tarfile.open(out / m["shards"][0]["tar"]) as tf:
        assert any(n.endswith(".webm") for n in tf.getnames())
    bad = train + [{"id": "14", "label": "x", "template": "Dancing [something]", "placeholders": []}]
    (root / "something-something-v2-train.json").write_text(json.dumps(bad))
    with pytest.raises(UnknownLabelError, match="Dancing something"):
        load_index(_opts(src="ssv2", root=root))


def test_ucf101_layout(tmp_path):
    root = tmp_path / "ucf"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 2\nApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    idx = load_index(_opts(src="ucf101", root=root))
    assert idx.classes == ["ApplyEyeMakeup", "Archery"]
    assert [r.label for r in idx.splits["train"]] == [1, 0]
    assert idx.splits["test"][0].label == 1
    assert idx.splits["test"][0].path == root / "Archery" / "v_Archery_g01_c01.avi"
    with pytest.raises(LayoutError, match="trainlist02"):
        load_index(_opts(src="ucf101", root=root, fold=2))


def test_hmdb51_layout_fold(tmp_path):
    root = tmp_path / "hmdb"
    s = root / "testTrainMulti_7030_splits"
    s.mkdir(parents=True)
    (s / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\nw3.avi 0\n")
    (s / "clap_test_split1.txt").write_text("c1.avi 2\nc2.avi 1\n")
    (s / "clap_test_split2.txt").write_text("c1.avi 1\n")
    idx = load_index(_opts(src="hmdb51", root=root))
    assert idx.classes == ["clap", "wave"]
    assert sorted((r.path.name, r.label) for r in idx.splits["train"]) == [("c2.avi", 0), ("w1.avi", 1)]
    assert sorted(r.path.name for r in idx.splits["test"]) == ["c1.avi", "w2.avi"]
    idx2 = load_index(_opts(src="hmdb51", root=root, fold=2))
    assert [r.path.name for r in idx2.splits["train"]] == ["c1.avi"] and idx2.classes == ["clap"]


def test_csv_and_folder_layouts(tmp_path):
    vids = tmp_path / "v"
    make_video(vids / "dog" / "a.mp4")
    make_video(vids / "cat" / "b.avi", codec="mjpeg")
    (vids / "cat" / "notes.txt").write_text("not a video")
    lst = tmp_path / "list.csv"
    lst.write_text("path,label,split\nv/dog/a.mp4,dog,train\nv/cat/b.avi,cat,val\n")
    idx = load_index(_opts(src="csv", list_file=lst, splits=("train", "val")))
    assert idx.classes == ["cat", "dog"]
    assert [r.label for r in idx.splits["train"]] == [1] and [r.label for r in idx.splits["val"]] == [0]
    fidx = load_index(_opts(src="folder", root=vids))
    assert fidx.classes == ["cat", "dog"]
    assert sorted(r.path.name for r in fidx.splits["train"]) == ["a.mp4", "b.avi"]
    out = tmp_path / "out"
    m = read_manifest(build_shards(ShardOptions(src="folder", root=vids, out=out, codec="vp9", short_side=16,
                                                gop=4, workers=0, progress=False))["train"])
    assert m["num_samples"] == 2 and m["options"]["short_side"] == 16
    with pytest.raises(LayoutError, match="path,label"):
        bad = tmp_path / "bad.csv"
        bad.write_text("file,class\nx,y\n")
        load_index(_opts(src="csv", list_file=bad))
