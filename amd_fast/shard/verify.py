"""--verify: re-read built shards and report every problem found.

Checks per split: manifest valid; each tar present with the recorded size and sha256;
its DALI index matches the tar's members (names, data offsets, sizes); each sample has a
video, ``.cls``, ``.json`` and ``.clipinfo`` that agree; every video decodes fully and
its decoded frame count equals the json's ``frames``; the samples by codec match the manifest's
counts. A manifest written before those counts existed gets them recorded (when writable).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

from .format import CLS_EXT, INFO_EXT, JSON_EXT, VIDEO_EXTS, ClipInfo, clip_info_of, read_index, split_member_name
from .manifest import read_manifest, save_manifest, split_codecs
from .transcode import VideoError, probe_bytes
from .writer import file_sha256


@dataclass
class VerifyReport:
    manifests: int = 0
    shards: int = 0
    samples: int = 0
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # not problems: what verify recorded or could not record

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_video(item: Tuple[str, bytes, int]) -> "str | None":
    where, data, frames = item
    try:
        got = probe_bytes(data, decode_all=True).frames
    except VideoError as e:
        return f"{where}: {e}"
    return None if got == frames else f"{where}: decoded {got} frames, json says {frames}"


def _samples(tar_path: Path):
    """Group tar members by key: [(key, {ext: (data_offset, size, bytes)})] in tar order."""
    out: list = []
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = split_member_name(m.name)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = (m.offset_data, m.size, tf.extractfile(m).read())
    return out


def _check_shard(folder: Path, shard: dict, classes: list, problems: list, videos: list, codecs: dict) -> int:
    tar, idx = folder / shard["tar"], folder / shard["index"]
    for p in (tar, idx):
        if not p.is_file():
            problems.append(f"{p}: missing")
            return 0
    if tar.stat().st_size != shard["bytes"]:
        problems.append(f"{tar}: {tar.stat().st_size} bytes, manifest says {shard['bytes']}")
    if file_sha256(tar) != shard["sha256"]:
        problems.append(f"{tar}: sha256 differs from the manifest")
    try:
        samples = _samples(tar)
        index = read_index(idx)
    except (tarfile.TarError, ValueError, OSError) as e:
        problems.append(f"{tar}: unreadable ({e})")
        return 0
    if len(samples) != shard["samples"]:
        problems.append(f"{tar}: {len(samples)} samples, manifest says {shard['samples']}")
    idx_view = [sorted((e[3], e[1], e[2]) for e in entry) for entry in index]
    tar_view = [sorted((f"{k}.{ext}", off, n) for ext, (off, n, _) in members.items()) for k, members in samples]
    if idx_view != tar_view:
        problems.append(f"{idx}: does not match the members of {tar.name}")
    for key, members in samples:
        where = f"{tar.name}:{key}"
        vids = [e for e in members if e in VIDEO_EXTS]
        if len(vids) != 1 or not {CLS_EXT, JSON_EXT, INFO_EXT} <= set(members):
            problems.append(f"{where}: members {sorted(members)}, need one video + {CLS_EXT}, {JSON_EXT}, {INFO_EXT}")
            continue
        try:
            meta = json.loads(members[JSON_EXT][2])
            cls = int(members[CLS_EXT][2])
            info = ClipInfo.unpack(members[INFO_EXT][2])
            implied = clip_info_of(meta)
        except (ValueError, TypeError, KeyError, struct.error) as e:
            problems.append(f"{where}: bad metadata ({type(e).__name__}: {e})")
            continue
        if not (0 <= cls < len(classes)) or cls != meta.get("label_index") or classes[cls] != meta.get("label"):
            problems.append(f"{where}: cls {cls} / json label {meta.get('label')!r} disagree with the class list")
        if info != implied:
            problems.append(f"{where}: clipinfo {list(info)} disagrees with the json {list(implied)}")
        codec = str(meta.get("codec", "unknown"))
        codecs[codec] = codecs.get(codec, 0) + 1
        videos.append((where, members[vids[0]][2], meta["frames"]))
    return len(samples)


def _record_codecs(path: Path, m: dict, report: VerifyReport) -> None:
    """Write the per-codec sample counts an older manifest lacks (what ``data.backend`` decides from)."""
    m["codecs"] = split_codecs(m["shards"])
    try:
        save_manifest(path, m)
        report.notes.append(f"{path}: recorded samples by codec {m['codecs']} (the manifest predates them)")
    except OSError as e:
        report.notes.append(f"{path}: samples by codec are {m['codecs']}, not recorded ({e.strerror}: read-only?)")


def verify_shards(path, manifests=None, workers: int = 0, progress: bool = False) -> VerifyReport:
    """Verify every ``*.manifest.json`` in folder ``path`` (or the one manifest file given, or
    just ``manifests``)."""
    path = Path(path)
    if manifests is None:
        manifests = [path] if path.is_file() else sorted(path.glob("*.manifest.json"))
    report = VerifyReport()
    if not manifests:
        report.problems.append(f"{path}: no *.manifest.json found")
        return report
    from tqdm import tqdm

    # Decode shard by shard so memory holds one tar's videos at a time.
    pool = mp.get_context("spawn").Pool(workers) if workers > 0 else None
    try:
        for mp_ in manifests:
            report.manifests += 1
            try:
                m = read_manifest(mp_)
            except ValueError as e:
                report.problems.append(str(e))
                continue
            missing_counts = False
            for shard in tqdm(m["shards"], desc=f"verify {m['split']}", unit="shard", disable=not progress):
                report.shards += 1
                videos: list = []
                codecs: dict = {}
                report.samples += _check_shard(mp_.parent, shard, m["classes"], report.problems, videos, codecs)
                results = pool.imap(_check_video, videos) if pool else map(_check_video, videos)
                report.problems += [r for r in results if r]
                if "codecs" not in shard:
                    shard["codecs"], missing_counts = dict(sorted(codecs.items())), True
                elif shard["codecs"] != codecs:
                    report.problems.append(f"{shard['tar']}: samples by codec {codecs}, manifest says {shard['codecs']}")
            if missing_counts:
                _record_codecs(mp_, m, report)
    finally:
        if pool:
            pool.close()
            pool.join()
    return report
