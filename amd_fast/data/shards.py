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

``shards`` may also be an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``https://...``: see ``remote``)
with the same layout. Opening such a set costs one listing, one GET per manifest / index and a few ranged GETs
per tar (its headers), issued ``data.remote_concurrency`` at a time; every sample is then read by one ranged
GET (:func:`read_sample`). A 404 / 403 / missing manifest is a ShardError naming the URL and the fix. For a
manifest-less URL folder, a ``<split>.plan.json`` beside the tars is not consulted (the uniformity rule is).
"""
from __future__ import annotations

import json
import logging
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from amd_fast.errors import InputError
from amd_fast.shard import format as shard_format
from amd_fast.shard import manifest as shard_manifest
from amd_fast.shard.format import INFO_BYTES, INFO_EXT, TAR_BLOCK, VIDEO_EXTS, ClipInfo

from . import remote
from .remote import is_url, redact

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
    if is_url(shards):
        return _remote_manifest_for(str(shards), split)
    p = Path(remote.strip_file_scheme(str(shards)))
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


def _remote_manifest_for(url: str, split: str):
    """The URL counterpart of :func:`_manifest_for` (one GET or one listing)."""
    url = url.rstrip("/")
    if url.endswith(".json"):
        return url, []
    if url.endswith(".tar"):
        return None, [url]
    manifest = remote.join(url, f"{split}.manifest.json")
    try:
        remote.read_bytes(manifest)
        return manifest, []
    except remote.RemoteNotFound:
        pass
    except remote.RemoteError as e:
        raise ShardError(str(e)) from None
    try:
        tars = sorted(u for u in remote.sizes_under(url) if u.rsplit("/", 1)[-1].startswith(f"{split}-")
                      and u.endswith(".tar"))
    except remote.RemoteError as e:
        raise ShardError(str(e)) from None
    if tars:
        log.warning("no %s.manifest.json in %s: reading its %d %s-*.tar without a manifest", split, redact(url),
                    len(tars), split)
        return None, tars
    raise ShardError(f"{redact(manifest)} does not exist, nor any {split}-*.tar beside it; upload the shard folder "
                     f"that `python -m amd_fast.shard --out DIR` wrote"
                     + (f" (e.g. `aws s3 sync DIR {redact(url)}`)" if remote.protocol(url) in ("s3", "s3a") else "")
                     + " or fix data.shards")


def _via_local_copy(url: str, name: str, parse):
    """``parse(local path)`` of a copy of the object at ``url`` (the shard tool's readers take paths), its
    messages naming the URL instead of the copy."""
    import tempfile

    try:
        data = remote.read_bytes(url)
    except remote.RemoteError as e:
        raise ShardError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="amd-remote-") as tmp:
        local = Path(tmp) / name
        local.write_bytes(data)
        try:
            return parse(local)
        except (OSError, ValueError) as e:
            raise type(e)(str(e).replace(str(local), redact(url))) from None


def read_manifest(path: Path) -> dict:
    """The shard tool's validated manifest, with its errors raised as ShardError."""
    if is_url(path):
        return _via_local_copy(str(path), str(path).rsplit("/", 1)[-1], read_manifest)
    try:
        return shard_manifest.read_manifest(path)
    except ValueError as e:
        raise ShardError(str(e)) from e


def _parse_index(idx_path: Path, tar_path: Path) -> List[List[shard_format.IndexEntry]]:
    """The DALI index: per sample, its members' (ext, data_offset, size, member_name)."""
    try:
        if is_url(idx_path):
            return _via_local_copy(str(idx_path), "index.idx", shard_format.read_index)
        return shard_format.read_index(idx_path)
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot use index {idx_path}: {e}; rebuild it with `wds2idx {tar_path} {idx_path}` "
                         "or rerun `python -m amd_fast.shard`") from e


def _listing(index) -> List[Tuple[str, Dict[str, Tuple[int, int]]]]:
    """Members of each sample: [(key, {ext: (offset, size)})]."""
    keys = shard_format.sample_keys(index)
    return [(key, {ext: (off, size) for ext, off, size, _ in members}) for key, members in zip(keys, index)]


def _verify_hint(tar_path: Path) -> str:
    if is_url(tar_path):  # --verify reads local folders: verify the folder that was uploaded
        return "`python -m amd_fast.shard --verify --out <the local folder these shards were uploaded from>`"
    return f"`python -m amd_fast.shard --verify --out {Path(tar_path).parent}`"


def _header_checks(index) -> List[Tuple[int, int, str]]:
    """(data offset, size, member name) of each member of the first and the last sample."""
    ends = index[:1] + index[1:][-1:]
    return [(off, length, name) for members in ends for _, off, length, name in members]


def _check_tar(tar_path: Path, index, idx_path: Path, size: Optional[int] = None,
               headers: Optional[Dict[int, bytes]] = None) -> None:
    """Missing or truncated tar (its size vs. the last member its index lists), and an index that does not
    belong to its tar: the tar header before each member of the first and the last sample must name that
    member with its size (a few 512-byte reads per tar). For a URL tar, ``size`` and ``headers`` (the
    512-byte blocks by offset, read in one batch for all tars) come from the caller."""
    if size is None:
        if not tar_path.is_file():
            raise ShardError(f"shard {tar_path} is missing; rebuild the shards (python -m amd_fast.shard ...)")
        size = tar_path.stat().st_size
        with open(tar_path, "rb") as f:
            headers = {}
            for off, length, _ in _header_checks(index):
                if off + length <= size and off >= TAR_BLOCK:
                    f.seek(off - TAR_BLOCK)
                    headers[off - TAR_BLOCK] = f.read(TAR_BLOCK)
    end = max((off + length for members in index for _, off, length, _ in members), default=0)
    shown = redact(tar_path)
    for off, length, name in _header_checks(index):
        if off + length > size:
            continue  # past the end: reported as truncation below
        found = _header_in(headers.get(off - TAR_BLOCK))
        if found is None or found[1] != length or not _same_name(found[0], name):
            what = "no tar header" if found is None else f"{found[0]!r} ({found[1]} bytes)"
            raise ShardError(
                f"index {redact(idx_path)} does not match shard {shown} (another tar's index, or an older "
                f"copy's): it puts {name} ({length} bytes) at byte {off}, where the tar has {what}; recreate "
                f"the index (`wds2idx {shown} {redact(idx_path)}`) or check the folder with "
                f"{_verify_hint(tar_path)}")
    if size < end:
        raise ShardError(f"shard {shown} is truncated ({size} bytes, its index needs {end}); "
                         f"re-copy or rebuild it (python -m amd_fast.shard ... --overwrite)")


def _header_in(block: Optional[bytes]) -> Optional[Tuple[str, int]]:
    """(member name, size) of the tar header ``block``, or None if it is none."""
    if block is None:
        return None
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return info.name, info.size


def _same_name(header_name: str, name: str) -> bool:
    # a GNU / pax long name keeps only its first 100 characters in the member's own header
    return header_name == name or (len(name) > 99 and name.startswith(header_name[:99]))


# Clip records outside these bounds are damage (or an index pointing at the wrong bytes), not video.
MAX_FRAME_SIDE = 1 << 16


def read_clip_info(s: "Sample", raw: Optional[bytes] = None) -> ClipInfo:
    """The sample's ``.clipinfo`` record (``raw``: its bytes, when already read), validated: frames, width,
    height and fps must be positive and the sizes plausible, else a ShardError naming the tar and ``--verify``
    (the loaders count such a sample as unreadable and replace it, instead of planning a clip from garbage)."""
    info = ClipInfo.unpack(read_member(s.tar, s.info) if raw is None else raw)
    if not (info.frames > 0 and 0 < info.width <= MAX_FRAME_SIDE and 0 < info.height <= MAX_FRAME_SIDE
            and info.fps_milli > 0 and info.label >= 0):
        raise ShardError(f"shard {s.tar}: sample {s.key} has an impossible clip record (label {info.label}, "
                         f"{info.frames} frames, {info.width}x{info.height}, fps {info.fps_milli / 1000:g}): the tar "
                         f"is damaged or its .idx belongs to another tar; check with {_verify_hint(s.tar)}")
    return info


def open_shards(shards: Union[str, Path, Sequence[Union[str, Path]]], split: str = "train") -> ShardSet:
    """Resolve ``shards`` (manifest / folder / tar list, local or URL), list and validate every sample."""
    if isinstance(shards, (list, tuple)):
        manifest_path, tar_paths = None, [t if is_url(t) else Path(remote.strip_file_scheme(str(t))) for t in shards]
    else:
        manifest_path, tar_paths = _manifest_for(shards, split)
    for u in [manifest_path, *tar_paths]:
        if remote.secrets_in(u):
            raise ShardError(f"data.shards {redact(u)} carries {remote.secrets_in(u)}: credentials in a URL end up in "
                             "config.yaml and logs; give them the backend's standard way (AWS_* variables, a "
                             "profile, an instance role, GOOGLE_APPLICATION_CREDENTIALS) and drop them from the URL")
    manifest = None
    idx_paths: List[Optional[Union[Path, str]]] = [None] * len(tar_paths)
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        shown = redact(manifest_path)
        if manifest["split"] != split:  # an explicit manifest wins, but never silently (train on val, eval on train)
            log.warning("data.shards %s is the manifest of split %r, read here as split %r; point data.shards at "
                        "the shard folder to read each split's own manifest", shown, manifest["split"], split)
        if is_url(manifest_path):
            root = remote.parent(str(manifest_path))
            tar_paths = [remote.join(root, s["tar"]) for s in manifest["shards"]]
            idx_paths = [remote.join(root, s["index"]) if s.get("index") else None for s in manifest["shards"]]
        else:
            root = manifest_path.parent
            tar_paths = [root / s["tar"] for s in manifest["shards"]]
            idx_paths = [root / s["index"] if s.get("index") else None for s in manifest["shards"]]
    if not tar_paths:
        raise ShardError(f"no shards listed for split {split!r} in {redact(shards)} (0 samples); rebuild it with "
                         "`python -m amd_fast.shard` (its <split>.failures.jsonl says why videos failed) or point "
                         "data.shards at another build")

    if any(is_url(t) for t in tar_paths):
        idxs = [idx or (str(tar)[:-len(".tar")] + ".idx" if str(tar).endswith(".tar") else str(tar) + ".idx")
                for tar, idx in zip(tar_paths, idx_paths)]
        checked = _open_remote_tars([str(t) for t in tar_paths], [str(i) for i in idxs])
    else:
        checked = []
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
            checked.append((str(tar), str(idx), index))

    tars, indexes, samples, incomplete = [], [], [], []
    for tar, idx, index in checked:
        listing = _listing(index)
        n_before = len(samples)
        for key, members in listing:
            video = next((members[e] for e in VIDEO_EXTS if e in members), None)
            info = members.get(INFO_EXT)
            if video is None or info is None or info[1] != INFO_BYTES:
                what = "video" if video is None else f"label/frame info (.{INFO_EXT})"
                incomplete.append(f"{redact(tar)}:{key} (missing {what})")
                continue
            samples.append(Sample(tar, key, video, info, members.get("json")))
        if len(samples) == n_before:
            log.warning("shard %s has no complete sample", redact(tar))
        tars.append(tar)
        indexes.append(idx)
    shard_set = ShardSet(tars, indexes, samples, manifest, incomplete)
    if manifest is None and samples:
        shard_set.codecs = check_one_build(shard_set)
    return shard_set


def _open_remote_tars(tars: List[str], idxs: List[str]) -> List[Tuple[str, str, list]]:
    """[(tar, idx, parsed index)] of URL tars, checked as :func:`_check_tar` does, in three batches of
    concurrent requests (listings for the sizes, the indexes, the headers), not three round trips per tar."""
    try:
        sizes: Dict[str, int] = {}
        for folder in dict.fromkeys(remote.parent(t) for t in tars):
            sizes.update({u: n for u, n in remote.sizes_under(folder).items() if n is not None})
        for t in tars:
            # not listed (no list permission, a listing that lags) or listed without a size (an HTTP index page)
            if t not in sizes:
                sizes[t] = remote.size_of(t)
    except remote.RemoteNotFound as e:
        raise ShardError(f"shard {e.url} is missing; upload it again (or rebuild the shards with "
                         "`python -m amd_fast.shard`) and fix the manifest's folder") from None
    except remote.RemoteError as e:
        raise ShardError(str(e)) from None
    raw = remote.read_ranges([(i, None, None) for i in idxs], return_exceptions=True)
    indexes = []
    for tar, idx, data in zip(tars, idxs, raw):
        if isinstance(data, remote.RemoteNotFound):
            raise ShardError(f"index {redact(idx)} of shard {redact(tar)} is missing; create it with `wds2idx` "
                             "next to the tar and upload it (or rebuild the shards)")
        if isinstance(data, Exception):
            raise ShardError(str(data))
        indexes.append(_via_bytes(idx, tar, data))
    wanted = [(t, off - TAR_BLOCK) for t, index in zip(tars, indexes) for off, length, _ in _header_checks(index)
              if off >= TAR_BLOCK and off + length <= sizes[t]]
    blocks = remote.read_ranges([(t, o, o + TAR_BLOCK) for t, o in wanted], return_exceptions=True)
    headers: Dict[str, Dict[int, bytes]] = {t: {} for t in tars}
    for (t, o), b in zip(wanted, blocks):
        if isinstance(b, Exception):
            raise ShardError(str(b))
        headers[t][o] = b
    out = []
    for tar, idx, index in zip(tars, idxs, indexes):
        _check_tar(tar, index, idx, sizes[tar], headers[tar])
        remote.note_size(tar, sizes[tar])
        out.append((tar, idx, index))
    return out


def _via_bytes(idx_url: str, tar_url: str, data: bytes):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="amd-remote-") as tmp:
        local = Path(tmp) / "index.idx"
        local.write_bytes(data)
        try:
            return shard_format.read_index(local)
        except (OSError, ValueError) as e:
            msg = str(e).replace(str(local), redact(idx_url))
            raise ShardError(f"cannot use index {redact(idx_url)}: {msg}; rebuild it with `wds2idx` next to "
                             f"{redact(tar_url)} or rerun `python -m amd_fast.shard`, and upload it") from None


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
    with_json = [s for s in samples if s.json is not None]
    if is_url(tar):  # every json of the tar in one batch of concurrent ranged reads
        raw = remote.read_ranges([(tar, s.json[0], s.json[0] + s.json[1]) for s in with_json])
    else:
        with open(tar, "rb") as f:
            raw = []
            for s in with_json:
                f.seek(s.json[0])
                raw.append(f.read(s.json[1]))
    jsons = {id(s): r for s, r in zip(with_json, raw)}
    for s in samples:
        meta = None
        if s.json is not None:
            try:
                meta = json.loads(jsons[id(s)])
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
    """The build plan (``<split>.plan.json``) beside a tar named ``<split>-NNNNNN.tar``, if any (local tars)."""
    if is_url(tar):
        return None, None
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
    """The bytes of one member (``where`` = (data offset, size) from the index); ShardError if cut off. A URL
    tar is read by one ranged GET (retried; a failure is an OSError, see ``remote``)."""
    off, size = where
    if is_url(tar):
        data = remote.read_range(tar, off, off + size)
    else:
        with open(tar, "rb") as f:
            f.seek(off)
            data = f.read(size)
    if len(data) != size:
        raise ShardError(f"shard {redact(tar)} is truncated at byte {off + len(data)}; rebuild it")
    return data


def _span(s: Sample) -> Tuple[int, int]:
    """(offset, size) of the bytes spanning the sample's clip record and video (adjacent in the tar)."""
    lo = min(s.video[0], s.info[0])
    hi = max(s.video[0] + s.video[1], s.info[0] + s.info[1])
    return lo, hi - lo


def _split_span(s: Sample, lo: int, span: bytes) -> Tuple[ClipInfo, bytes]:
    if len(span) != max(s.video[0] + s.video[1], s.info[0] + s.info[1]) - lo:
        raise ShardError(f"shard {redact(s.tar)} is truncated at byte {lo + len(span)}; rebuild it")
    info = read_clip_info(s, span[s.info[0] - lo:s.info[0] - lo + s.info[1]])
    return info, span[s.video[0] - lo:s.video[0] - lo + s.video[1]]


def read_sample(s: Sample) -> Tuple[ClipInfo, bytes]:
    """The sample's validated clip record and its encoded video, in one read: a sample's members are
    adjacent in its tar, so one read (one ranged GET on object storage) spans both."""
    lo, size = _span(s)
    return _split_span(s, lo, read_member(s.tar, (lo, size)))


# What reading a sample may raise; the loaders count such a sample as unreadable (``data.on_bad_sample``).
# Remote failures are OSError subclasses (remote.RemoteError: not found, forbidden, unavailable after retries).
READ_ERRORS = (OSError, ShardError, struct.error)


def read_samples(samples: Sequence[Sample], concurrency: Optional[int] = None
                 ) -> List[Union[Tuple[ClipInfo, bytes], Exception]]:
    """:func:`read_sample` of each sample, in order; a sample that cannot be read gives its exception
    (one of :data:`READ_ERRORS`: OSError, ShardError, struct.error) in its place, for the caller to count and
    replace. The eager loader's workers call this once per batch. Samples of URL tars are fetched together,
    ``concurrency`` ranged GETs in flight (default ``data.remote_concurrency``; local files ignore it)."""
    out: List[Union[Tuple[ClipInfo, bytes], Exception, None]] = [None] * len(samples)
    far = [k for k, s in enumerate(samples) if is_url(s.tar)]
    if far:
        spans = [_span(samples[k]) for k in far]
        raw = remote.read_ranges([(samples[k].tar, lo, lo + n) for k, (lo, n) in zip(far, spans)],
                                 concurrency=concurrency, return_exceptions=True)
        for k, (lo, _), data in zip(far, spans, raw):
            try:
                if isinstance(data, Exception):
                    raise data
                out[k] = _split_span(samples[k], lo, data)
            except READ_ERRORS as e:
                out[k] = e
    for k, s in enumerate(samples):
        if out[k] is None:
            try:
                out[k] = read_sample(s)
            except READ_ERRORS as e:
                out[k] = e
    return out  # type: ignore[return-value]
