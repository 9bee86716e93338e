"""Find the shards of a split, list their samples from the DALI index files, validate, split by rank.

Everything here reads only the manifest, the ``.idx`` files and the tars' sizes: no video is
decoded and no tar is scanned, so it is cheap at start-up even for K400's 240k videos. Every tar
needs its index (DALI reads by it, and so does the eager loader: random access by byte offset).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from amd_fast.errors import InputError
from amd_fast.shard import format as shard_format
from amd_fast.shard import manifest as shard_manifest
from amd_fast.shard.format import INFO_BYTES, INFO_EXT, VIDEO_EXTS

log = logging.getLogger(__name__)


class ShardError(InputError):
    """A shard file is missing, truncated or unreadable (the message names the file)."""


@dataclass(frozen=True)
class Sample:
    """Where one sample's members live inside its tar (byte offsets of the member data)."""

    tar: str
    key: str
    video: Tuple[int, int]  # (offset, size)
    info: Tuple[int, int]
    json: Optional[Tuple[int, int]] = None


@dataclass
class ShardSet:
    """The tars of one split, their samples in stored order, and what the manifest says."""

    tars: List[str]
    indexes: List[str]
    samples: List[Sample]
    manifest: Optional[dict] = None
    incomplete: List[str] = field(default_factory=list)  # "tar:key (missing ...)" of skipped samples

    @property
    def num_samples(self) -> int:
        return len(self.samples)


def _manifest_for(shards: Union[str, Path], split: str) -> Tuple[Optional[Path], List[Path]]:
    """(manifest path or None, tar paths) for a manifest file, a folder or a single tar."""
    p = Path(shards)
    if p.is_file() and p.name.endswith(".json"):
        return p, []
    if p.is_file() and p.suffix == ".tar":
        return None, [p]
    if p.is_dir():
        m = p / f"{split}.manifest.json"
        if m.is_file():
            return m, []
        tars = sorted(p.glob(f"{split}-*.tar"))
        if tars:
            log.warning("no %s in %s: reading its %d %s-*.tar without a manifest", m.name, p, len(tars), split)
            return None, tars
        raise ShardError(f"{p} has neither {m.name} nor {split}-*.tar; build shards with "
                         f"`python -m amd_fast.shard --out {p}` or point data.shards at a manifest")
    if p.exists():
        raise ShardError(f"shards path {p} is neither a manifest (.json), a shard folder nor a .tar file; point "
                         "data.shards at what `python -m amd_fast.shard --out DIR` wrote")
    raise ShardError(f"shards path {p} does not exist (expected a manifest .json, a shard folder or .tar files)")


def read_manifest(path: Path) -> dict:
    """The shard tool's validated manifest, with its errors raised as ShardError."""
    try:
        return shard_manifest.read_manifest(path)
    except ValueError as e:
        raise ShardError(str(e)) from e


def _parse_index(idx_path: Path, tar_path: Path) -> List[Tuple[str, Dict[str, Tuple[int, int]]]]:
    """Members of each sample from the DALI index: [(key, {ext: (offset, size)})]."""
    try:
        index = shard_format.read_index(idx_path)
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot use index {idx_path}: {e}; rebuild it with `wds2idx {tar_path} {idx_path}` "
                         "or rerun `python -m amd_fast.shard`") from e
    keys = shard_format.sample_keys(index)
    return [(key, {ext: (off, size) for ext, off, size, _ in members}) for key, members in zip(keys, index)]


def _check_tar(tar_path: Path, listing) -> None:
    """Missing or truncated tar, from its size vs. the last member its index lists."""
    if not tar_path.is_file():
        raise ShardError(f"shard {tar_path} is missing; rebuild the shards (python -m amd_fast.shard ...)")
    size = tar_path.stat().st_size
    end = max((o + s for _, members in listing for (o, s) in members.values()), default=0)
    if size < end:
        raise ShardError(f"shard {tar_path} is truncated ({size} bytes, its index needs {end}); "
                         f"re-copy or rebuild it (python -m amd_fast.shard ... --overwrite)")


def open_shards(shards: Union[str, Path, Sequence[Union[str, Path]]], split: str = "train") -> ShardSet:
    """Resolve ``shards`` (manifest / folder / tar list), list and validate every sample."""
    if isinstance(shards, (list, tuple)):
        manifest_path, tar_paths = None, [Path(t) for t in shards]
    else:
        manifest_path, tar_paths = _manifest_for(shards, split)
    manifest = None
    idx_paths: List[Optional[Path]] = [None] * len(tar_paths)
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        root = manifest_path.parent
        tar_paths = [root / s["tar"] for s in manifest["shards"]]
        idx_paths = [root / s["index"] if s.get("index") else None for s in manifest["shards"]]
    if not tar_paths:
        raise ShardError(f"no shards listed for split {split!r} in {shards}")

    tars, indexes, samples, incomplete = [], [], [], []
    for i, tar in enumerate(tar_paths):
        idx = idx_paths[i] or tar.with_suffix(".idx")
        if not tar.is_file():
            raise ShardError(f"shard {tar} is missing; rebuild the shards (python -m amd_fast.shard ...)")
        if idx.is_file():
            listing = _parse_index(idx, tar)
        else:
            # DALI needs an index file; we only read the headers here and tell the user.
            raise ShardError(f"index {idx} of shard {tar} is missing; create it with `wds2idx {tar} {idx}` "
                             f"(or rebuild the shards)")
        _check_tar(tar, listing)
        n_before = len(samples)
        for key, members in listing:
            video = next((members[e] for e in VIDEO_EXTS if e in members), None)
            info = members.get(INFO_EXT)
            if video is None or info is None or info[1] != INFO_BYTES:
                what = "video" if video is None else f"label/frame info (.{INFO_EXT})"
                incomplete.append(f"{tar}:{key} (missing {what})")
                continue
            samples.append(Sample(str(tar), key, video, info, members.get("json")))
        if len(samples) == n_before:
            log.warning("shard %s has no complete sample", tar)
        tars.append(str(tar))
        indexes.append(str(idx))
    return ShardSet(tars, indexes, samples, manifest, incomplete)


def rank_range(num_samples: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Contiguous [begin, end) of the samples one rank reads: the split DALI's reader uses for
    ``shard_id=rank, num_shards=world_size`` (floor(N*r/W) .. floor(N*(r+1)/W))."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def epoch_part(rank: int, epoch: int, world_size: int) -> int:
    """Which of the ``world_size`` contiguous parts a rank reads in ``epoch``: parts rotate by one
    per epoch, as DALI's reader does by itself (``stick_to_shard=False``), so over ``world_size``
    epochs every rank sees all the data while each epoch's parts stay disjoint."""
    return (rank + epoch) % world_size


def rank_batches(num_samples: int, world_size: int, batch_size: int, drop_last: bool) -> Tuple[int, int]:
    """(samples, batches) per rank and epoch, equal on every rank so DDP steps stay in lockstep:
    like DistributedSampler, the parts (which differ by at most one sample) are cut to the
    smallest with ``drop_last`` and padded to the largest without (the padding repeats samples)."""
    used = num_samples // world_size if drop_last else -(-num_samples // world_size)
    return used, (used // batch_size if drop_last else -(-used // batch_size))


def epoch_order(num_samples: int, rank: int, world_size: int, epoch: int, seed: int, shuffle: bool,
                num_rank_samples: int) -> np.ndarray:
    """Indices (into all samples) ``rank`` reads in ``epoch``, in reading order: its part for the epoch
    (:func:`epoch_part`), permuted from ``(seed, epoch, rank)`` when ``shuffle``, cut or padded to the
    common per-rank length (padding reads on into the next part's first samples). Both loaders use it."""
    lo, hi = rank_range(num_samples, epoch_part(rank, epoch, world_size), world_size)
    order = np.arange(lo, hi)
    if shuffle:
        order = np.random.default_rng([seed, epoch, rank]).permutation(order)
    if len(order) >= num_rank_samples:
        return order[:num_rank_samples]
    return np.concatenate([order, np.arange(hi, hi + num_rank_samples - len(order)) % num_samples])


def read_member(tar: str, where: Tuple[int, int]) -> bytes:
    off, size = where
    with open(tar, "rb") as f:
        f.seek(off)
        data = f.read(size)
    if len(data) != size:
        raise ShardError(f"shard {tar} is truncated at byte {off + len(data)}; rebuild it")
    return data
