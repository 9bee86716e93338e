"""Where a build's files end up: a local folder, or an fsspec URL (``--out s3://bucket/prefix``, ``gs://``, ...).

The build always works in a local folder. For a local ``--out`` that folder *is* the output. For a URL it is a
staging folder on this machine (``$TMPDIR/amd_fast-shard-stage-<uid>/<hash of the URL>``), and
:class:`RemoteOutput` moves files up:

- each tar and its index are uploaded whole once closed (an object store has no partial objects; the tar goes
  before its index, so an index in the bucket means its tar is complete), then deleted locally;
- the progress journal and the failures log are uploaded every few seconds and at the end, the manifest last,
  so a reader of the bucket never sees a manifest before all its shards;
- a rerun first downloads the plan, the journal and the failures log, and keeps a shard whose tar (of the
  journal's size) and index are in the bucket: resume reads what is already there.

Locking on object storage (S3 and GCS have no ``flock``): ``<split>.lock`` in the bucket is a lease, JSON with
the holder (pid, host, a random token) and a heartbeat rewritten every :data:`LEASE_RENEW_S` seconds. A build
refuses a lease whose heartbeat is younger than :data:`LEASE_STALE_S`; an older one belonged to a run that
died, and is taken over. After writing its lease a build reads it back a moment later and refuses if another
token won the race. The lease is deleted when the build ends. Builds on the same machine additionally take the
ordinary ``flock`` on the staging folder. This is best effort (two builds starting within the same second on two
machines can in principle both pass), which is enough to stop the mistake it exists for: a second command
started against a folder that is still being written.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from amd_fast.errors import InputError

from .lock import ShardLockError

log = logging.getLogger(__name__)

LEASE_RENEW_S = 20.0
LEASE_STALE_S = 120.0
LOG_SYNC_S = 10.0  # journal / failures log upload interval (they are small, but rewritten whole each time)
INSTALL_HINT = {"s3": "pip install 'amd_fast[s3]' (s3fs)", "gs": "pip install 'amd_fast[gcs]' (gcsfs)",
                "gcs": "pip install 'amd_fast[gcs]' (gcsfs)"}


def is_url(out) -> bool:
    return out is not None and "://" in str(out)


def stage_dir_for(url: str) -> Path:
    """The local staging folder of an output URL (stable, so a rerun finds it)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"amd_fast-shard-stage-{os.getuid()}" / digest


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for ``url``; a missing backend is one line naming the install."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        hint = INSTALL_HINT.get(protocol, f"the fsspec backend for {protocol}://")
        raise InputError(f"--out {url}: no fsspec backend for {protocol}:// is installed; {hint}") from None
    except ValueError as e:
        raise InputError(f"--out {url}: not a storage URL fsspec understands ({e}); give a folder or "
                         "s3://bucket/prefix") from None


def upload(local: Path, url: str) -> None:
    """Put one file as one object (whole, or not at all)."""
    fs, path = filesystem(url)
    fs.put_file(str(local), path)


class LocalOutput:
    """``--out`` is a folder: files are written in place, nothing to move."""

    url: Optional[str] = None

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def describe(self, name: str) -> str:
        return str(self.folder / name)

    def fetch_state(self, names: Sequence[str]) -> None:
        pass

    def publish(self, local: Path, keep_local: bool = True) -> None:
        pass

    def sync_logs(self, paths: Sequence[Path], force: bool = False) -> None:
        pass

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def remote_files(self, pattern: str) -> list:
        return []

    def remote_size(self, name: str) -> Optional[int]:
        return None

    def lease(self, splits: Sequence[str]):
        return _NoLease()


class RemoteOutput:
    """``--out`` is a URL: the build works in :attr:`folder` (local staging) and files are uploaded whole."""

    def __init__(self, url: str, stage: Path):
        self.url, self.folder = url.rstrip("/"), Path(stage)
        self.fs, self.root = filesystem(self.url)
        self._last_sync = 0.0

    def _remote(self, name: str) -> str:
        return f"{self.root}/{name}"

    def describe(self, name: str) -> str:
        return f"{self.url}/{name}"

    def fetch_state(self, names: Sequence[str]) -> None:
        """The bucket is the truth: its copy of each small state file replaces the staged one (or its absence
        deletes it), so a rerun on any machine resumes from what was uploaded."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            local = self.folder / name
            if self.fs.exists(self._remote(name)):
                self.fs.get_file(self._remote(name), str(local))
            else:
                local.unlink(missing_ok=True)

    def publish(self, local: Path, keep_local: bool = False) -> None:
        self.fs.put_file(str(local), self._remote(local.name))
        if not keep_local:
            local.unlink(missing_ok=True)

    def sync_logs(self, paths: Sequence[Path], force: bool = False) -> None:
        if not force and time.monotonic() - self._last_sync < LOG_SYNC_S:
            return
        for p in paths:
            if p.exists():
                self.fs.put_file(str(p), self._remote(p.name))
        self._last_sync = time.monotonic()

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
        try:
            self.fs.rm_file(self._remote(name))
        except FileNotFoundError:
            pass

    def remote_files(self, pattern: str) -> list:
        """Names (no prefix) of the objects directly under the URL whose name fully matches ``pattern``."""
        self.fs.invalidate_cache()
        try:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if re.fullmatch(pattern, n))

    def remote_size(self, name: str) -> Optional[int]:
        try:
            return int(self.fs.info(self._remote(name))["size"])
        except FileNotFoundError:
            return None

    def lease(self, splits: Sequence[str]) -> "_Lease":
        return _Lease(self, splits)


def output_for(folder: Path, url: Optional[str]):
    return RemoteOutput(url, folder) if url else LocalOutput(folder)


class _NoLease:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _Lease:
    """The object-storage lock described in the module docstring."""

    def __init__(self, out: RemoteOutput, splits: Sequence[str]):
        self.out, self.splits = out, sorted(set(splits))
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._held: list = []

    def _body(self) -> bytes:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                           "heartbeat": time.time(), "heartbeat_utc": now}).encode()

    def _read(self, split: str) -> Optional[dict]:
        try:
            with self.out.fs.open(self.out._remote(f"{split}.lock"), "rb") as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _write(self, split: str) -> None:
        self.out.fs.pipe_file(self.out._remote(f"{split}.lock"), self._body())

    def _refuse(self, split: str, holder: dict) -> None:
        raise ShardLockError(
            f"{self.out.url} split {split!r} is being written by another amd_fast.shard run (pid {holder.get('pid')} "
            f"on {holder.get('host')}, last heartbeat {holder.get('heartbeat_utc')}); wait for it to finish (a lease "
            f"without a heartbeat for {LEASE_STALE_S:.0f} s is taken over), or pick another --out")

    def __enter__(self) -> "_Lease":
        try:
            for split in self.splits:
                holder = self._read(split)
                if holder and holder.get("token") != self.token and \
                        time.time() - float(holder.get("heartbeat", 0)) < LEASE_STALE_S:
                    self._refuse(split, holder)
                self._write(split)
                self._held.append(split)
            time.sleep(1.0)  # let a racing writer's lease land, then see who won
            for split in self.splits:
                holder = self._read(split) or {}
                if holder.get("token") != self.token:
                    self._held.remove(split)
                    self._refuse(split, holder)
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._renew, name="shard-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            for split in self._held:
                try:
                    self._write(split)
                except Exception as e:  # a missed heartbeat is not fatal; the next one may go through
                    log.warning("could not renew the lease on %s/%s.lock: %s", self.out.url, split, e)

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for split in self._held:
            holder = self._read(split) or {}
            if holder.get("token") == self.token:  # never delete another run's lease
                try:
                    self.out.fs.rm_file(self.out._remote(f"{split}.lock"))
                except FileNotFoundError:
                    pass
        self._held = []

    def __exit__(self, *exc) -> None:
        self._release()
