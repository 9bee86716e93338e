"""A run folder belongs to one run: who it is, and what a new run may do with a folder that holds another.

Each run writes ``run.json`` (``task``: ``pretrain`` | ``finetune``, ``run_id``, when it was created) into
its ``log.dir`` and, when ``checkpoint.dir`` lies elsewhere, into that folder too; every checkpoint it
saves carries the same ``run_id``. Pruning old checkpoints, dropping ``metrics.jsonl`` rows after the
resumed step and ``checkpoint.resume=auto`` therefore only ever act on that run's own files, because a
run refuses, before it writes anything, a folder that holds another run:

- a folder without run files (or missing): a new run;
- the same task with ``checkpoint.resume=auto`` (or ``resume=<one of its checkpoints>``): that run goes on;
- anything else (another task, ``resume=none``, ``resume=<a file from elsewhere>``): one line naming the
  folder and the two ways out (a new ``log.dir``, or ``checkpoint.overwrite=true``), exit 2.

``checkpoint.overwrite=true`` never deletes: it moves the old run's files (``run.json``, ``config.yaml``,
``metrics.jsonl``, ``tb/``, ``eval/``, checkpoints and exports) into ``<folder>/replaced/<time>-<task>-<id>/``
and says where. Only those names move, so a ``log.dir`` that also holds the user's own files (or is the
working directory) keeps them. A folder written before run ids existed (no ``run.json``) is adopted
by ``resume=auto`` when its ``config.yaml`` is of the same task, as the VideoMAE / torchtitan habit of
"rerun the same command to continue" expects; otherwise it counts as another run.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import yaml

from amd_fast.errors import InputError

log = logging.getLogger(__name__)

MARKER = "run.json"
REPLACED = "replaced"
# What a run writes into log.dir (checkpoints/ only when checkpoint.dir is the default inside it).
LOG_FILES = (MARKER, "config.yaml", "metrics.jsonl", "tb", "eval")
_CKPT_FILE = re.compile(r"^(step-\d+\.pt|encoder\.(pth|safetensors)|rank\d+-nonfinite-step-\d+\.pt)$")


class RunFolderError(InputError):
    """The run folder holds another run, or cannot be a folder (the message names both ways out)."""


@dataclass
class RunIdentity:
    task: str
    run_id: str
    continued: bool  # True: this process continues the run found in the folder


def _read_marker(folder: Path) -> Optional[dict]:
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("run_id"), str) and isinstance(data.get("task"), str):
            return data
    except (OSError, ValueError):
        pass
    raise RunFolderError(f"{path} is not a readable run record: remove it if the folder is yours, or use "
                         "another log.dir")


def _legacy_task(log_dir: Path) -> Optional[str]:
    """The task of a run written before run.json existed, from its config.yaml (None: unknown)."""
    try:
        cfg = yaml.safe_load((log_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict):
        return None
    return "finetune" if "eval" in cfg or "aug" in cfg else "pretrain"


def _checkpoint_files(ckpt_dir: Path) -> List[Path]:
    return sorted(p for p in ckpt_dir.iterdir() if _CKPT_FILE.match(p.name)) if ckpt_dir.is_dir() else []


def _marker_folders(log_dir: Path, ckpt_dir: Path) -> List[Path]:
    """Where run.json goes: log.dir, and checkpoint.dir when it lies outside log.dir."""
    return [log_dir] if _inside(ckpt_dir, log_dir) else [log_dir, ckpt_dir]


def _run_files(log_dir: Path, ckpt_dir: Path) -> List[Path]:
    found = [log_dir / n for n in LOG_FILES if (log_dir / n).exists()] if log_dir.is_dir() else []
    if not _inside(ckpt_dir, log_dir) and (ckpt_dir / MARKER).is_file():
        found.append(ckpt_dir / MARKER)
    return found + _checkpoint_files(ckpt_dir)


def _holds_work(log_dir: Path, ckpt_dir: Path) -> bool:
    """A checkpoint, an evaluation or a logged step: something a new run must not overwrite."""
    if _checkpoint_files(ckpt_dir) or (log_dir / "eval").exists():
        return True
    try:
        text = (log_dir / "metrics.jsonl").read_text()
    except OSError:
        return False
    return any('"step"' in line for line in text.splitlines())


def check_is_folder(path: Path, key: str) -> None:
    """``path`` (the value of config ``key``) is a folder or can become one; else a one-line input error."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {p}, which is a file"
                raise RunFolderError(f"{key}={path} {what}: point {key} at a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise RunFolderError(f"{key}={path}: {p} is not writable by this user; choose another {key}")
            return


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def owner_task(log_dir: Path, ckpt_dir: Path) -> Optional[str]:
    """The task of the run the folders hold (``run.json``, else an older run's ``config.yaml``), or None."""
    log_dir, ckpt_dir = Path(log_dir), Path(ckpt_dir)
    for folder in _marker_folders(log_dir, ckpt_dir):
        marker = _read_marker(folder)
        if marker is not None:
            return marker["task"]
    return _legacy_task(log_dir)


def recorded_run_id(log_dir: Path, own_id: str) -> str:
    """The run id ``run.json`` holds (after :func:`take`): how ranks other than 0 learn a new run's id."""
    marker = _read_marker(Path(log_dir))
    if marker is None:
        log.warning("%s is not visible on this rank: put log.dir on storage every node sees, or resume will not "
                    "find the checkpoints here", Path(log_dir) / MARKER)
        return own_id
    return marker["run_id"]


def claim(log_dir: Path, ckpt_dir: Path, task: str, resume: str, overwrite: bool) -> RunIdentity:
    """Decide, reading only, whether this run may use the folders (see the module doc). Every rank calls
    it; :func:`take` (rank 0) then writes. Raises :class:`RunFolderError` for a folder of another run."""
    log_dir, ckpt_dir = Path(log_dir), Path(ckpt_dir)
    check_is_folder(log_dir, "log.dir")
    check_is_folder(ckpt_dir, "checkpoint.dir")
    markers = [m for m in map(_read_marker, _marker_folders(log_dir, ckpt_dir)) if m is not None]
    ids = {m["run_id"] for m in markers}
    if len(ids) > 1:
        return _refuse(log_dir, ckpt_dir, "log.dir and checkpoint.dir belong to two different runs", overwrite, task)
    owner = markers[0] if markers else None
    if owner is None:
        if not _run_files(log_dir, ckpt_dir):
            return RunIdentity(task, uuid.uuid4().hex, continued=False)
        legacy = _legacy_task(log_dir)
        if resume == "auto" and legacy == task:
            log.info("%s holds a %s run from before run ids: continuing it (resume=auto)", log_dir, task)
            return RunIdentity(task, uuid.uuid4().hex, continued=True)
        what = f"a {legacy} run" if legacy else "files of another run"
        return _refuse(log_dir, ckpt_dir, f"holds {what} (no {MARKER})", overwrite, task,
                       can_continue=legacy == task)
    if owner["task"] != task:
        return _refuse(log_dir, ckpt_dir, f"holds a {owner['task']} run ({owner['run_id'][:8]})", overwrite, task)
    if resume == "auto" or (resume != "none" and _inside(Path(resume), ckpt_dir)):
        if overwrite:  # said, so that the flag is never silently ignored
            log.warning("checkpoint.overwrite=true: %s holds this %s run, which checkpoint.resume=%s continues "
                        "(nothing replaced); add checkpoint.resume=none to start anew and move it aside",
                        log_dir, task, resume)
        return RunIdentity(task, owner["run_id"], continued=True)
    if not _holds_work(log_dir, ckpt_dir):  # it stopped before writing a step: nothing to keep
        log.info("%s holds a %s run that wrote no step yet: starting it from scratch", log_dir, task)
        return RunIdentity(task, owner["run_id"], continued=True)
    why = "checkpoint.resume=none" if resume == "none" else f"checkpoint.resume={resume} (a file from elsewhere)"
    return _refuse(log_dir, ckpt_dir, f"holds a {task} run ({owner['run_id'][:8]}) and {why} would start another "
                   "one there", overwrite, task, can_continue=True)


def _refuse(log_dir: Path, ckpt_dir: Path, why: str, overwrite: bool, task: str,
            can_continue: bool = False) -> RunIdentity:
    if overwrite:
        return RunIdentity(task, uuid.uuid4().hex, continued=False)
    where = f"log.dir={log_dir}" + ("" if _inside(ckpt_dir, log_dir) else f" / checkpoint.dir={ckpt_dir}")
    raise RunFolderError(
        f"{where} {why}; nothing was changed. Use a new log.dir"
        + (", checkpoint.resume=auto to continue that run," if can_continue else "")
        + f" or checkpoint.overwrite=true to move the old run's files aside into {log_dir / REPLACED}/ "
        "(nothing is deleted)")


def take(identity: RunIdentity, log_dir: Path, ckpt_dir: Path) -> Optional[Path]:
    """Rank 0, after every rank's :func:`claim`: a new run first moves any old run files aside (only
    reached with ``checkpoint.overwrite=true`` or for an empty run), then writes ``run.json``.
    Returns the folder the old files went to, if any."""
    log_dir, ckpt_dir = Path(log_dir), Path(ckpt_dir)
    moved_to = None
    if not identity.continued:
        old = _run_files(log_dir, ckpt_dir)
        if old:
            prev = next(filter(None, map(_read_marker, _marker_folders(log_dir, ckpt_dir))), {})
            stamp = time.strftime("%Y%m%d-%H%M%S")
            moved_to = log_dir / REPLACED / f"{stamp}-{prev.get('task', 'unknown')}-{prev.get('run_id', 'noid')[:8]}"
            moved_to.mkdir(parents=True, exist_ok=False)
            for p in old:
                target = moved_to / ("checkpoints" if p.parent == ckpt_dir and ckpt_dir != log_dir else "")
                target.mkdir(exist_ok=True)
                os.replace(p, target / p.name)
            log.warning("moved the previous run's files (%d) out of the way into %s", len(old), moved_to)
    record = {"task": identity.task, "run_id": identity.run_id}
    for folder in _marker_folders(log_dir, ckpt_dir):
        folder.mkdir(parents=True, exist_ok=True)
        existing = _read_marker(folder)
        if existing is None or existing.get("run_id") != identity.run_id:
            _write_json(folder / MARKER, {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return moved_to


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
