"""Per-split manifest (written last, atomically) and failures log."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import List, Sequence, Set

MANIFEST_FORMAT = "amd_fast-shards/1"
_REQUIRED = {"format": str, "source": str, "split": str, "classes": list, "num_samples": int,
             "num_failures": int, "bytes": int, "shards": list, "options": dict}
_SHARD_REQUIRED = {"tar": str, "index": str, "samples": int, "bytes": int, "sha256": str}


def manifest_path(out: Path, split: str) -> Path:
    return out / f"{split}.manifest.json"


def failures_path(out: Path, split: str) -> Path:
    return out / f"{split}.failures.jsonl"


def write_manifest(path: Path, *, source: str, split: str, classes: Sequence[str], shards: Sequence[dict],
                   num_failures: int, options: dict, unbuilt_splits: "dict | None" = None) -> Path:
    """``unbuilt_splits``: videos the source listed for splits this build did not ask for, by split (recorded
    when any, so a manifest says what of the listing it leaves out)."""
    m = {
        "format": MANIFEST_FORMAT, "source": source, "split": split, "classes": list(classes),
        "num_samples": sum(s["samples"] for s in shards), "num_failures": num_failures,
        "bytes": sum(s["bytes"] for s in shards), "shards": list(shards), "options": options,
        "failures": failures_path(path.parent, split).name,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    counts = split_codecs(shards)
    if counts is not None:
        m["codecs"] = counts
    if unbuilt_splits:
        m["unbuilt_splits"] = dict(sorted(unbuilt_splits.items()))
    return save_manifest(path, m)


def split_codecs(shards: Sequence[dict]) -> "dict | None":
    """Samples by codec over all shards (their ``codecs`` entries); None if a shard lacks its counts
    (a manifest written before they were recorded: ``--verify`` fills them in)."""
    if not all(isinstance(s.get("codecs"), dict) for s in shards):
        return None
    total: dict = {}
    for s in shards:
        for codec, n in s["codecs"].items():
            total[codec] = total.get(codec, 0) + n
    return dict(sorted(total.items()))


def save_manifest(path: Path, m: dict) -> Path:
    """Write a manifest dict atomically (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(m, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_manifest(path, split: "str | None" = None) -> dict:
    """Load and validate a manifest: a ``<split>.manifest.json`` path, or a shard folder plus
    ``split`` (or a folder holding a single manifest).

    Raises ``ValueError`` naming the problem. Shard paths in the result are as written
    (relative to the manifest's folder); ``read_manifest(p)["shards"][i]["tar"]``.
    """
    path = Path(path)
    if path.is_dir() and split is not None:
        path = manifest_path(path, split)
    elif path.is_dir():
        found = sorted(path.glob("*.manifest.json"))
        if len(found) != 1:
            raise ValueError(f"{path}: expected exactly one *.manifest.json, found {[p.name for p in found]}; "
                             "pass the manifest file of the split you want")
        path = found[0]
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest; build shards with `python -m amd_fast.shard`")
    try:
        m = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rebuild with `python -m amd_fast.shard --overwrite`") from None
    for k, t in _REQUIRED.items():
        if not isinstance(m.get(k), t):
            raise ValueError(f"{path}: field {k!r} missing or not a {t.__name__}")
    if m["format"] != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {m['format']!r}, this code reads {MANIFEST_FORMAT!r}")
    for i, s in enumerate(m["shards"]):
        for k, t in _SHARD_REQUIRED.items():
            if not isinstance(s.get(k), t):
                raise ValueError(f"{path}: shards[{i}].{k} missing or not a {t.__name__}")
    if sum(s["samples"] for s in m["shards"]) != m["num_samples"]:
        raise ValueError(f"{path}: num_samples != sum of shard samples")
    return m


def read_jsonl(path: Path) -> List[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a crash
            continue
    return out


def journal_path(out: Path, split: str) -> Path:
    return out / f"{split}.progress.jsonl"


class ShardLog:
    """Append-only JSONL of per-shard records (failures, finished shards), each with a ``shard`` field.

    Opening it keeps the records of the shards in ``keep_shards`` and drops the rest: those
    shards are rebuilt and will log again. Every line is flushed as it is written, so a crash
    loses at most the line being written (a cut line is ignored on the next read).
    """

    def __init__(self, path: Path, keep_shards: Set[int]):
        kept = [f for f in read_jsonl(path) if f.get("shard") in keep_shards]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(f) + "\n" for f in kept))
        os.replace(tmp, path)
        self.count = len(kept)
        self._f = open(path, "a")

    def add(self, **record) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.count += 1

    def close(self) -> None:
        self._f.close()
