"""The eager loader's watchdog (``data.stall_timeout_s``): a worker that stops delivering is replaced and reading
goes on from the batch that stalled, the same batches exactly once; the stacks of the stalled workers are printed;
a batch that stalls every time ends the run naming its samples."""
import ctypes
import gc
import hashlib
import logging
import os
import time

import pytest
import torch

from amd_fast.data import DataConfig, build_loader
from amd_fast.data import eager_loader
from amd_fast.data.shards import read_sample
from amd_fast.data.stream import LoaderStalledError


def _cfg(shards, **kw):
    return DataConfig(**{**dict(shards=str(shards), backend="eager", device="cpu", batch_size=2, num_frames=4,
                                sampling_rate=2, input_size=32, num_workers=2, dtype="uint8", seed=5,
                                split="train", stall_timeout_s=2), **kw})


def _hanging_decoder(target: str, once_marker):
    """A clip decoder that hangs on the video whose bytes hash to ``target``: the first time only when
    ``once_marker`` (a path) is given, else every time."""
    real = eager_loader.get_clip_decoder

    def factory(name, **kw):
        decode = real(name, **kw)

        def hang_on_target(data, *args, **kwargs):
            if hashlib.sha1(data).hexdigest() == target and not (once_marker and once_marker.exists()):
                if once_marker:
                    once_marker.touch()
                time.sleep(3600)
            return decode(data, *args, **kwargs)
        return hang_on_target
    return factory


def _target(loader, batch_index):
    """The hash of the first video of batch ``batch_index`` of epoch 0, and its sample."""
    pos_and_sample = loader.epoch_batches(0)[batch_index][0]
    sample = loader.samples[int(pos_and_sample[1])]
    return hashlib.sha1(read_sample(sample)[1]).hexdigest(), sample


def test_a_stalled_worker_is_replaced_and_the_epoch_reads_on_exactly_once(synthetic_shards, monkeypatch, tmp_path,
                                                                           caplog, capfd):
    clean = build_loader(_cfg(synthetic_shards))
    expected = [(b["index"], b["video"]) for b in clean]
    clean.close()
    target, _ = _target(clean, 3)
    monkeypatch.setattr(eager_loader, "get_clip_decoder", _hanging_decoder(target, tmp_path / "hung-once"))
    loader = build_loader(_cfg(synthetic_shards))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="amd_fast.data.eager_loader"):
        got = [(b["index"], b["video"]) for b in loader]
    loader.close()
    assert (tmp_path / "hung-once").exists()  # it did hang
    assert len(got) == len(expected) > 3
    for (gi, gv), (ei, ev) in zip(got, expected):
        assert torch.equal(gi, ei) and torch.equal(gv, ev)
    assert any("gave no batch for 2 s" in r.getMessage() and "batch 3 of epoch 0" in r.getMessage()
               for r in caplog.records)
    assert "hang_on_target" in capfd.readouterr().err  # the stalled worker's stack names where it hung
    assert time.monotonic() - started < 30


def test_a_batch_that_stalls_every_time_ends_the_run_naming_its_samples(synthetic_shards, monkeypatch):
    probe = build_loader(_cfg(synthetic_shards))
    target, sample = _target(probe, 1)
    monkeypatch.setattr(eager_loader, "get_clip_decoder", _hanging_decoder(target, None))
    loader = build_loader(_cfg(synthetic_shards))
    seen = []
    with pytest.raises(LoaderStalledError, match=r"stalled twice at batch 1 of epoch 0.*" + sample.key):
        for b in loader:
            seen.append(b["index"])
    loader.close()
    assert len(seen) == 1


def test_stall_timeout_auto_covers_a_url_reads_retries_and_rejects_nonsense():
    assert DataConfig(shards="shards/x").stall_timeout() == 120
    remote = DataConfig(shards="s3://bucket/x", remote_timeout_s=10, remote_retries=2)
    assert remote.stall_timeout() == 120 + 30
    assert DataConfig(shards="shards/x", stall_timeout_s=0).stall_timeout() == 0
    for bad in (-1, "soon", True):
        with pytest.raises(ValueError, match="stall_timeout_s"):
            DataConfig(shards="shards/x", stall_timeout_s=bad)


class _FinalizerNeedingParentThreads:
    """Stands in for a DALI pipeline left as garbage in a reference cycle: its finalizer, run in a forked child,
    blocks with the GIL held (DALI's C++ shutdown waits for threads the fork did not copy)."""

    def __init__(self):
        self.cycle, self.pid = self, os.getpid()

    def __del__(self):
        if os.getpid() != self.pid:
            ctypes.PyDLL(None).sleep(3600)  # a C call that keeps the GIL


def test_garbage_of_the_parent_is_never_finalized_in_a_worker(synthetic_shards, monkeypatch):
    """The CI hang of 2026-12-07: a worker's garbage collection ran an inherited DALI pipeline's finalizer and
    blocked; the main process then waited forever on that worker's resource-sharer thread."""
    real = eager_loader.get_clip_decoder

    def collecting(name, **kw):
        decode = real(name, **kw)

        def collect_then_decode(*args, **kwargs):
            gc.collect()  # what an allocation-triggered collection does at some point in a real worker
            return decode(*args, **kwargs)
        return collect_then_decode
    monkeypatch.setattr(eager_loader, "get_clip_decoder", collecting)
    gc.disable()  # keep the garbage until the loader starts, as a collection that has not come yet would
    try:
        _FinalizerNeedingParentThreads()
        loader = build_loader(_cfg(synthetic_shards, num_workers=1, stall_timeout_s=5))
        started = time.monotonic()
        assert len(list(loader)) == len(loader)
        loader.close()
    finally:
        gc.enable()
    assert time.monotonic() - started < 5  # no stall, no replaced worker
