"""Multi-view evaluation, as the reference's ``final_test`` + ``merge``: top-1 / top-5 on one view and on all views.

Each of the ``test_segments x test_crops`` views (``data.sampling.eval_indices`` / ``eval_crop_box``: the
reference's formulas, all deterministic) is a pass of the loader over the split, each rank reading its part.
Per video the softmax of every view is summed; the all-view prediction is the mean softmax (the reference
averages probabilities, not logits), the one-view prediction that of the middle view (middle segment,
centre crop). Ranks pad their parts to equal length (DDP needs equal batch counts), so the same video can
appear twice: every result carries the video's index in the split, and rank 0 keeps one result per
(video, view) — every video counts exactly once.

Written to ``<out>/<name>.json``: overall and per-class accuracy, the confusion matrix (rows: true class,
columns: predicted, all-view predictions) and the settings. Classes are named as the shards' manifest names
them; a head with more outputs than the shards have classes (``model.num_classes`` larger) keeps those names
and reports the extra outputs as ``<unused c>`` (c: the output's number), whose accuracy is null;
``<out>/<name>-confusion.png`` when matplotlib is installed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from amd_fast.data import build_loader
from amd_fast.data.sampling import normalize_clips
from amd_fast.data.shards import ShardError, ShardSet, open_shards
from amd_fast.errors import InputError
from amd_fast.trainer.distributed import DistInfo, gather_to_main

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    top1: float
    top5: float
    top1_single_view: float
    top5_single_view: float
    videos: int
    views: int
    per_class: Dict[str, Optional[float]] = field(default_factory=dict)
    confusion: List[List[int]] = field(default_factory=list)
    classes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"top-1 {100 * self.top1:.2f} / top-5 {100 * self.top5:.2f} over {self.views} views, one view top-1 "
                f"{100 * self.top1_single_view:.2f} / top-5 {100 * self.top5_single_view:.2f} ({self.videos} videos)")


def _views(segments: int, crops: int) -> List[int]:
    return list(range(segments * crops))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_cfg, info: DistInfo, *, split: str, segments: int, crops: int,
             num_classes: int, amp: bool, batch_size: Optional[int] = None) -> Optional[EvalResult]:
    """Evaluate ``model`` on ``split`` (every rank calls it; rank 0 gets the result, the others None)."""
    views = _views(segments, crops)
    middle = (segments // 2) * crops + crops // 2
    base = dataclasses.replace(data_cfg, split=split, train=False, num_sample=1, shuffle=False, drop_last=False,
                               test_segments=segments, test_crops=crops, dtype="uint8",
                               batch_size=batch_size or data_cfg.batch_size)
    sums: Dict[int, np.ndarray] = {}
    single: Dict[int, np.ndarray] = {}
    labels: Dict[int, int] = {}
    classes: List[str] = []
    was_training = model.training
    model.eval()
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=amp)
    for v in views:
        loader = build_loader(dataclasses.replace(base, view=v), info.rank, info.world_size)
        classes = check_labels(loader.shards, num_classes, split)
        seen = set()
        for batch in loader:
            with autocast:
                logits = model(normalize_clips(batch["video"], torch.float32))
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            for p, y, i in zip(probs, batch["label"].cpu().tolist(), batch["index"].tolist()):
                if i in seen:  # a padded repeat within this rank's part
                    continue
                seen.add(i)
                if y >= num_classes:
                    raise InputError(f"sample {i} of split {split!r} has label {y}, outside model.num_classes="
                                     f"{num_classes}: set model.num_classes to the shards' class count")
                sums[i] = sums.get(i, 0) + p
                labels[i] = y
                if v == middle:
                    single[i] = p
    model.train(was_training)
    parts = gather_to_main({"sums": sums, "single": single, "labels": labels}, info)
    if not info.is_main:
        return None
    merged_sums, merged_single, merged_labels = {}, {}, {}
    for part in parts:  # each video once: the first rank that read it
        for i, s in part["sums"].items():
            if i not in merged_sums:
                merged_sums[i], merged_labels[i] = s, part["labels"][i]
                merged_single[i] = part["single"].get(i)
    return _metrics(merged_sums, merged_single, merged_labels, num_classes, len(views), classes)


def shard_splits(folder: Path) -> List[str]:
    """The splits a shards folder holds: ``<split>.manifest.json`` files and ``<split>-*.tar`` names."""
    names = {p.name[: -len(".manifest.json")] for p in folder.glob("*.manifest.json")}
    names |= {p.name.rsplit("-", 1)[0] for p in folder.glob("*-*.tar")}
    return sorted(names)


def open_splits(shards, needed: Sequence[Tuple[str, str]], skip_open: Sequence[str] = ()) -> Dict[str, ShardSet]:
    """Open every split a command will read before it starts: ``needed`` is ``(option, split)`` pairs, e.g.
    ``[("data.split", "train"), ("eval.split", "val")]``; returns ``{split: ShardSet}`` in that order.

    A split the shards folder lacks is an ``InputError`` naming the option, the split, the folder and the splits
    it has; so is a split without a complete sample. When ``shards`` is one manifest file or a list of tars there
    is one set of videos whatever the split name, so needing two different splits is an error too (it would
    evaluate on the training videos). Splits in ``skip_open`` are only checked by name (their caller opens them
    anyway, e.g. the training loader), so no index is read twice."""
    folder = None if isinstance(shards, (list, tuple)) else Path(shards)
    distinct = list(dict.fromkeys(split for _, split in needed))
    if folder is not None and folder.is_dir():
        available = shard_splits(folder)
        for key, split in needed:
            if split not in available:
                raise InputError(
                    f"{key}={split!r}: the shards folder {folder} has no split {split!r} (no {split}.manifest.json "
                    f"nor {split}-*.tar); it has {', '.join(repr(a) for a in available) or 'no split at all'}: set "
                    f"{key} to one of them, or build the split with `python -m amd_fast.shard --out {folder} "
                    f"--splits {split} ...`")
    elif len(distinct) > 1 and (folder is None or (folder.is_file() and folder.suffix in (".json", ".tar"))):
        uses = " and ".join(f"{key}={split!r}" for key, split in needed)
        raise InputError(
            f"data.shards={shards} is one set of shards (a manifest file or tar files), not a folder of splits, so "
            f"{uses} would read the same videos (evaluation on the training videos): point data.shards at the "
            f"shards folder that holds {' and '.join(f'{s}.manifest.json' for s in distinct)}")
    out: Dict[str, ShardSet] = {}
    for split in distinct:
        if split in skip_open:
            continue
        found = open_shards(shards, split)
        if found.num_samples == 0:
            raise ShardError(f"split {split!r} of {shards} has no complete sample; rebuild it "
                             "(python -m amd_fast.shard ...)")
        out[split] = found
    return out


def check_labels(shards, num_classes: int, split: str, warn: bool = False) -> List[str]:
    """The split's class names; an InputError (the same on every rank) when it has none or more than
    ``num_classes``. ``warn``: log when ``num_classes`` is larger (the extra outputs never see a video)."""
    manifest = shards.manifest or {}
    classes = list(manifest.get("classes") or [])
    if manifest and not classes:
        raise InputError(f"the {split!r} shards carry no class labels (their manifest lists no classes); "
                         "evaluation needs labelled shards: build them from a labelled source")
    if len(classes) > num_classes:
        raise InputError(f"the {split!r} shards have {len(classes)} classes (labels 0..{len(classes) - 1}) but "
                         f"model.num_classes={num_classes}: set model.num_classes={len(classes)}")
    if warn and classes and len(classes) < num_classes:
        extra = (f"output {len(classes)} never sees a video (reported as '{unused_class_name(len(classes))}'"
                 if num_classes - len(classes) == 1 else
                 f"outputs {len(classes)}..{num_classes - 1} never see a video (reported as "
                 f"'{unused_class_name(len(classes))}' .. '{unused_class_name(num_classes - 1)}'")
        log.warning("model.num_classes=%d but the %r shards have %d classes: %s in eval/test.json); set "
                    "model.num_classes=%d unless this is meant", num_classes, split, len(classes), extra, len(classes))
    return classes


def unused_class_name(c: int) -> str:
    """The report's name for output ``c`` of a head larger than the shards' class list."""
    return f"<unused {c}>"


def class_names(classes: List[str], num_classes: int) -> List[str]:
    """One name per model output: the shards' class names, ``<unused c>`` for outputs past them; the label
    numbers as text when the shards name no classes (a tar list without a manifest). Repeated names get
    `` (c)`` appended, so every output keeps its own row in the per-class report."""
    if not classes:
        names = [str(c) for c in range(num_classes)]
    else:
        names = list(classes[:num_classes]) + [unused_class_name(c) for c in range(len(classes), num_classes)]
    counts: Dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({c})" if counts[n] > 1 else n for c, n in enumerate(names)]


def _topk(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def _metrics(sums, single, labels, num_classes, views, classes) -> EvalResult:
    if not sums:
        raise InputError("the evaluation split has no samples")
    idx = sorted(sums)
    probs = np.stack([sums[i] / views for i in idx])
    one = np.stack([single[i] for i in idx])
    y = np.asarray([labels[i] for i in idx])
    pred = probs.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    names = class_names(classes, num_classes)
    per_class = {names[c]: (float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None)
                 for c in range(num_classes)}
    return EvalResult(top1=_topk(probs, y, 1), top5=_topk(probs, y, 5), top1_single_view=_topk(one, y, 1),
                      top5_single_view=_topk(one, y, 5), videos=len(idx), views=views, per_class=per_class,
                      confusion=confusion.tolist(), classes=names)


def save(result: EvalResult, out_dir: Path, name: str, settings: dict) -> Dict[str, Path]:
    """``<name>.json`` (+ ``<name>-confusion.png`` with matplotlib); returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json"}
    tmp = paths["json"].with_name(paths["json"].name + ".tmp")
    tmp.write_text(json.dumps({**dataclasses.asdict(result), "settings": settings}, indent=1))
    tmp.replace(paths["json"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: %s-confusion.png skipped (the matrix is in %s)", name,
                    paths["json"])
        return paths
    cm = np.asarray(result.confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(result.classes)
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * n, 30), min(2 + 0.35 * n, 30)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), result.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), result.classes, fontsize=7)
        for r in range(n):
            for c in range(n):
                if cm[r, c]:
                    ax.text(c, r, int(cm[r, c]), ha="center", va="center", fontsize=6,
                            color="white" if norm[r, c] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: top-1 {100 * result.top1:.1f} ({result.views} views, {result.videos} videos)")
    fig.tight_layout()
    paths["png"] = out_dir / f"{name}-confusion.png"
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
