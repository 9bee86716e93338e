"""--out as an object-storage URL, against a real local S3 endpoint (moto's server, tests/s3_endpoint.py): each
tar and index uploaded whole, the manifest last, the same bytes as a local folder, resume from what the bucket
holds, and the bucket lease refusing a second build. The local distributor and the Ray one (a local cluster)."""
from __future__ import annotations

import json
import tempfile

import pytest

from amd_fast.shard import ShardOptions, build_shards_report
from amd_fast.shard.lock import ShardLockError
from amd_fast.shard.storage import stage_dir_for
from tests.test_shard_ray import ray_tmp  # noqa: F401  (fixture: a private Ray temp dir, torn down)

pytest.importorskip("s3fs", reason="s3fs is part of the test extra")


def synthetic(out, **kw) -> ShardOptions:
    base = dict(src="synthetic", out=out, splits=("train",), synthetic_count=12, synthetic_frames=8,
                synthetic_size=32, samples_per_shard=3, gop=4, workers=0, progress=False)
    base.update(kw)
    return ShardOptions(**base)


def bucket_files(endpoint, bucket: str, prefix: str) -> dict:
    c = endpoint.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    return {k.rsplit("/", 1)[1]: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture(autouse=True)
def private_staging(tmp_path, monkeypatch):
    """Staging folders (under the temp dir) go to the test's own folder, removed with it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def local_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    build_shards_report(synthetic(out))
    return out


def assert_bucket_equals_folder(files: dict, folder) -> None:
    shards = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".tar", ".idx")}
    assert {k: v for k, v in files.items() if k.endswith((".tar", ".idx"))} == shards
    for name in ("train.manifest.json", "train.plan.json", "train.progress.jsonl", "train.failures.jsonl"):
        assert name in files, name
    assert "train.lock" not in files  # the lease is removed when the build ends
    a, b = json.loads(files["train.manifest.json"]), json.loads((folder / "train.manifest.json").read_text())
    a.pop("created"), b.pop("created")
    assert a == b


def test_local_distributor_to_s3_resume_and_lease(s3_env, local_folder):
    bucket = s3_env.make_bucket()
    url = f"s3://{bucket}/k/synthetic"
    rep = build_shards_report(synthetic(url))
    assert str(rep.manifests["train"]) == f"{url}/train.manifest.json"
    assert_bucket_equals_folder(bucket_files(s3_env, bucket, "k/synthetic"), local_folder)
    assert not list(stage_dir_for(url).glob("*.tar"))  # staged tars are deleted once uploaded

    # Resume reads the bucket, not the staging folder: wipe the stage, lose one shard upstream, rerun.
    for p in stage_dir_for(url).iterdir():
        p.unlink()
    s3_env.client().delete_object(Bucket=bucket, Key="k/synthetic/train-000002.tar")
    again = build_shards_report(synthetic(url)).splits["train"]
    assert (again.shards_kept, again.encoded) == (3, 3)
    assert_bucket_equals_folder(bucket_files(s3_env, bucket, "k/synthetic"), local_folder)

    # A fresh lease of another run (heartbeat now) refuses the build; the bucket is untouched.
    s3_env.client().put_object(Bucket=bucket, Key="k/synthetic/train.lock", Body=json.dumps(
        {"pid": 1, "host": "elsewhere", "token": "other", "heartbeat": __import__("time").time(),
         "heartbeat_utc": "now"}).encode())
    with pytest.raises(ShardLockError, match="elsewhere"):
        build_shards_report(synthetic(url, overwrite=True))
    files = bucket_files(s3_env, bucket, "k/synthetic")
    assert "train-000000.tar" in files and "train.manifest.json" in files


def test_ray_distributor_to_s3(s3_env, local_folder, ray_tmp):  # noqa: F811
    bucket = s3_env.make_bucket()
    url = f"s3://{bucket}/ray"
    build_shards_report(synthetic(url, distributor="ray", workers=2))
    assert_bucket_equals_folder(bucket_files(s3_env, bucket, "ray"), local_folder)
