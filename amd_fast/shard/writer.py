"""Tar shard writer: WebDataset tar + DALI index, written atomically.

The tar is written as ``<name>.tar.tmp`` (USTAR headers only, so every member costs
exactly one 512-byte header and the index offsets are known while writing), hashed on
the fly, fsynced and renamed; then the index goes the same way. A reader (or a resumed
build) therefore never sees a half-written shard under its final name, and a tar
without its ``.idx`` is by definition unfinished.

Index format = what DALI's ``wds2idx`` writes (index_file_version v1.2)::

    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> [<ext> <data_offset> <size> <member_name> ...]

one line per sample, ``data_offset`` being the byte offset of the member's data (its
header offset + 512).
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

INDEX_VERSION = "v1.2"
TAR_BLOCK = 512


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


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


class ShardWriter:
    """Collects samples into one tar; :meth:`close` publishes tar + idx, :meth:`abort` drops them."""

    def __init__(self, tar_path: Path, idx_path: Path):
        self.tar_path, self.idx_path = tar_path, idx_path
        self._raw = open(tmp_path(tar_path), "wb")
        self._out = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        self._lines: List[str] = []

    @property
    def samples(self) -> int:
        return len(self._lines)

    def add(self, key: str, members: Sequence[Tuple[str, bytes]]) -> None:
        """One sample = ``key.<ext>`` members written contiguously (a WebDataset requirement)."""
        parts = []
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: byte-identical rebuilds
            offset = self._out.tell() + TAR_BLOCK
            self._tar.addfile(info, io.BytesIO(data))
            parts.append(f"{ext} {offset} {len(data)} {info.name}")
        self._lines.append(" ".join(parts))

    def close(self) -> ShardInfo:
        """Publish tar then idx. Interrupted anywhere (Ctrl-C), it leaves no tar without its idx."""
        published = False
        try:
            self._tar.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            idx_tmp = tmp_path(self.idx_path)
            with open(idx_tmp, "w") as f:
                f.write(f"{INDEX_VERSION} {len(self._lines)}\n")
                f.writelines(line + "\n" for line in self._lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path(self.tar_path), self.tar_path)
            os.replace(idx_tmp, self.idx_path)
            published = True
        finally:
            if not published:
                self.tar_path.unlink(missing_ok=True)
                self.abort()
        _fsync_dir(self.tar_path.parent)
        return ShardInfo(self.tar_path.name, self.idx_path.name, len(self._lines), self._out.pos, self._out.sha.hexdigest())

    def abort(self) -> None:
        try:
            self._raw.close()
        finally:
            tmp_path(self.tar_path).unlink(missing_ok=True)
            tmp_path(self.idx_path).unlink(missing_ok=True)


def read_index(idx_path: Path) -> List[List[Tuple[str, int, int, str]]]:
    """Parse a DALI v1.2 index: per sample, a list of (ext, data_offset, size, member_name)."""
    lines = idx_path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{idx_path}: empty index")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION:
        raise ValueError(f"{idx_path}: header {lines[0]!r} is not '{INDEX_VERSION} <count>'")
    samples = []
    for line in lines[1:]:
        tok = line.split()
        if not tok or len(tok) % 4:
            raise ValueError(f"{idx_path}: malformed line {line!r}")
        samples.append([(tok[i], int(tok[i + 1]), int(tok[i + 2]), tok[i + 3]) for i in range(0, len(tok), 4)])
    if len(samples) != int(head[1]):
        raise ValueError(f"{idx_path}: header says {head[1]} samples, found {len(samples)}")
    return samples


def sample_keys(index: List[List[Tuple[str, int, int, str]]]) -> List[str]:
    return [s[0][3].split(".", 1)[0] for s in index]


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
