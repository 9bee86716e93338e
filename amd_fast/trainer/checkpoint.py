"""Training checkpoints: atomic writes on rank 0, keep the last K, resume from the newest valid one.

A checkpoint is one ``torch.save`` file ``step-000001234.pt`` holding ``format``, ``step``, ``epoch``,
``student`` (unwrapped state dict), ``optimizer``, ``rng`` (one entry per rank: torch, cuda, numpy,
python), ``data`` (the loader's ``state_dict()``), ``config`` and ``world_size``. It is written to a
temporary file in the same folder, flushed and fsync'ed, then renamed over the final name (and the
folder fsync'ed), so a crash leaves either the old set of files or a complete new one, never a torn
``step-*.pt`` (a full disk raises ``serialization.WriteError`` and keeps the previous checkpoint).
Temp files of runs killed mid-write are removed when the next run starts. Files are read with
``weights_only=True`` (``amd_fast.serialization``): a checkpoint never runs code. Resume 'auto' still
checks each candidate: a file that cannot be read or lacks keys is skipped with a warning and the
next newest is used.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from amd_fast.errors import InputError
from amd_fast.serialization import atomic_save, load_file, remove_stale_temps

log = logging.getLogger(__name__)

FORMAT = "amd_fast.train/1"
REQUIRED_KEYS = ("format", "step", "epoch", "optimizer")  # + the trainer's model key ("student", "model")
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(InputError):
    """A checkpoint that cannot be used (message names the file and the problem)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def list_checkpoints(folder: Path) -> List[Tuple[int, Path]]:
    """(step, path) of the ``step-*.pt`` files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint(path: Path, map_location="cpu", model_key: str = "student") -> Dict[str, Any]:
    """Read and check one training checkpoint; CheckpointError if unreadable or incomplete."""
    state = load_file(path, CheckpointError, "checkpoint", map_location)  # weights_only=True: never runs code
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an amd_fast training checkpoint (format {FORMAT!r} expected)")
    missing = [k for k in REQUIRED_KEYS + (model_key,) if k not in state]
    other = {"student": ("model", "a fine-tuning"), "model": ("student", "a pretraining")}.get(model_key)
    if missing == [model_key] and other and other[0] in state:
        raise CheckpointError(f"checkpoint {path} is {other[1]} run's checkpoint, not one of this task's: resume "
                              "from a checkpoint of the same task" + (", or pass it as model.pretrained to start "
                              "fine-tuning from it" if model_key == "model" else ""))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state


def find_resume(folder: Path, model_key: str = "student") -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest checkpoint in ``folder`` that loads; unreadable ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, model_key=model_key)
        except CheckpointError as e:
            log.warning("skipping %s", e)
    return None


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep_last]:
        path.unlink(missing_ok=True)


def rng_state() -> Dict[str, Any]:
    """This process's RNG states, in types a weights-only load accepts (no numpy objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    """Saves (rank 0 only) and finds checkpoints in one folder."""

    def __init__(self, folder: Path, keep_last: int, is_main: bool, model_key: str = "student"):
        self.folder, self.keep_last, self.is_main, self.model_key = Path(folder), keep_last, is_main, model_key
        if is_main:
            for p in remove_stale_temps(self.folder):
                log.info("removed %s, left by a run killed while writing it", p.name)

    def save(self, state: Dict[str, Any], step: int, name: Optional[str] = None) -> Optional[Path]:
        if not self.is_main:
            return None
        path = atomic_save({"format": FORMAT, **state}, self.folder / (name or checkpoint_name(step)))
        if name is None:
            prune(self.folder, self.keep_last)
        log.info("checkpoint: %s", path)
        return path

    def resolve(self, resume: str) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """'none' -> None; 'auto' -> newest valid in the folder or None; a path -> that file (must load)."""
        if resume == "none":
            return None
        if resume == "auto":
            return find_resume(self.folder, self.model_key)
        path = Path(resume)
        if path.is_dir():
            raise CheckpointError(f"checkpoint.resume={resume!r} is a folder: give a checkpoint file in it "
                                  "(step-*.pt), or checkpoint.resume=auto with checkpoint.dir at that folder")
        if not path.is_file():
            raise CheckpointError(f"checkpoint.resume={resume!r}: no such file; use 'auto', 'none' or a path")
        return path, load_checkpoint(path, model_key=self.model_key)
