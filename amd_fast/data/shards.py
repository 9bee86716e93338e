"""Find the shards of a split, list their samples from the DALI index files, validate, split by rank.

With a manifest, everything here reads only the manifest, the ``.idx`` files, the tars' sizes and the
tar headers of each tar's first and last sample (an index that belongs to another tar is refused at
start-up, not discovered as garbage clip records later): no video is decoded and no tar is scanned, so it
is cheap at start-up even for K400's 240k videos. Every tar needs its index (DALI reads by it, and so does
the eager loader: random access by byte offset).

Without a manifest (a folder of ``<split>-*.tar``, or a list of tars) nothing says the tars come from one
shard build, so every sample's small ``.json`` member is read once (as the codec check does for such sets)
and the tars must agree (:func:`check_one_build`): one class index must name one class in every tar, and
where the build's ``<split>.plan.json`` lies beside a tar, the tar's class names, codec and short side must
be the plan's. Without a plan, tars whose samples all share one codec and short side (what a re-encoding
build writes), with at least ``UNIFORM_MIN_SAMPLES`` samples each, must share them too.
"""
from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from amd_fast.errors import InputError
from amd_fast.shard import format as shard_format
from amd_fast.shard import manifest as shard_manifest
from amd_fast.shard.format import INFO_BYTES, INFO_EXT, TAR_BLOCK, VIDEO_EXTS, ClipInfo

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
    codecs: Optional[Dict[str, int]] = None  # samples by codec, when open_shards read every json (no manifest)

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


def _parse_index(idx_path: Path, tar_path: Path) -> List[List[shard_format.IndexEntry]]:
    """The DALI index: per sample, its members' (ext, data_offset, size, member_name)."""
    try:
        return shard_format.read_index(idx_path)
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot use index {idx_path}: {e}; rebuild it with `wds2idx {tar_path} {idx_path}` "
                         "or rerun `python -m amd_fast.shard`") from e


def _listing(index) -> List[Tuple[str, Dict[str, Tuple[int, int]]]]:
    """Members of each sample: [(key, {ext: (offset, size)})]."""
    keys = shard_format.sample_keys(index)
    return [(key, {ext: (off, size) for ext, off, size, _ in members}) for key, members in zip(keys, index)]


def _verify_hint(tar_path: Path) -> str:
    return f"`python -m amd_fast.shard --verify --out {Path(tar_path).parent}`"


def _check_tar(tar_path: Path, index, idx_path: Path) -> None:
    """Missing or truncated tar (its size vs. the last member its index lists), and an index that does not
    belong to its tar: the tar header before each member of the first and the last sample must name that
    member with its size (a few 512-byte reads per tar)."""
    if not tar_path.is_file():
        raise ShardError(f"shard {tar_path} is missing; rebuild the shards (python -m amd_fast.shard ...)")
    size = tar_path.stat().st_size
    end = max((off + length for members in index for _, off, length, _ in members), default=0)
    ends = index[:1] + index[1:][-1:]  # the first and the last sample
    with open(tar_path, "rb") as f:
        for members in ends:
            for _, off, length, name in members:
                if off + length > size:
                    continue  # past the end: reported as truncation below
                found = _header_at(f, off - TAR_BLOCK)
                if found is None or found[1] != length or not _same_name(found[0], name):
                    what = "no tar header" if found is None else f"{found[0]!r} ({found[1]} bytes)"
                    raise ShardError(
                        f"index {idx_path} does not match shard {tar_path} (another tar's index, or an older copy's): "
                        f"it puts {name} ({length} bytes) at byte {off}, where the tar has {what}; recreate the index "
                        f"(`wds2idx {tar_path} {idx_path}`) or check the folder with {_verify_hint(tar_path)}")
    if size < end:
        raise ShardError(f"shard {tar_path} is truncated ({size} bytes, its index needs {end}); "
                         f"re-copy or rebuild it (python -m amd_fast.shard ... --overwrite)")


def _header_at(f, offset: int) -> Optional[Tuple[str, int]]:
    """(member name, size) of the tar header at ``offset``, or None if there is none."""
    if offset < 0:
        return None
    f.seek(offset)
    try:
        info = tarfile.TarInfo.frombuf(f.read(TAR_BLOCK), "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return info.name, info.size


def _same_name(header_name: str, name: str) -> bool:
    # a GNU / pax long name keeps only its first 100 characters in the member's own header
    return header_name == name or (len(name) > 99 and name.startswith(header_name[:99]))


# Clip records outside these bounds are damage (or an index pointing at the wrong bytes), not video.
MAX_FRAME_SIDE = 1 << 16


def read_clip_info(s: "Sample") -> ClipInfo:
    """The sample's ``.clipinfo`` record, validated: frames, width, height and fps must be positive and the
    sizes plausible, else a ShardError naming the tar and ``--verify`` (the loaders count such a sample as
    unreadable and replace it, instead of planning a clip from garbage)."""
    info = ClipInfo.unpack(read_member(s.tar, s.info))
    if not (info.frames > 0 and 0 < info.width <= MAX_FRAME_SIDE and 0 < info.height <= MAX_FRAME_SIDE
            and info.fps_milli > 0 and info.label >= 0):
        raise ShardError(f"shard {s.tar}: sample {s.key} has an impossible clip record (label {info.label}, "
                         f"{info.frames} frames, {info.width}x{info.height}, fps {info.fps_milli / 1000:g}): the tar "
                         f"is damaged or its .idx belongs to another tar; check with {_verify_hint(s.tar)}")
    return info


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
        if manifest["split"] != split:  # an explicit manifest wins, but never silently (train on val, eval on train)
            log.warning("data.shards %s is the manifest of split %r, read here as split %r; point data.shards at "
                        "the shard folder to read each split's own manifest", manifest_path, manifest["split"], split)
        root = manifest_path.parent
        tar_paths = [root / s["tar"] for s in manifest["shards"]]
        idx_paths = [root / s["index"] if s.get("index") else None for s in manifest["shards"]]
    if not tar_paths:
        raise ShardError(f"no shards listed for split {split!r} in {shards} (0 samples); rebuild it with "
                         "`python -m amd_fast.shard` (its <split>.failures.jsonl says why videos failed) or point "
                         "data.shards at another build")

    tars, indexes, samples, incomplete = [], [], [], []
    for i, tar in enumerate(tar_paths):
        idx = idx_paths[i] or tar.with_suffix(".idx")
        if not tar.is_file():
            raise ShardError(f"shard {tar} is missing; rebuild the shards (python -m amd_fast.shard ...)")
        if idx.is_file():
            index = _parse_index(idx, tar)
        else:
            # DALI needs an index file; we only read the headers here and tell the user.
            raise ShardError(f"index {idx} of shard {tar} is missing; create it with `wds2idx {tar} {idx}` "
                             f"(or rebuild the shards)")
        _check_tar(tar, index, idx)
        listing = _listing(index)
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
    shard_set = ShardSet(tars, indexes, samples, manifest, incomplete)
    if manifest is None and samples:
        shard_set.codecs = check_one_build(shard_set)
    return shard_set


# ---- manifest-less sets: do the tars come from one build? ---------------------------------------------------

# A tar of at least this many samples that all share one codec and short side was (almost surely) re-encoded
# to them by its build; a `--codec copy` tar of real videos rarely is that uniform.
UNIFORM_MIN_SAMPLES = 8


@dataclass
class _TarFacts:
    """What a tar's sample jsons say about the build that wrote it."""

    tar: str
    labels: Dict[int, str] = field(default_factory=dict)  # class index -> class name
    codecs: Dict[str, int] = field(default_factory=dict)
    short_sides: Dict[int, int] = field(default_factory=dict)
    described: int = 0  # samples with a readable json

    def uniform(self) -> Optional[Tuple[str, int]]:
        """(codec, short side) when every one of at least UNIFORM_MIN_SAMPLES samples shares them."""
        if self.described >= UNIFORM_MIN_SAMPLES and len(self.codecs) == 1 and len(self.short_sides) == 1:
            return next(iter(self.codecs)), next(iter(self.short_sides))
        return None


def _tar_facts(tar: str, samples: Sequence[Sample]) -> _TarFacts:
    from .backend import normalize_codec

    facts = _TarFacts(tar)
    with open(tar, "rb") as f:
        for s in samples:
            meta = None
            if s.json is not None:
                f.seek(s.json[0])
                try:
                    meta = json.loads(f.read(s.json[1]))
                except ValueError:
                    meta = None
            if not isinstance(meta, dict):
                facts.codecs["unknown"] = facts.codecs.get("unknown", 0) + 1
                continue
            codec = normalize_codec(meta.get("codec", "unknown"))
            facts.codecs[codec] = facts.codecs.get(codec, 0) + 1
            try:
                idx, name = int(meta["label_index"]), str(meta["label"])
                side = min(int(meta["width"]), int(meta["height"]))
            except (KeyError, TypeError, ValueError):
                continue
            facts.described += 1
            facts.short_sides[side] = facts.short_sides.get(side, 0) + 1
            if facts.labels.setdefault(idx, name) != name:
                raise ShardError(f"shard {tar} itself gives class index {idx} two names ({facts.labels[idx]!r} and "
                                 f"{name!r}); check it with {_verify_hint(tar)} and rebuild it")
    return facts


def _plan_of(tar: str) -> Tuple[Optional[Path], Optional[dict]]:
    """The build plan (``<split>.plan.json``) beside a tar named ``<split>-NNNNNN.tar``, if any."""
    t = Path(tar)
    split = t.name.rsplit("-", 1)[0]
    path = t.parent / f"{split}.plan.json"
    if split == t.name or not path.is_file():
        return None, None
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    return (path, plan) if isinstance(plan, dict) and isinstance(plan.get("classes"), list) else (None, None)


_REFUSE = ("so one label would mean two classes. Keep one build's tars per folder (or point data.shards at "
           "one build's manifest) and rebuild the others into their own --out with `python -m amd_fast.shard`")


def _check_against_plan(f: _TarFacts, plan_path: Path, plan: dict) -> None:
    classes, options = plan["classes"], plan.get("options") or {}
    for idx, name in sorted(f.labels.items()):
        if idx >= len(classes) or classes[idx] != name:
            there = repr(classes[idx]) if idx < len(classes) else f"out of its {len(classes)} classes"
            raise ShardError(f"shard {f.tar} was not written by the build in {plan_path}: its class {idx} is {name!r}, "
                             f"the build's class {idx} is {there} (different class lists), {_REFUSE}")
    codec = options.get("codec")
    if codec and codec != "copy":
        other = sorted(c for c in f.codecs if c not in (codec, "unknown"))
        if other:
            raise ShardError(f"shard {f.tar} was not written by the build in {plan_path}: its samples are "
                             f"{', '.join(other)}, the build's --codec is {codec} (different build options); keep "
                             "one build's tars per folder and rebuild the others into their own --out")
        side = options.get("short_side")
        if side:
            other = sorted(s for s in f.short_sides if s not in (side, side - side % 2))
            if other:
                raise ShardError(f"shard {f.tar} was not written by the build in {plan_path}: its videos have "
                                 f"short side {other[0]}, the build's --short-side is {side} (different build "
                                 "options); keep one build's tars per folder and rebuild the others into their "
                                 "own --out")


def check_one_build(shards: ShardSet) -> Dict[str, int]:
    """Refuse manifest-less tars of different builds (module doc): a ShardError naming two tars and what
    differs. Returns the samples by codec (read on the way, so the backend choice need not read again)."""
    by_tar: Dict[str, List[Sample]] = {}
    for s in shards.samples:
        by_tar.setdefault(s.tar, []).append(s)
    codecs: Dict[str, int] = {}
    first_name: Dict[int, Tuple[str, str]] = {}  # class index -> (name, tar)
    first_index: Dict[str, Tuple[int, str]] = {}  # class name -> (index, tar)
    uniform: Optional[Tuple[Tuple[str, int], str]] = None
    for tar, samples in by_tar.items():
        f = _tar_facts(tar, samples)
        for c, n in f.codecs.items():
            codecs[c] = codecs.get(c, 0) + n
        for idx, name in sorted(f.labels.items()):
            seen_name, seen_tar = first_name.setdefault(idx, (name, tar))
            if seen_name != name:
                raise ShardError(f"shards {seen_tar} and {tar} come from different builds: class {idx} is "
                                 f"{seen_name!r} in the first and {name!r} in the second (different class lists), "
                                 f"{_REFUSE}")
            seen_idx, seen_tar = first_index.setdefault(name, (idx, tar))
            if seen_idx != idx:
                raise ShardError(f"shards {seen_tar} and {tar} come from different builds: class {name!r} is "
                                 f"index {seen_idx} in the first and {idx} in the second (different class lists), "
                                 f"{_REFUSE}")
        plan_path, plan = _plan_of(tar)
        if plan is not None:
            _check_against_plan(f, plan_path, plan)
        elif f.uniform() is not None:
            if uniform is None:
                uniform = (f.uniform(), tar)
            elif uniform[0] != f.uniform():
                (c0, s0), t0 = uniform
                c1, s1 = f.uniform()
                raise ShardError(f"shards {t0} and {tar} come from different builds: every sample of the first is "
                                 f"{c0} with short side {s0}, of the second {c1} with short side {s1} (built with "
                                 "different options, e.g. --codec or --short-side); keep one build's tars per folder (or point data.shards "
                                 "at one build's manifest) and rebuild the others into their own --out")
    return dict(sorted(codecs.items()))


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
    """The bytes of one member (``where`` = (data offset, size) from the index); ShardError if cut off."""
    off, size = where
    with open(tar, "rb") as f:
        f.seek(off)
        data = f.read(size)
    if len(data) != size:
        raise ShardError(f"shard {tar} is truncated at byte {off + len(data)}; rebuild it")
    return data
