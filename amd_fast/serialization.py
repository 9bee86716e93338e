"""Reading ``torch.save`` files without ever running code from them.

Every checkpoint or weight file amd_fast reads goes through :func:`load_file`: ``torch.load`` with
``weights_only=True`` (tensors, dicts, lists, numbers, strings) plus an allowlist of the few harmless
types real VideoMAE / AMD release checkpoints carry besides their weights: the ``argparse.Namespace``
of their training args and the numpy scalars / arrays inside it. A file that needs any other type is
refused with an error naming that type; it is never unpickled. Our own checkpoints hold only allowed
types (see ``trainer.checkpoint.rng_state``).
"""
from __future__ import annotations

import argparse
import errno
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Type

import numpy as np
import torch

from amd_fast.errors import RunFailed


def _allowlist() -> list:
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed = [argparse.Namespace, np.dtype, np.ndarray, scalar, reconstruct,
               # files pickled under numpy 1.x name these functions by their old module path
               (scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                             "uint8", "bool")]
    return allowed


SAFE_GLOBALS = _allowlist()
# torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module x is blocked"
_UNSUPPORTED = re.compile(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)")


def load_file(path: Path, error: Type[Exception], what: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` of ``path`` with ``weights_only=True`` and the allowlist above.

    Raises ``error`` (the caller's exception class) with a message naming ``what`` the file was
    meant to be, the file, and the problem: a type outside the allowlist (named), or a file that is
    not a readable ``torch.save`` archive (truncated, another format)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = _UNSUPPORTED.search(str(e))
        if m:
            raise error(f"{what} {path} needs the Python type {m.group(1)} to load; amd_fast loads weights with "
                        "weights_only=True and never unpickles other objects (they could run code). Re-save the "
                        "weights as a plain state dict (torch.save({'model': model.state_dict()}, path)) from a "
                        "source you trust") from None
        raise error(f"{what} {path} is not a PyTorch checkpoint (the weights-only unpickler rejects it: "
                    f"{_last_line(e)})") from None
    except Exception as e:  # a corrupt or foreign file can fail in many ways; all mean "not usable"
        raise error(f"{what} {path} cannot be read: truncated or not a torch.save file ({type(e).__name__}: "
                    f"{_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _last_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip() and "documentation" not in line]
    return lines[-1][:200] if lines else type(e).__name__


# ---- writing ---------------------------------------------------------------------------------------------------

class WriteError(RunFailed):
    """A file could not be written (full disk, permissions); the previous file of that name is untouched."""


_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` via a temp file + fsync + rename: a crash or a full disk leaves either
    the old ``path`` or the complete new one, never a torn file. Raises :class:`WriteError` naming the
    path and the cause (disk full: with the free space), after removing the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise WriteError(_write_failure(path, e)) from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _write_failure(path: Path, e: Exception) -> str:
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    full = getattr(e, "errno", None) == errno.ENOSPC or "write failed" in str(e) or (free is not None and free < 1 << 20)
    kept = "the previous file is kept" if path.exists() else "nothing was written"
    if full:
        return (f"cannot write {path}: the disk is full ({free} bytes free in {path.parent}); {kept}. Free some "
                "space or point the output (checkpoint.dir / log.dir) at another disk, then resume")
    return f"cannot write {path} ({type(e).__name__}: {_first_line(e)}); {kept}"


def remove_stale_temps(folder: Path) -> list:
    """Delete temp files left in ``folder`` by :func:`atomic_save` calls of processes that no longer
    run (killed mid-write); a live process's temp file is left alone. Returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m and not _pid_alive(int(m.group("pid"))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from before an exec/restart with the same pid: never in use now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
