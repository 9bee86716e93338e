"""Shards in object storage (issue 18): a real S3 endpoint on 127.0.0.1 (moto's server, ``tests/s3_endpoint``)
with the fault-injecting proxy of ``tests/fault_proxy`` in front of it where a test needs latency or faults.

The shared synthetic VP9 shards are uploaded once; every test compares what the loaders read from the bucket
with what they read from the local copy."""
from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from amd_fast.data import DataConfig, build_loader, remote
from amd_fast.data.config import parse_bytes
from amd_fast.data.shards import open_shards, read_samples
from tests.fault_proxy import FaultProxy

pytest.importorskip("s3fs", reason="s3fs is part of the test extra")


@pytest.fixture(autouse=True)
def fresh_remote():
    remote.reset()  # each test's endpoint (direct or via its proxy) and settings
    yield
    remote.reset()


@pytest.fixture(scope="module")
def bucket_shards(s3_endpoint, synthetic_shards) -> str:
    return s3_endpoint.upload(synthetic_shards, f"s3://{s3_endpoint.make_bucket('shards')}/synthetic")


@pytest.fixture
def proxy_in_front(monkeypatch):
    """``proxy_in_front(env_var, **faults)``: a FaultProxy in front of the endpoint that ``env_var`` names, and
    ``env_var`` pointed at the proxy (AWS_ENDPOINT_URL for S3, STORAGE_EMULATOR_HOST for GCS)."""
    started = []

    def start(env_var: str, **faults) -> FaultProxy:
        p = FaultProxy(os.environ[env_var], **faults).start()
        started.append(p)
        monkeypatch.setenv(env_var, p.url)
        return p

    yield start
    for p in started:
        p.close()


@pytest.fixture
def proxy_env(s3_env, proxy_in_front):
    """Start a FaultProxy in front of the S3 endpoint: ``proxy_env(**faults)``."""
    return lambda **faults: proxy_in_front("AWS_ENDPOINT_URL", **faults)


def cfg_for(shards, **kw):
    base = dict(shards=shards, backend="eager", device="cpu", batch_size=4, num_frames=8, sampling_rate=2,
                input_size=64, num_workers=2, prefetch=2, seed=7, dali_threads=1)
    base.update(kw)
    return DataConfig(**base)


def indices_and_videos(loader, n=None):
    out = []
    for k, b in enumerate(loader):
        if n is not None and k >= n:
            break
        out.append((b["index"].tolist(), b["video"]))
    return out


def assert_same_batches(a, b):
    assert [i for i, _ in a] == [i for i, _ in b]
    for (_, va), (_, vb) in zip(a, b):
        assert torch.equal(va, vb)


def assert_flaky_epochs_lose_nothing(shards, synthetic_shards, proxy, **kw):
    """Two shuffled epochs from ``shards`` (read through ``proxy``) give the local batches, every sample exactly
    once, and every fault the proxy injected was retried once by amd_fast and counted."""
    kw = dict(train=True, shuffle=True, drop_last=False, **kw)
    remote.COUNTERS.take_epoch()
    loader = build_loader(cfg_for(shards, **kw))
    epochs = [indices_and_videos(loader) for _ in range(2)]  # deterministic draws: the same faults every run
    loader.close()  # the workers finish what they read ahead (the next epoch's first batches), counting its faults
    retried = remote.COUNTERS.take_epoch()
    local = build_loader(cfg_for(synthetic_shards, **kw))
    for far in epochs:
        assert_same_batches(far, indices_and_videos(local))
        assert sorted(i for idx, _ in far for i in idx) == list(range(24))
    assert proxy.counts["fail"] + proxy.counts["drop"] >= 1
    assert sum(retried.values()) == proxy.counts["fail"] + proxy.counts["drop"]
    assert "gave up after retries" not in retried and loader.bad_samples == {}


# ---- URLs, errors, settings (no endpoint) ----------------------------------------------------------------

def test_urls_are_printed_without_credentials_and_sorted_into_permanent_and_transient():
    assert remote.redact("https://user:secret@host/a/b.tar?X-Amz-Signature=abc") == "https://host/a/b.tar"
    assert remote.redact("s3://bucket/p/train-000000.tar") == "s3://bucket/p/train-000000.tar"
    assert remote.redact("/local/path") == "/local/path"
    assert remote.secrets_in("s3://k:s@bucket/p") and remote.secrets_in("https://h/p?token=1")
    assert remote.secrets_in("s3://bucket/p") is None and not remote.is_url("file:///tmp/x")
    assert remote.classify(FileNotFoundError("x"))[0] == "permanent"
    assert remote.classify(PermissionError("x"))[0] == "permanent"
    # a worker exiting mid-read: stop, neither retried nor counted
    assert remote.classify(RuntimeError("cannot schedule new futures after shutdown")) == ("permanent", "shutting down")
    assert remote.classify(TimeoutError())[0] == "transient"
    assert remote.classify(ConnectionResetError())[0] == "transient"
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("500MiB") == 500 << 20 and parse_bytes(123) == 123
    with pytest.raises(ValueError, match="credentials in a URL"):
        DataConfig(shards="s3://AKIA:secret@bucket/shards")
    with pytest.raises(ValueError, match="remote_concurrency"):
        DataConfig(remote_concurrency=0)


# ---- reading from the bucket --------------------------------------------------------------------------------

def test_open_shards_from_a_bucket_lists_what_the_local_folder_lists(s3_env, bucket_shards, synthetic_shards):
    far, near = open_shards(bucket_shards, "train"), open_shards(synthetic_shards, "train")
    assert far.num_samples == near.num_samples == 24 and far.manifest == near.manifest
    assert all(t.startswith(bucket_shards + "/train-") for t in far.tars)
    assert [(s.key, s.video, s.info) for s in far.samples] == [(s.key, s.video, s.info) for s in near.samples]
    got = read_samples(far.samples[:6], concurrency=3)
    assert got == read_samples(near.samples[:6])


def test_eager_loader_from_a_bucket_gives_the_local_batches(s3_env, bucket_shards, synthetic_shards):
    far = indices_and_videos(build_loader(cfg_for(bucket_shards)))
    near = indices_and_videos(build_loader(cfg_for(synthetic_shards)))
    assert len(far) == 6
    assert_same_batches(far, near)


def test_dali_planner_reads_a_bucket_like_local_disk(s3_env, bucket_shards, synthetic_shards):
    pytest.importorskip("nvidia.dali")
    kw = dict(backend="dali", split="val", num_workers=0, prefetch=1)
    assert_same_batches(indices_and_videos(build_loader(cfg_for(bucket_shards, **kw))),
                        indices_and_videos(build_loader(cfg_for(synthetic_shards, **kw))))


def test_an_epoch_through_a_flaky_proxy_delivers_every_sample_exactly_once(proxy_env, bucket_shards,
                                                                            synthetic_shards):
    # 5% of the sample reads answer 500 and 3% are cut mid-body; retried, counted, never lost or doubled
    proxy = proxy_env(fail_rate=0.05, drop_rate=0.03, seed=3)
    assert_flaky_epochs_lose_nothing(bucket_shards, synthetic_shards, proxy)


def test_sample_reads_are_presigned_gets_and_an_endpoint_that_refuses_them_is_read_through_s3fs(
        proxy_env, bucket_shards, synthetic_shards, caplog):
    near = indices_and_videos(build_loader(cfg_for(synthetic_shards, num_workers=0)))
    taking = proxy_env()
    remote.COUNTERS.take_epoch()
    loader = build_loader(cfg_for(bucket_shards, num_workers=0))  # checks the tars' member headers: ranged GETs too
    at_start = taking.counts["presigned"]
    assert_same_batches(indices_and_videos(loader), near)
    assert taking.counts["presigned"] - at_start == 24  # one presigned GET per sample
    refusing = proxy_env(refuse_presigned=True)  # an S3 service without query-string signatures
    remote.reset()  # a fresh client for the new endpoint
    with caplog.at_level(logging.INFO, logger="amd_fast.data.s3_presigned"):
        loader = build_loader(cfg_for(bucket_shards, num_workers=0))  # its header reads, at once: all refused
        at_start = refusing.counts["presigned"]
        assert_same_batches(indices_and_videos(loader), near)
    assert 1 <= at_start <= 24 and refusing.counts["presigned"] == at_start  # then none: read through s3fs
    assert sum("presigned GETs refused" in r.getMessage() for r in caplog.records) == 1
    assert remote.COUNTERS.take_epoch() == {}  # a refusal is not a fault


def test_presigned_gets_go_through_the_proxy_that_http_proxy_names_unless_no_proxy_exempts_the_host(
        s3_env, bucket_shards, synthetic_shards, monkeypatch):
    near = indices_and_videos(build_loader(cfg_for(synthetic_shards, num_workers=0)))
    host = s3_env.url.split("//", 1)[1].split(":")[0]
    with FaultProxy(s3_env.url) as forward:  # as a forward proxy: it takes absolute URLs too
        for no_proxy, through in (("", True), (host, False)):
            remote.reset()
            monkeypatch.setenv("HTTP_PROXY", forward.url)
            monkeypatch.setenv("NO_PROXY", no_proxy)
            before = forward.counts["presigned"]
            assert_same_batches(indices_and_videos(build_loader(cfg_for(bucket_shards, num_workers=0))), near)
            assert (forward.counts["presigned"] - before >= 24) is through


def test_a_server_that_ignores_range_still_gives_each_sample_its_own_bytes(proxy_env, bucket_shards, synthetic_shards):
    near = indices_and_videos(build_loader(cfg_for(synthetic_shards, num_workers=0)))
    whole = proxy_env(ignore_range=True)  # every GET answered 200 with the whole tar, no Content-Range
    assert_same_batches(indices_and_videos(build_loader(cfg_for(bucket_shards, num_workers=0))), near)
    assert whole.counts["presigned"] >= 24


def test_resume_from_a_bucket_after_a_kill_gives_the_local_batches(s3_env, bucket_shards, synthetic_shards):
    first = build_loader(cfg_for(bucket_shards))
    first.set_epoch(1)
    head = indices_and_videos(first, n=2)
    first.state.batch = 2  # what the trainer checkpoints after consuming two batches
    state = first.state_dict()
    del first  # killed: a new process starts from the checkpoint
    remote.reset()
    again = build_loader(cfg_for(bucket_shards))
    again.load_state_dict(state)
    tail = indices_and_videos(again)
    local = build_loader(cfg_for(synthetic_shards))
    local.set_epoch(1)
    assert_same_batches(head + tail, indices_and_videos(local))


# ---- faults ---------------------------------------------------------------------------------------------------

def test_a_stalled_read_times_out_and_is_retried(proxy_env, bucket_shards, synthetic_shards):
    proxy = proxy_env(stall_rate=0.3, stall_s=30, seed=1)
    remote.configure(timeout_s=1.0, retries=6, backoff_s=0.01)
    far = open_shards(bucket_shards, "val")
    # the first GET also makes the HTTP session and signs the URL: done before timing, so that on a loaded
    # machine only a stall, never that set-up, can run into the timeout
    read_samples(far.samples[:1])
    remote.COUNTERS.take_epoch()
    proxy.counts.clear()
    t0 = time.monotonic()
    got = read_samples(far.samples, concurrency=8)
    assert time.monotonic() - t0 < 20
    assert got == read_samples(open_shards(synthetic_shards, "val").samples)
    assert proxy.counts["stall"] >= 1 and remote.COUNTERS.take_epoch().get("timeout", 0) == proxy.counts["stall"]


def test_a_sample_unreadable_after_its_retries_follows_on_bad_sample(proxy_env, bucket_shards):
    proxy = proxy_env()
    remote.configure(backoff_s=0.01)
    kw = dict(split="val", train=False, num_workers=0, batch_size=8, remote_retries=2)
    loader = build_loader(cfg_for(bucket_shards, **kw))
    strict = build_loader(cfg_for(bucket_shards, on_bad_sample="error", **kw))
    proxy.fail_rate = 1.0  # from now on every sample read answers 500
    with pytest.raises(Exception, match="samples in a row failed"):
        list(loader)  # skip policy: each is replaced by the next, until the shards look broken
    assert loader.bad_samples and "gave up after retries" in remote.COUNTERS.totals()
    with pytest.raises(Exception, match="data.on_bad_sample=skip"):
        list(strict)


def test_the_tar_cache_keeps_whole_tars_atomically_and_serves_later_epochs(proxy_env, bucket_shards,
                                                                             synthetic_shards, tmp_path):
    proxy = proxy_env()
    cache = tmp_path / "cache"
    (cache).mkdir()
    (cache / "leftover.part").write_bytes(b"torn")  # a killed run's partial download is never read
    loader = build_loader(cfg_for(bucket_shards, num_workers=0, cache_dir=str(cache), cache_bytes="64M"))
    first = indices_and_videos(loader)
    c = remote.tar_cache()
    for t in loader.shards.tars:  # the background downloads, or (same result) done here
        c.download(t)
    kept = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".part"))
    assert len(kept) == 3
    local = {p.name: p.read_bytes() for p in synthetic_shards.glob("train-*.tar")}
    for name in kept:
        assert (cache / name).read_bytes() == local[name.split("-", 2)[2]]
    ranged = proxy.counts["requests"]
    second = indices_and_videos(loader)  # epoch 1: from the cache, no request
    assert proxy.counts["requests"] == ranged
    loader2 = build_loader(cfg_for(synthetic_shards, num_workers=0))
    assert_same_batches(first, indices_and_videos(loader2))
    assert_same_batches(second, indices_and_videos(loader2))
    # least recently read first out: room for one tar keeps one
    small = remote.TarCache(str(tmp_path / "small"), max(p.stat().st_size for p in synthetic_shards.glob("*.tar")))
    for t in loader.shards.tars:
        small.download(t)
    assert len(list((tmp_path / "small").iterdir())) == 1


def test_latency_is_hidden_an_epoch_from_a_50ms_bucket_costs_about_what_local_disk_costs(proxy_env, bucket_shards,
                                                                                        synthetic_shards):
    # Loose on purpose (2 shared cores; the figure is bench/remote_speed.py's): 24 samples one by one would add
    # 24 x 50 ms / 2 workers = 0.6 s to the epoch; read ahead per batch, the bucket costs at most ~1 round trip
    # per batch and per worker.
    proxy = proxy_env(latency=0.05, fault_all=True)
    far, near = build_loader(cfg_for(bucket_shards)), build_loader(cfg_for(synthetic_shards))

    def epoch_s(loader):
        t0 = time.perf_counter()
        n = sum(b["video"].shape[0] for b in loader)
        assert n == 24
        return time.perf_counter() - t0

    times = {"far": [], "near": []}
    for _ in range(2):
        times["near"].append(epoch_s(near))
        times["far"].append(epoch_s(far))
    assert proxy.counts["requests"] >= 24
    # what hides the latency, checked without a clock: a batch's 4 ranged GETs were in flight at once
    assert proxy.peak_in_flight >= 4, proxy.peak_in_flight
    # and a sanity bound on time, loose for a loaded 2-core machine (one GET per sample in turn: +0.6 s or more)
    assert min(times["far"]) <= 2 * min(times["near"]) + 0.5, times


def test_a_worker_reads_its_next_batches_while_it_decodes_this_one(synthetic_shards):
    """Object-storage shards: each batch carries a ReadAhead of the next READ_AHEAD_BATCHES batches the same worker
    gets (round robin over the workers, on into the next epoch); the worker starts those reads before decoding,
    and its next batches use them."""
    from amd_fast.data.eager_loader import READ_AHEAD_BATCHES, ClipDataset, ReadAhead, _EpochBatches

    assert READ_AHEAD_BATCHES == 2
    sampler = _EpochBatches()
    sampler.batches = [[(0, k, k)] for k in range(5)]
    sampler.read_ahead_workers = 2
    dealt = list(sampler)
    assert dealt[0] == [(0, 0, 0), ReadAhead((((0, 2, 2),), ((0, 4, 4),)))]
    assert dealt[1] == [(0, 1, 1), ReadAhead((((0, 3, 3),),))] and dealt[3] == [(0, 3, 3)]  # none past the end
    sampler.next_batches = [[(1, k, 9 - k)] for k in range(4)]  # the next epoch: worker 0 gets 0, 2; worker 1: 1, 3
    dealt = list(sampler)
    assert dealt[3] == [(0, 3, 3), ReadAhead((((1, 1, 8),), ((1, 3, 6),)))]
    assert dealt[4] == [(0, 4, 4), ReadAhead((((1, 0, 9),), ((1, 2, 7),)))]
    loader = build_loader(cfg_for(synthetic_shards, num_workers=0, dtype="uint8"))
    ds = ClipDataset(loader.cfg, loader.samples, 0, loader.cfg.seed, "cpu")
    plain = ClipDataset(loader.cfg, loader.samples, 0, loader.cfg.seed, "cpu")
    first, second, third = [(0, 0, 5), (0, 1, 6)], [(0, 2, 7), (0, 3, 8)], [(0, 4, 1), (0, 5, 2)]
    a = ds.__getitems__(first + [ReadAhead((tuple(second), tuple(third)))])
    assert list(ds._pending) == [tuple(second), tuple(third)]  # in flight while the first batch decoded
    b = ds.__getitems__(second + [ReadAhead((tuple(third),))])
    assert list(ds._pending) == [tuple(third)]  # started once, not twice
    c = ds.__getitems__(third)
    assert ds._pending == {}
    for got, items in ((a, first), (b, second), (c, third)):
        assert torch.equal(got["video"], plain.__getitems__(items)["video"])
