"""Dataset layouts -> labelled video records.

Each ``load_*`` function reads one on-disk layout and returns a :class:`SourceIndex`:
the class names (index = position) and, per requested split, the list of
:class:`VideoRecord`. Missing roots or annotation files raise :class:`LayoutError`
naming the expected layout; a video file listed in the annotations but absent on disk
is kept as a record (it becomes a logged failure, like any unreadable video), because
real Kinetics/SSv2 downloads always miss some videos.

Nothing listed is dropped without a word: a listed video is built, or logged as a failure, or counted
in :attr:`SourceIndex.left_out` (its split was not asked for; the build logs the counts with the
``--splits`` that would include them and records them in the manifest). Split names match
case-insensitively everywhere (``Train`` rows, a ``Train/`` folder and ``--splits train`` are one split).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from amd_fast.errors import InputError

from .format import CONTAINER_OF_SUFFIX

log = logging.getLogger(__name__)

VIDEO_EXTS = tuple(CONTAINER_OF_SUFFIX)  # source files the folder layout picks up


class LayoutError(InputError):
    """The dataset folder does not look like the layout asked for."""


class UnknownLabelError(InputError):
    """A record's label is not in the class list."""


@dataclass(frozen=True)
class VideoRecord:
    """One input video. ``path`` is None for synthetic clips (``source`` names them)."""

    source: str  # what the failures log and the sample json call it (path or synthetic://...)
    label: int
    stem: str  # raw name the key is derived from (made tar-safe by keys.make_keys)
    path: Optional[Path] = None
    size: int = 0  # source bytes (0 if missing); used by --shard-bytes
    where: str = field(default="", compare=False)  # where the listing names it ("train.csv line 7"), for errors
    clip_id: str = field(default="", compare=False)  # what identifies the clip when not its path (K400: id+times)

    @property
    def identity(self) -> str:
        """Two records with the same identity are the same video (see :func:`drop_duplicates`)."""
        if self.clip_id or self.path is None:
            return self.clip_id or self.source
        try:
            return str(self.path.resolve())
        except (RuntimeError, OSError):  # a symlink loop: it fails to read later and is logged as a failure
            return str(self.path.absolute())


@dataclass
class SourceIndex:
    classes: List[str]
    splits: Dict[str, List[VideoRecord]]
    # Listed videos not built because their split was not requested: split name -> count.
    left_out: Dict[str, int] = field(default_factory=dict)


def _require(path: Path, layout: str) -> Path:
    if not path.exists():
        raise LayoutError(f"{path} not found. Expected layout:\n{layout}")
    return path


def _record(path: Path, label: int, stem: Optional[str] = None, where: str = "", clip_id: str = "") -> VideoRecord:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return VideoRecord(source=str(path), label=label, stem=stem or path.stem, path=path, size=size, where=where,
                       clip_id=clip_id)


class DuplicateError(LayoutError):
    """The listing names one video several times with different labels."""


def drop_duplicates(index: SourceIndex) -> SourceIndex:
    """One record per video and split. A video listed again with the same label is kept once (warned);
    listed with different labels it is an error naming the videos and where they are listed. A video
    in two splits is warned about (train/val leakage), not changed."""
    first_split: Dict[str, str] = {}
    out = {}
    for split, recs in index.splits.items():
        seen: Dict[str, VideoRecord] = {}
        kept, repeats, conflicts = [], [], []
        for r in recs:
            prev = seen.get(r.identity)
            if prev is None:
                seen[r.identity] = r
                kept.append(r)
            elif prev.label == r.label:
                repeats.append(r)
            else:
                conflicts.append((prev, r))
        if conflicts:
            shown = "; ".join(f"{b.clip_id or b.source}: {index.classes[a.label]!r} ({a.where}) vs "
                              f"{index.classes[b.label]!r} ({b.where})" for a, b in conflicts[:5])
            raise DuplicateError(f"split {split!r} lists {len(conflicts)} video(s) again with another label: {shown}"
                                 f"{' ...' if len(conflicts) > 5 else ''}. Fix the listing so each video has one label")
        if repeats:
            log.warning("split %s lists %d video(s) more than once with the same label; keeping each once "
                        "(e.g. %s, again at %s)", split, len(repeats), repeats[0].clip_id or repeats[0].source,
                        repeats[0].where or "?")
        leaked = [r for r in kept if first_split.setdefault(r.identity, split) != split]
        if leaked:
            log.warning("%d video(s) of split %s are also in split %s (e.g. %s): evaluation would see training "
                        "videos", len(leaked), split, first_split[leaked[0].identity], leaked[0].source)
        out[split] = kept
    return SourceIndex(index.classes, out, dict(index.left_out))


def _read_text(path: Path, layout: str) -> str:
    """A listing's text; a folder, binary or non-UTF-8 file is a LayoutError, not a traceback."""
    if _require(path, layout).is_dir():
        raise LayoutError(f"{path} is a folder, not a listing. Expected:\n{layout}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LayoutError(f"{path} is not a UTF-8 text file ({e.reason} at byte {e.start}). Expected:\n{layout}") \
            from None
    if "\0" in text:
        raise LayoutError(f"{path} is a binary file, not a text listing. Expected:\n{layout}")
    return text


def _index_of(classes: Sequence[str]) -> Dict[str, int]:
    return {c: i for i, c in enumerate(classes)}


def _label(lookup: Dict[str, int], name: str, where: str) -> int:
    try:
        return lookup[name]
    except KeyError:
        raise UnknownLabelError(
            f"unknown label {name!r} in {where}: not in the class list ({len(lookup)} classes). "
            "Fix the annotation, or pass --classes FILE listing every class"
        ) from None


def _check_splits(splits: Sequence[str], allowed: Sequence[str], src: str) -> None:
    bad = [s for s in splits if s.lower() not in allowed]
    if bad:
        raise LayoutError(f"--src {src} has splits {', '.join(allowed)}; got {', '.join(bad)}")


def read_classes_file(path: Path) -> List[str]:
    """One class name per line; the line order is the class index."""
    names = [l.strip() for l in _read_text(path, "a text file with one class name per line").splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise LayoutError(f"{path}: duplicate class names")
    return names


# --- Kinetics-400 -------------------------------------------------------------------------

K400_CVDF = """  ROOT/annotations/{train,val,test}.csv   (label,youtube_id,time_start,time_end,split)
  ROOT/{train,val,test}/<youtube_id>_<start:06d>_<end:06d>.mp4
or the VideoMAE list layout:
  ROOT/{train,val,test}.csv               ('<path> <label>' per line; label = index or name)"""


def load_kinetics400(root: Path, splits: Sequence[str], classes_file: Optional[Path] = None) -> SourceIndex:
    """CVDF download (annotations/*.csv) or the VideoMAE list layout (ROOT/<split>.csv)."""
    _require(root, K400_CVDF)
    if (root / "annotations").is_dir():
        return _load_k400_cvdf(root, splits, classes_file)
    if any(_child(root, f"{s}.csv").exists() for s in splits):
        return load_list_layout(root, splits, classes_file, layout=K400_CVDF)
    raise LayoutError(f"{root} has neither annotations/ nor {'/'.join(s + '.csv' for s in splits)}. "
                      f"Expected layout:\n{K400_CVDF}")


def _load_k400_cvdf(root: Path, splits: Sequence[str], classes_file: Optional[Path]) -> SourceIndex:
    _check_splits(splits, ("train", "val", "test"), "kinetics400")
    rows: Dict[str, List[dict]] = {}
    for split in ("train", "val", "test"):
        ann = root / "annotations" / f"{split}.csv"
        if split in splits:
            _require(ann, K400_CVDF)
        if ann.exists():
            reader = csv.DictReader(io.StringIO(_read_text(ann, K400_CVDF), newline=""))
            need = {"label", "youtube_id", "time_start", "time_end"}
            try:
                if not need <= set(reader.fieldnames or ()):
                    raise LayoutError(f"{ann}: header must contain {sorted(need)}; got {reader.fieldnames}. "
                                      f"Expected layout:\n{K400_CVDF}")
                rows[split] = list(reader)
            except csv.Error as e:
                raise LayoutError(f"{ann}: not a readable CSV ({e}). Expected layout:\n{K400_CVDF}") from None
    if classes_file:
        classes = read_classes_file(classes_file)
    else:
        # The CVDF annotations carry label names only; sorted names are the de-facto index
        # order (what the VideoMAE/mmaction lists use). Union over all annotation files
        # present, so train and val share one class list.
        classes = sorted({r["label"] for rs in rows.values() for r in rs if r.get("label")})
    log.info("kinetics400: %d classes%s", len(classes), "" if len(classes) == 400 else " (not the 400 of the full dataset)")
    lookup = _index_of(classes)
    out = {}
    for split in splits:
        recs = []
        for line, r in enumerate(rows[split], start=2):
            where = f"annotations/{split}.csv line {line}"
            try:
                name = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
            except (TypeError, ValueError):  # a short row (missing fields are None) or a non-numeric time
                raise LayoutError(f"{where}: expected label,youtube_id,time_start,time_end with numeric times, got "
                                  f"{_row_text(r)}; fix or delete that line") from None
            if not r["youtube_id"].strip() or not (r["label"] or "").strip():
                raise LayoutError(f"{where}: empty youtube_id or label in {_row_text(r)}; fix or delete that line")
            label = _label(lookup, r["label"], where)
            path = root / split / f"{name}.mp4"
            if not path.exists():  # some mirrors keep class sub-folders
                alt = root / split / r["label"] / f"{name}.mp4"
                path = alt if alt.exists() else path
            recs.append(_record(path, label, name, where=where, clip_id=name))
        out[split] = recs
    left_out = {s: len(rs) for s, rs in rows.items() if s not in splits and rs}
    return SourceIndex(classes, out, left_out)


def _read_json(path: Path, layout: str):
    try:
        return json.loads(_read_text(path, layout))
    except ValueError as e:
        raise LayoutError(f"{path}: not valid JSON ({e}). Expected layout:\n{layout}") from None


def _row_text(row: dict) -> str:
    return ",".join("" if v is None else str(v) for k, v in row.items() if k is not None)


def load_list_layout(root: Path, splits: Sequence[str], classes_file: Optional[Path], layout: str) -> SourceIndex:
    """VideoMAE lists: ``<path> <label>`` per line (space-separated, the path may hold spaces).

    Labels that are all integers are class indices (names from --classes FILE, else ROOT/classes.txt
    or labels.txt if present, else "0", "1", ...); otherwise they are class names, sorted.
    """
    lines: Dict[str, List[tuple]] = {}
    for split in splits:
        f = _child(root, f"{split}.csv")
        entries = []
        for n, line in enumerate(_read_text(f, layout).splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise LayoutError(f"{f} line {n}: expected '<path> <label>', got {line!r}")
            entries.append((parts[0], parts[1], f"{f.name} line {n}"))
        lines[split] = entries
    all_labels = [lab for es in lines.values() for _, lab, _ in es]
    numeric = all(re.fullmatch(r"\d+", lab) for lab in all_labels)
    if classes_file is None:
        for cand in ("classes.txt", "labels.txt"):
            if (root / cand).exists():
                classes_file = root / cand
                break
    if classes_file is not None:
        classes = read_classes_file(classes_file)
    elif numeric:
        classes = [str(i) for i in range(max(int(l) for l in all_labels) + 1)] if all_labels else []
    else:
        classes = sorted(set(all_labels))
    lookup = _index_of(classes)
    out = {}
    for split, entries in lines.items():
        recs = []
        for p, lab, where in entries:
            if numeric:
                idx = int(lab)
                if idx >= len(classes):
                    raise UnknownLabelError(f"unknown label {lab} in {where}: only {len(classes)} classes")
            else:
                idx = _label(lookup, lab, where)
            path = Path(p) if Path(p).is_absolute() else root / p
            recs.append(_record(path, idx, where=where))
        out[split] = recs
    log.info("list layout: %d classes", len(classes))
    left_out = {}
    for split in ("train", "val", "test"):  # the lists VideoMAE ships; any of them not asked for is counted
        f = _child(root, f"{split}.csv")
        if split not in splits and f.is_file():
            n = sum(1 for line in _read_text(f, layout).splitlines() if line.strip())
            if n:
                left_out[split] = n
    return SourceIndex(classes, out, left_out)


def _child(folder: Path, name: str) -> Path:
    """``folder/name``, or the entry whose name matches it case-insensitively (``Train.csv``, ``Val/``)."""
    exact = folder / name
    if exact.exists() or not folder.is_dir():
        return exact
    matches = sorted(p for p in folder.iterdir() if p.name.lower() == name.lower())
    if len(matches) > 1:
        raise LayoutError(f"{folder} holds {', '.join(p.name for p in matches)}: names that differ only in case; "
                          "split names match case-insensitively, so keep one")
    return matches[0] if matches else exact


# --- Something-Something v2 ---------------------------------------------------------------

SSV2 = """  ROOT/something-something-v2-labels.json       ({"<template>": "<index>", ...})
  ROOT/something-something-v2-train.json        ([{"id", "label", "template", ...}, ...])
  ROOT/something-something-v2-validation.json
  ROOT/<id>.webm  or  ROOT/20bn-something-something-v2/<id>.webm"""


def load_ssv2(root: Path, splits: Sequence[str]) -> SourceIndex:
    """20bn layout; class indices are the official ones from the labels json."""
    _require(root, SSV2)
    _check_splits(splits, ("train", "val"), "ssv2")
    labels = _read_json(root / "something-something-v2-labels.json", SSV2)
    try:
        by_index = sorted(((int(v), k) for k, v in labels.items()))
    except (AttributeError, TypeError, ValueError):
        raise LayoutError(f"{root}/something-something-v2-labels.json must map each template to its index "
                          f"(\"<template>\": \"<index>\"). Expected layout:\n{SSV2}") from None
    if [i for i, _ in by_index] != list(range(len(by_index))):
        raise LayoutError(f"{root}/something-something-v2-labels.json: indices must be 0..N-1")
    classes = [k for _, k in by_index]
    lookup = _index_of(classes)
    video_dir = root / "20bn-something-something-v2"
    video_dir = video_dir if video_dir.is_dir() else root
    out = {}
    for split in splits:
        fname = _SSV2_FILES[split]
        items = _read_json(root / fname, SSV2)
        recs = []
        for n, it in enumerate(items if isinstance(items, list) else [items]):
            where = f"{fname} item {n}"
            try:
                # The labels json keys are the templates with the [brackets] removed.
                name = it["template"].replace("[", "").replace("]", "")
                video = video_dir / f"{it['id']}.webm"
            except (KeyError, TypeError, AttributeError):
                raise LayoutError(f"{where}: expected an object with 'id' and 'template', got {str(it)[:200]}. "
                                  f"Expected layout:\n{SSV2}") from None
            recs.append(_record(video, _label(lookup, name, where), where=where))
        out[split] = recs
    log.info("ssv2: %d classes", len(classes))
    left_out = {}
    for split, fname in _SSV2_FILES.items():
        if split not in splits and (root / fname).is_file():
            items = _read_json(root / fname, SSV2)
            if items:
                left_out[split] = len(items) if isinstance(items, list) else 1
    return SourceIndex(classes, out, left_out)


_SSV2_FILES = {"train": "something-something-v2-train.json", "val": "something-something-v2-validation.json"}


# --- UCF101 / HMDB51 ----------------------------------------------------------------------

UCF101 = """  ROOT/ucfTrainTestlist/classInd.txt              ('1 ApplyEyeMakeup' per line)
  ROOT/ucfTrainTestlist/trainlist0N.txt           ('ApplyEyeMakeup/v_..._g08_c01.avi 1')
  ROOT/ucfTrainTestlist/testlist0N.txt            ('ApplyEyeMakeup/v_..._g01_c01.avi')
  ROOT/UCF-101/<Class>/<video>.avi  or  ROOT/<Class>/<video>.avi"""


def load_ucf101(root: Path, splits: Sequence[str], fold: int) -> SourceIndex:
    _require(root, UCF101)
    _check_splits(splits, ("train", "test"), "ucf101")
    lists = root / "ucfTrainTestlist"
    classes = []
    for n, line in enumerate(_read_text(lists / "classInd.txt", UCF101).splitlines(), start=1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise LayoutError(f"{lists}/classInd.txt line {n}: expected '<index> <ClassName>', got {line.strip()!r}")
            if int(parts[0]) != len(classes) + 1:
                raise LayoutError(f"{lists}/classInd.txt: indices must run 1..N in order")
            classes.append(parts[1])
    lookup = _index_of(classes)
    video_dir = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    out = {}
    for split in splits:
        f = lists / f"{split}list{fold:02d}.txt"
        recs = []
        for n, line in enumerate(_read_text(f, UCF101).splitlines(), start=1):
            if not line.strip():
                continue
            rel = line.split()[0]
            # testlists carry no index: the class is the folder (the official convention).
            recs.append(_record(video_dir / rel, _label(lookup, rel.split("/")[0], f"{f.name} line {n}")))
        out[split] = recs
    log.info("ucf101 fold %d: %d classes", fold, len(classes))
    left_out = {}
    for split in ("train", "test"):
        f = lists / f"{split}list{fold:02d}.txt"
        if split not in splits and f.is_file():
            n = sum(1 for line in _read_text(f, UCF101).splitlines() if line.strip())
            if n:
                left_out[split] = n
    return SourceIndex(classes, out, left_out)


HMDB51 = """  ROOT/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt   ('<video>.avi <0|1|2>'; 1=train 2=test)
  ROOT/hmdb51_org/<class>/<video>.avi  or  ROOT/<class>/<video>.avi"""


def load_hmdb51(root: Path, splits: Sequence[str], fold: int) -> SourceIndex:
    _require(root, HMDB51)
    _check_splits(splits, ("train", "test"), "hmdb51")
    split_dir = _require(root / "testTrainMulti_7030_splits", HMDB51)
    files = sorted(split_dir.glob(f"*_test_split{fold}.txt"))
    if not files:
        raise LayoutError(f"no *_test_split{fold}.txt in {split_dir}. Expected layout:\n{HMDB51}")
    classes = sorted(f.name[: -len(f"_test_split{fold}.txt")] for f in files)
    lookup = _index_of(classes)
    video_dir = root / "hmdb51_org" if (root / "hmdb51_org").is_dir() else root
    split_of = {"1": "train", "2": "test", "0": None}  # 0: in no split of this fold (the official 70/30)
    out = {s: [] for s in splits}
    left_out: Dict[str, int] = {}
    unused = 0
    for f in files:
        cls = f.name[: -len(f"_test_split{fold}.txt")]
        for n, line in enumerate(_read_text(f, HMDB51).splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in split_of:
                raise LayoutError(f"{f.name} line {n}: expected '<video>.avi <0|1|2>', got {line.strip()!r}; fix or "
                                  f"delete that line. Expected layout:\n{HMDB51}")
            split = split_of[parts[1]]
            if split is None:
                unused += 1
            elif split in out:
                out[split].append(_record(video_dir / cls / parts[0], lookup[cls], where=f"{f.name} line {n}"))
            else:
                left_out[split] = left_out.get(split, 0) + 1
    log.info("hmdb51 fold %d: %d classes; %d listed video(s) marked 0 (in neither split of this fold) are not built",
             fold, len(classes), unused)
    return SourceIndex(classes, out, left_out)


# --- generic CSV / folder -----------------------------------------------------------------

CSV_LAYOUT = """  LIST.csv with a header 'path,label' and an optional 'split' column (header names and split
  names are case-insensitive); relative paths are resolved against --root (default: the CSV's folder)"""


def load_csv(list_file: Path, splits: Sequence[str], root: Optional[Path], classes_file: Optional[Path]) -> SourceIndex:
    """Rows without a split (no column, or an empty cell) go to the first requested split. Split names match
    case-insensitively; rows of a split not requested are counted in ``left_out``, never dropped silently."""
    base = root or list_file.parent
    text = _read_text(list_file, CSV_LAYOUT)
    if not text.strip():
        raise LayoutError(f"{list_file} is empty. Expected layout:\n{CSV_LAYOUT}")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        # "Path, Label, Split" is the same header: a split column missed for its spelling would put every
        # row into the first split.
        reader.fieldnames = [(f or "").strip().lower() for f in reader.fieldnames or ()]
        if not {"path", "label"} <= set(reader.fieldnames):
            raise LayoutError(f"{list_file}: header must contain path,label; got {','.join(reader.fieldnames)!r}. "
                              f"Expected layout:\n{CSV_LAYOUT}")
        raw = list(reader)
    except csv.Error as e:
        raise LayoutError(f"{list_file}: not a readable CSV ({e}). Expected layout:\n{CSV_LAYOUT}") from None
    rows = []
    unsplit = 0
    for n, r in enumerate(raw, start=2):
        path, label = (r.get("path") or "").strip(), (r.get("label") or "").strip()
        if not path or not label:
            raise LayoutError(f"{list_file.name} line {n}: {'empty label' if path else 'no path'} in "
                              f"{_row_text(r)!r}: every row needs path,label (a class name); fix or delete that line")
        split = (r.get("split") or "").strip().lower()
        if not split:
            split, unsplit = splits[0], unsplit + 1
        rows.append((path, label, split, n))
    if unsplit and "split" in reader.fieldnames:
        log.warning("csv: %d row(s) of %s have an empty split cell: built into %r (the first of --splits)",
                    unsplit, list_file.name, splits[0])
    classes = read_classes_file(classes_file) if classes_file else sorted({lab for _, lab, _, _ in rows})
    lookup = _index_of(classes)
    out = {s: [] for s in splits}
    left_out: Dict[str, int] = {}
    for p, lab, split, n in rows:
        if split in out:
            path = Path(p) if Path(p).is_absolute() else base / p
            where = f"{list_file.name} line {n}"
            out[split].append(_record(path, _label(lookup, lab, where), where=where))
        else:
            left_out[split] = left_out.get(split, 0) + 1
    log.info("csv: %d classes", len(classes))
    return SourceIndex(classes, out, left_out)


FOLDER = """  ROOT/<class>/<video>            (everything goes to the first split), or
  ROOT/<split>/<class>/<video>    (one sub-folder per requested split; names match case-insensitively)
  videos: """ + " ".join(VIDEO_EXTS)


def _is_symlink_loop(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return True
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def load_folder(root: Path, splits: Sequence[str]) -> SourceIndex:
    """Class = sub-folder name; classes are the sorted union over the splits.

    Symlink loops are skipped with a warning naming each; files without a video extension and files
    outside a class folder are counted in one log line; ``ROOT/<split>`` folders of splits not requested
    are counted in ``left_out``."""
    _require(root, FOLDER)
    split_dirs = {s: _child(root, s) for s in splits}
    per_split = all(d.is_dir() for d in split_dirs.values())
    if not per_split and len(splits) > 1:
        raise LayoutError(f"{root} has no {'/'.join(splits)} sub-folders. Expected layout:\n{FOLDER}")
    dirs = split_dirs if per_split else {s: root for s in splits}
    loops: List[Path] = []
    ignored: Dict[str, int] = {}  # what was not taken, by kind, for one log line

    def entries(folder: Path) -> List[Path]:
        kept = []
        for p in sorted(folder.iterdir()):
            if p.is_symlink() and _is_symlink_loop(p):
                loops.append(p)
            else:
                kept.append(p)
        return kept

    listing = {s: entries(base) for s, base in dirs.items()}
    classes = sorted({d.name for found in listing.values() for d in found if d.is_dir()})
    if not classes:
        raise LayoutError(f"{root} has no class sub-folders. Expected layout:\n{FOLDER}")
    lookup = _index_of(classes)
    out = {}
    for split, found in listing.items():
        recs = []
        for d in found:
            if not d.is_dir():
                ignored["file(s) outside a class folder"] = ignored.get("file(s) outside a class folder", 0) + 1
                continue
            for p in entries(d):
                if p.is_dir():
                    ignored["sub-folder(s) in a class folder"] = ignored.get("sub-folder(s) in a class folder", 0) + 1
                elif p.suffix.lower() in VIDEO_EXTS:
                    recs.append(_record(p, lookup[d.name]))
                else:
                    kind = f"{p.suffix.lower() or 'extension-less'} file(s)"
                    ignored[kind] = ignored.get(kind, 0) + 1
        out[split] = recs
    for p in loops:
        log.warning("folder: skipping %s: a symlink loop", p)
    if loops:
        log.warning("folder: skipped %d symlink loop(s) under %s", len(loops), root)
    if ignored:
        log.info("folder: not videos, ignored under %s: %s (videos are %s)", root,
                 ", ".join(f"{n} {kind}" for kind, n in sorted(ignored.items())), " ".join(VIDEO_EXTS))
    left_out = {}
    if per_split:  # sibling split folders (ROOT/val when only train was asked for): count their videos
        taken = {d.name for d in split_dirs.values()}
        for d in sorted(root.iterdir()):
            if d.name in taken or d.name.lower() not in ("train", "val", "test") or not d.is_dir():
                continue
            n = sum(1 for c in d.iterdir() if c.is_dir() for v in c.iterdir() if v.suffix.lower() in VIDEO_EXTS)
            if n:
                left_out[d.name.lower()] = left_out.get(d.name.lower(), 0) + n
    log.info("folder: %d classes", len(classes))
    return SourceIndex(classes, out, left_out)
