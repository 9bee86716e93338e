"""Deterministic assignment of videos to shards, and the plan file a rerun checks.

Resume works because the assignment is a pure function of (source listing, content
options): the same command always puts the same videos in the same shard under the same
keys. ``<split>.plan.json`` records that assignment (as one hash per shard) together with
the content options and class list; a rerun whose plan differs is refused (unless
--overwrite) instead of silently mixing two datasets in one folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from amd_fast.errors import InputError

from .sources import VideoRecord

PLAN_FORMAT = "amd_fast-shard-plan/1"
MAX_KEY = 80  # stay far inside the 100-byte USTAR name field with the extension added
# Nominal source size for synthetic clips (no file to stat) when --shard-bytes is used.
SYNTHETIC_NOMINAL_BYTES = 16_000


class PlanMismatch(InputError):
    pass


@dataclass(frozen=True)
class PlannedVideo:
    ordinal: int  # position in the split (also the key prefix)
    key: str
    record: VideoRecord


def safe_key(ordinal: int, stem: str) -> str:
    """``<ordinal:07d>_<stem>`` with every char outside [A-Za-z0-9_-] replaced by '_'.

    No dots (WebDataset splits the key at the first dot). The ordinal prefix makes keys
    unique within the split even for duplicate stems and keeps sort order = shard order.
    """
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "video"
    return f"{ordinal:07d}_{clean}"[:MAX_KEY]


def plan_split(records: Sequence[VideoRecord], split: str, seed: int, samples_per_shard: int,
               shard_bytes: "int | None", limit: "int | None") -> List[List[PlannedVideo]]:
    """Shuffle (seeded: dataset lists are often sorted by class, and a shard of one class hurts
    WebDataset-style shard shuffling), truncate to ``limit``, cut into shards."""
    order = list(records)
    random.Random(f"{seed}:{split}").shuffle(order)
    if limit is not None:
        order = order[:limit]
    shards: List[List[PlannedVideo]] = []
    cur: List[PlannedVideo] = []
    cur_bytes = 0
    for i, rec in enumerate(order):
        size = rec.size or SYNTHETIC_NOMINAL_BYTES
        if cur and (len(cur) >= samples_per_shard or (shard_bytes and cur_bytes + size > shard_bytes)):
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(PlannedVideo(i, safe_key(i, rec.stem), rec))
        cur_bytes += size
    if cur:
        shards.append(cur)
    return shards


def shard_digest(shard: Sequence[PlannedVideo]) -> str:
    h = hashlib.sha256()
    for v in shard:
        h.update(f"{v.key}\t{v.record.source}\t{v.record.label}\n".encode())
    return h.hexdigest()[:16]


def plan_dict(options: dict, classes: Sequence[str], shards: Sequence[Sequence[PlannedVideo]]) -> dict:
    return {"format": PLAN_FORMAT, "options": options, "classes": list(classes),
            "shards": [shard_digest(s) for s in shards]}


def check_or_write_plan(path: Path, plan: dict) -> bool:
    """Write the plan if new; if one exists it must equal ``plan``. Returns True if it existed."""
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old == plan:
            return True
        diff = ""
        if isinstance(old, dict):
            if old.get("options") != plan["options"]:
                o, n = old.get("options", {}), plan["options"]
                diff = "; options differ: " + ", ".join(
                    f"{k}={o.get(k)!r} (now {n.get(k)!r})" for k in sorted(set(o) | set(n)) if o.get(k) != n.get(k))
            elif old.get("classes") != plan["classes"]:
                diff = "; the class list changed"
            else:
                diff = "; the source listing changed (other videos or order)"
        raise PlanMismatch(f"{path.parent} holds shards built with a different plan{diff}. "
                           "Rerun with --overwrite to rebuild this split, or pick another --out")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, path)
    return False
