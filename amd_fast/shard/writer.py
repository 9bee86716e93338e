"""Tar shard writer: WebDataset tar + DALI index, written atomically.

The tar is written as ``<name>.tar.tmp`` (USTAR headers only, so every member costs
exactly one 512-byte header and the index offsets are known while writing), hashed on
the fly, fsynced and renamed; then the index goes the same way. A reader (or a resumed
build) therefore never sees a half-written shard under its final name, and a tar
without its ``.idx`` is by definition unfinished.

The index format (what DALI's ``wds2idx`` writes) is defined in :mod:`amd_fast.shard.format`.
A writer only ever deletes files it created: its own temporary files, and its tar if it
published the tar but could not publish the index (see :meth:`ShardWriter.close`).
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

from .format import TAR_BLOCK, index_line, index_text, read_index


@dataclass
class ShardInfo:
    tar: str  # file names, relative to the split's folder
    index: str
    samples: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict:
        return {"tar": self.tar, "index": self.index, "samples": self.samples, "bytes": self.bytes, "sha256": self.sha256}


class _HashingFile:
    """Write-only file wrapper that keeps a sha256 and the position (tarfile needs tell())."""

    def __init__(self, f):
        self.f, self.pos, self.sha = f, 0, hashlib.sha256()

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: Path, tag: str = "") -> Path:
    """``<name>.tmp``, or ``<name>.<tag>.tmp``: a retried Ray task writes under its own tag, so an attempt that
    is still dying can never rename its half of a file over the retry's."""
    return path.with_name(f"{path.name}.{tag}.tmp" if tag else path.name + ".tmp")


class ShardWriter:
    """Collects samples into one tar; :meth:`close` publishes tar + idx, :meth:`abort` drops them."""

    def __init__(self, tar_path: Path, idx_path: Path, tmp_tag: str = ""):
        self.tar_path, self.idx_path, self._tag = tar_path, idx_path, tmp_tag
        self._raw = open(tmp_path(tar_path, tmp_tag), "wb")
        self._out = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self._lines: List[str] = []

    @property
    def samples(self) -> int:
        return len(self._lines)

    def add(self, key: str, members: Sequence[Tuple[str, bytes]]) -> None:
        """One sample = ``key.<ext>`` members written contiguously (a WebDataset requirement)."""
        entries = []
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: byte-identical rebuilds
            offset = self._out.tell() + TAR_BLOCK
            self._tar.addfile(info, io.BytesIO(data))
            entries.append((ext, offset, len(data), info.name))
        self._lines.append(index_line(entries))

    def close(self) -> ShardInfo:
        """Publish tar then idx. Interrupted anywhere (Ctrl-C), it leaves no tar without its idx.

        Only a tar this writer itself renamed into place is removed on failure: a tar of the same
        name published by anyone else is never touched."""
        tar_published = idx_published = False
        try:
            self._tar.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            idx_tmp = tmp_path(self.idx_path, self._tag)
            with open(idx_tmp, "w") as f:
                f.write(index_text(self._lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path(self.tar_path, self._tag), self.tar_path)
            tar_published = True
            os.replace(idx_tmp, self.idx_path)
            idx_published = True
        finally:
            if not idx_published:
                if tar_published:
                    self.tar_path.unlink(missing_ok=True)
                self.abort()
        _fsync_dir(self.tar_path.parent)
        return ShardInfo(self.tar_path.name, self.idx_path.name, len(self._lines), self._out.pos, self._out.sha.hexdigest())

    def abort(self) -> None:
        try:
            self._raw.close()
        finally:
            tmp_path(self.tar_path, self._tag).unlink(missing_ok=True)
            tmp_path(self.idx_path, self._tag).unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finished_shard(tar_path: Path, idx_path: Path) -> "Tuple[int, int] | None":
    """(samples, tar bytes) if tar + idx are both present and consistent, else None.

    Consistent = the index parses, is non-empty, every member lies inside the tar, and the
    tar is a whole number of blocks with the two zero end-of-archive blocks after the last
    member. (The sha256 is not recomputed: resume trusts the one recorded when the shard was
    closed, so later corruption shows up in ``--verify`` instead of being blessed.)
    """
    if not (tar_path.is_file() and idx_path.is_file()):
        return None
    try:
        index = read_index(idx_path)
    except (ValueError, OSError):
        return None
    size = tar_path.stat().st_size
    if not index or size % TAR_BLOCK or size < 3 * TAR_BLOCK:
        return None
    if any(off + n > size for sample in index for _, off, n, _ in sample):
        return None
    last_end = max(off + n for sample in index for _, off, n, _ in sample)
    with open(tar_path, "rb") as f:
        f.seek(-(-last_end // TAR_BLOCK) * TAR_BLOCK)
        if f.read(2 * TAR_BLOCK) != b"\0" * (2 * TAR_BLOCK):
            return None
    return len(index), size
