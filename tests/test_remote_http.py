"""Shards over plain HTTP(S) (issue 18): ``data.shards=https://host/prefix`` read by byte ranges from a real HTTP
server on 127.0.0.1 (``tests/http_files``: Python's file server with ``Range`` support, in its own process).
HTTP has no object listing: the server's HTML index is what fsspec lists, and it gives no sizes."""
from __future__ import annotations

import shutil

import pytest

from amd_fast.data import build_loader
from amd_fast.data.shards import ShardError, open_shards
from tests import http_files
from tests.fault_proxy import FaultProxy
from tests.test_remote_shards import assert_flaky_epochs_lose_nothing, assert_same_batches, cfg_for, indices_and_videos
from tests.test_remote_shards import fresh_remote  # noqa: F401 (autouse: each test starts with fresh remote settings)

pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp (test extra)")


@pytest.fixture(scope="module")
def http_root(tmp_path_factory, synthetic_shards):
    """A served folder: ``full/`` (the shard folder as built) and ``bare/`` (its tars and indexes, no manifest)."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(synthetic_shards, root / "full")
    (root / "bare").mkdir()
    for f in synthetic_shards.glob("train-*"):
        shutil.copy(f, root / "bare" / f.name)
    proc, url = http_files.start(root)
    yield url
    proc.terminate()
    proc.wait()


def test_the_eager_loader_over_http_gives_the_local_batches(http_root, synthetic_shards):
    far = indices_and_videos(build_loader(cfg_for(f"{http_root}/full")))
    assert len(far) == 6
    assert_same_batches(far, indices_and_videos(build_loader(cfg_for(synthetic_shards))))
    by_manifest = open_shards(f"{http_root}/full/train.manifest.json", "train")
    near = open_shards(synthetic_shards, "train")
    assert [(s.key, s.info) for s in by_manifest.samples] == [(s.key, s.info) for s in near.samples]
    assert all(t.startswith(f"{http_root}/full/train-") for t in by_manifest.tars)


def test_tars_without_a_manifest_are_found_in_the_servers_index(http_root, synthetic_shards):
    bare, near = open_shards(f"{http_root}/bare", "train"), open_shards(synthetic_shards, "train")
    assert [(s.key, s.info) for s in bare.samples] == [(s.key, s.info) for s in near.samples]


def test_a_missing_folder_is_one_line_naming_the_url(http_root):
    with pytest.raises(ShardError) as e:
        open_shards(f"{http_root}/nothere", "train")
    msg = str(e.value)
    assert f"{http_root}/nothere/train.manifest.json does not exist" in msg and "\n" not in msg
    assert "aws s3" not in msg  # the S3 hint is for S3 URLs only


def test_an_epoch_through_a_flaky_proxy_over_http_delivers_every_sample_exactly_once(http_root, synthetic_shards):
    # the S3 test's faults, on plain HTTP: 500s and bodies cut mid-way, retried by amd_fast, counted, none lost
    with FaultProxy(http_root, fail_rate=0.08, drop_rate=0.05, seed=5) as proxy:
        assert_flaky_epochs_lose_nothing(f"{proxy.url}/full", synthetic_shards, proxy, num_workers=0)


def test_a_forbidden_folder_over_http_is_one_line_naming_the_url(http_root):
    with FaultProxy(http_root, forbid=["/full"]) as proxy:
        with pytest.raises(ShardError) as e:
            open_shards(f"{proxy.url}/full", "train")
    msg = str(e.value)
    assert f"{proxy.url}/full/train.manifest.json" in msg and "denied" in msg and "\n" not in msg
