"""Shards in Google Cloud Storage (issue 18): ``data.shards=gs://bucket/prefix`` against a real GCS endpoint on
127.0.0.1 (gcp-storage-emulator, in its own process), reached the way gcsfs reaches any emulator: the
``STORAGE_EMULATOR_HOST`` variable (no credentials needed there). gcsfs's experimental bucket-type probe speaks
gRPC, which the emulator does not (each probe waits 60 s): ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` turns it off.
gcsfs reads that variable when it is imported, so it is set here, at collection, before anything imports gcsfs."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from amd_fast.data import build_loader
from amd_fast.data.shards import ShardError, open_shards
from tests.s3_endpoint import free_port, wait_until_serving
from tests.test_remote_shards import assert_flaky_epochs_lose_nothing, assert_same_batches, cfg_for, indices_and_videos
# fixtures: fresh_remote is autouse (each test starts with fresh remote settings); proxy_in_front puts the FaultProxy
# in front of the emulator
from tests.test_remote_shards import fresh_remote, proxy_in_front  # noqa: F401

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # before gcsfs is imported (see the module doc)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gcsfs") is None or importlib.util.find_spec("gcp_storage_emulator") is None,
    reason="gcsfs and gcp-storage-emulator are part of the test extra")


@pytest.fixture(scope="module")
def gcs_bucket(synthetic_shards):
    """gs://shards/synthetic: the shared synthetic shards uploaded to a fresh emulator."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port",
                             str(port), "--in-memory", "--default-bucket", "shards"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        wait_until_serving(f"{url}/storage/v1/b", proc, "gcp-storage-emulator")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        import gcsfs

        gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True).put(f"{synthetic_shards}/", "shards/synthetic",
                                                                        recursive=True)
        yield "gs://shards/synthetic"
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        proc.terminate()
        proc.wait()


def test_the_eager_loader_from_gcs_gives_the_local_batches(gcs_bucket, synthetic_shards):
    far, near = open_shards(gcs_bucket, "train"), open_shards(synthetic_shards, "train")
    assert [(s.key, s.info) for s in far.samples] == [(s.key, s.info) for s in near.samples]
    assert all(t.startswith(gcs_bucket + "/train-") for t in far.tars)
    got = indices_and_videos(build_loader(cfg_for(gcs_bucket)))
    assert len(got) == 6
    assert_same_batches(got, indices_and_videos(build_loader(cfg_for(synthetic_shards))))


def test_a_missing_prefix_is_one_line_naming_the_url(gcs_bucket):
    with pytest.raises(ShardError) as e:
        open_shards("gs://shards/nothere", "train")
    assert "gs://shards/nothere/train.manifest.json does not exist" in str(e.value) and "\n" not in str(e.value)


def test_an_epoch_through_a_flaky_proxy_from_gcs_delivers_every_sample_exactly_once(proxy_in_front, gcs_bucket,
                                                                                   synthetic_shards):
    # gcsfs retries on its own; amd_fast turns that off so that every fault is retried once, here, and counted
    proxy = proxy_in_front("STORAGE_EMULATOR_HOST", fail_rate=0.08, drop_rate=0.05, seed=5)
    assert_flaky_epochs_lose_nothing(gcs_bucket, synthetic_shards, proxy, num_workers=0)


def test_a_forbidden_bucket_on_gcs_is_one_line_naming_the_url_and_the_credentials(proxy_in_front, gcs_bucket):
    proxy_in_front("STORAGE_EMULATOR_HOST", forbid=["/storage/v1/b/shards", "/download/storage/v1/b/shards"])
    with pytest.raises(ShardError) as e:
        open_shards(gcs_bucket, "train")
    msg = str(e.value)
    assert f"{gcs_bucket}/train.manifest.json" in msg and "GOOGLE_APPLICATION_CREDENTIALS" in msg and "\n" not in msg
