"""One writer per output split: ``<out>/<split>.lock``, held with ``flock`` for the whole build.

A second ``python -m amd_fast.shard`` into the same ``--out`` and split refuses at once, naming the
run that holds the lock (pid, host, start time). The kernel releases an ``flock`` when its process
dies, however it dies (kill -9 included), so a lock left behind by a dead run is simply taken over.
The file is removed when the build finishes; its content is only information for the error message.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import List, Sequence

from amd_fast.errors import InputError


class ShardLockError(InputError):
    """Another run is writing the same output split."""


def lock_path(out: Path, split: str) -> Path:
    return Path(out) / f"{split}.lock"


class SplitLock:
    def __init__(self, out: Path, split: str):
        self.path, self.split = lock_path(out, split), split
        self._fd = None

    def acquire(self) -> "SplitLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ShardLockError(
                    f"{self.path.parent} split {self.split!r} is being written by another amd_fast.shard run "
                    f"({holder}); wait for it to finish (then rerun to resume or verify), or pick another --out"
                ) from None
            # The file may have been removed (and a new one created) by the previous holder between our open
            # and our lock: then we hold a lock on an unlinked file. Retry on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody can be mid-acquire on it
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"


class SplitLocks:
    """Locks for several splits, taken in a fixed order (so two runs cannot deadlock) and released together."""

    def __init__(self, out: Path, splits: Sequence[str]):
        self.locks: List[SplitLock] = [SplitLock(out, s) for s in sorted(set(splits))]

    def __enter__(self) -> "SplitLocks":
        taken = []
        try:
            for lock in self.locks:
                taken.append(lock.acquire())
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for lock in self.locks:
            lock.release()
