"""The shard sample format, in one place: member names, the ``.clipinfo`` record, the DALI index.

Everything that writes a shard (``shard.build`` / ``shard.writer``), checks one (``shard.verify``)
or reads one (``data.shards``, the eager loader, the DALI graph) takes its facts from here, so the
format can change in exactly one module. The prose spec is ``shards/FORMAT.md``.

One sample = one source video, its members contiguous in the tar::

    <key>.<container>   encoded video (container in VIDEO_EXTS)
    <key>.cls           ASCII decimal class index (WebDataset convention)
    <key>.json          {"label", "label_index", "frames", "fps", "width", "height", "codec", "container", "source"}
    <key>.clipinfo      ClipInfo: 5 little-endian int32 (the json's numbers, for DALI's INT32 reader)

Standard library only: the loaders import it without pulling in PyAV.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import List, NamedTuple, Sequence, Tuple

# Members of a sample (extensions, without the dot).
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi")  # containers a sample's video may be stored in
# Source file suffix -> the container name its bytes are stored under by ``--codec copy``; also the
# suffixes the folder-style dataset layouts pick up as videos.
CONTAINER_OF_SUFFIX = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".webm": "webm", ".mkv": "mkv", ".avi": "avi"}
CLS_EXT = "cls"
JSON_EXT = "json"
INFO_EXT = "clipinfo"


class ClipInfo(NamedTuple):
    """The ``.clipinfo`` record; field order = position in the record (DALI reads it by position)."""

    label: int  # class index
    frames: int  # exact number of video frames
    width: int
    height: int
    fps_milli: int  # round(fps * 1000)

    def pack(self) -> bytes:
        return _INFO_STRUCT.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> "ClipInfo":
        """Raises ``struct.error`` when ``data`` is not exactly :data:`INFO_BYTES` long."""
        return cls(*_INFO_STRUCT.unpack(data))


_INFO_STRUCT = struct.Struct("<5i")
INFO_BYTES = _INFO_STRUCT.size
# Positions of ClipInfo's fields, for the DALI graph (which sees the record as an int32 vector).
INFO_LABEL, INFO_FRAMES, INFO_WIDTH, INFO_HEIGHT, INFO_FPS_MILLI = range(len(ClipInfo._fields))


def sample_meta(*, label_name: str, label: int, frames: int, fps: float, width: int, height: int, codec: str,
                container: str, source: str) -> dict:
    """The ``.json`` member's content."""
    return {"label": label_name, "label_index": label, "frames": frames, "fps": fps, "width": width,
            "height": height, "codec": codec, "container": container, "source": source}


def clip_info_of(meta: dict) -> ClipInfo:
    """The ClipInfo a sample's json implies (what the writer packs and ``--verify`` compares)."""
    return ClipInfo(meta["label_index"], meta["frames"], meta["width"], meta["height"], round(meta["fps"] * 1000))


def sample_members(video: bytes, meta: dict) -> List[Tuple[str, bytes]]:
    """(extension, bytes) of one sample, in the order they are written."""
    return [(meta["container"], video), (CLS_EXT, str(meta["label_index"]).encode()),
            (JSON_EXT, json.dumps(meta).encode()), (INFO_EXT, clip_info_of(meta).pack())]


# ---- the DALI index (what DALI's wds2idx writes, version v1.2) -------------------------------------------------
#
#     v1.2 <num_samples>
#     <ext> <data_offset> <size> <member_name> [<ext> <data_offset> <size> <member_name> ...]
#
# one line per sample; data_offset = byte offset of the member's data (its header offset + 512).

INDEX_VERSION = "v1.2"
TAR_BLOCK = 512

IndexEntry = Tuple[str, int, int, str]  # (ext, data_offset, size, member_name)


def index_line(entries: Sequence[IndexEntry]) -> str:
    return " ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in entries)


def index_text(lines: Sequence[str]) -> str:
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def read_index(idx_path: Path) -> List[List[IndexEntry]]:
    """Parse a DALI v1.2 index: per sample, its members' (ext, data_offset, size, member_name).

    Raises ``ValueError`` naming the file and the problem (``OSError`` if it cannot be read).
    """
    try:
        lines = Path(idx_path).read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{idx_path}: not a text index file") from None
    if not lines:
        raise ValueError(f"{idx_path}: empty index")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"{idx_path}: header {lines[0]!r} is not '{INDEX_VERSION} <count>'")
    samples = []
    for line in lines[1:]:
        tok = line.split()
        if not tok or len(tok) % 4:
            raise ValueError(f"{idx_path}: malformed line {line!r}")
        try:
            samples.append([(tok[i], int(tok[i + 1]), int(tok[i + 2]), tok[i + 3]) for i in range(0, len(tok), 4)])
        except ValueError:
            raise ValueError(f"{idx_path}: malformed line {line!r}") from None
    if len(samples) != int(head[1]):
        raise ValueError(f"{idx_path}: header says {head[1]} samples, found {len(samples)}")
    return samples


def sample_keys(index: Sequence[Sequence[IndexEntry]]) -> List[str]:
    """The key of each indexed sample (member name up to its first dot: the WebDataset rule)."""
    return [s[0][3].split(".", 1)[0] for s in index]


def split_member_name(name: str) -> Tuple[str, str]:
    """'<key>.<ext>' -> (key, ext), splitting at the first dot as WebDataset does."""
    key, _, ext = name.partition(".")
    return key, ext
