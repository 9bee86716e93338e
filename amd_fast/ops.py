"""The one place that picks Triton or eager for the memory-bound ops.

Choice, first match wins: per-call ``impl=`` > ``AMD_FAST_OPS`` env var (``triton``|``eager``) >
:func:`set_default_impl` (the config's ``ops`` setting) > automatic (``triton`` when the tensors are
on CUDA, ``eager`` otherwise). The automatic/default choice is logged once per (op, impl).

Triton on CPU tensors only works under the Triton interpreter (``TRITON_INTERPRET=1``, set before
``triton`` is imported); asking for it otherwise raises an error naming the fix.
"""
from __future__ import annotations

import logging
import os

import torch

# Imported here, not lazily: @triton.jit decides compiled vs interpreted when the module is imported.
from amd_fast.kernels import align_loss as _align
from amd_fast.kernels import masked_gather as _gather
from amd_fast.kernels import norm_pixel_loss as _pixel
from amd_fast.kernels.norm_pixel_loss import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

log = logging.getLogger(__name__)

IMPLS = ("triton", "eager")
_default_impl: str | None = None
_logged: set[tuple[str, str]] = set()


def set_default_impl(name: str | None) -> None:
    """Config override: 'triton', 'eager', or None/'auto' for automatic (triton on CUDA)."""
    global _default_impl
    if name in (None, "auto"):
        _default_impl = None
        return
    _check_name(name, "set_default_impl")
    _default_impl = name


def _check_name(name: str, where: str) -> None:
    if name not in IMPLS:
        raise ValueError(f"{where}: unknown ops impl {name!r}; use one of {IMPLS} (or None for automatic)")


def triton_interpreted() -> bool:
    """True when the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import time)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_gather._gather_fwd_kernel, InterpretedFunction)


def resolve_impl(op: str, device: torch.device, impl: str | None = None) -> str:
    """Which implementation ``op`` runs for tensors on ``device``."""
    if impl is not None:
        _check_name(impl, f"{op}(impl=...)")
        chosen, why = impl, "per-call impl="
    elif os.environ.get("AMD_FAST_OPS"):
        chosen, why = os.environ["AMD_FAST_OPS"].strip().lower(), "env AMD_FAST_OPS"
        _check_name(chosen, "AMD_FAST_OPS")
    elif _default_impl is not None:
        chosen, why = _default_impl, "set_default_impl"
    else:
        chosen, why = ("triton" if device.type == "cuda" else "eager"), f"automatic (tensors on {device.type})"
    if chosen == "triton" and device.type != "cuda" and not triton_interpreted():
        raise RuntimeError(
            f"{op}: impl 'triton' was asked for ({why}) but the tensors are on {device.type} and the Triton "
            "interpreter is off. Fix: move the tensors to CUDA, use impl='eager' (or AMD_FAST_OPS=eager / "
            "ops impl 'eager' in the config), or export TRITON_INTERPRET=1 before Python starts, i.e. before triton is imported (slow; tests only).")
    if (op, chosen) not in _logged:
        _logged.add((op, chosen))
        log.info("ops.%s: using %s (%s)", op, chosen, why)
    return chosen


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None,
                  impl: str | None = None) -> torch.Tensor:
    """x (B, N, C), sorted ids idx (B, K) -> (B, K, C), plus pos (N, C)/(1, N, C) at the gathered ids."""
    if resolve_impl("masked_gather", x.device, impl) == "triton":
        return _gather.masked_gather_triton(x, idx, pos)
    return _gather.masked_gather_eager(x, idx, pos)


def align_loss(students, teachers, kind: str = "l2", impl: str | None = None) -> torch.Tensor:
    """mean over pairs of the per-pair l2/l1/smooth_l1 mean loss; teachers get no gradient. fp32 scalar."""
    students, teachers = list(students), list(teachers)
    device = students[0].device if students else torch.device("cpu")
    if resolve_impl("align_loss", device, impl) == "triton":
        return _align.align_loss_triton(students, teachers, kind)
    return _align.align_loss_eager(students, teachers, kind)


def norm_pixel_loss(video: torch.Tensor, mask_idx: torch.Tensor, pred: torch.Tensor, *, tubelet: int = 2,
                    patch: int = 16, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                    normalize_target: bool = True, impl: str | None = None) -> torch.Tensor:
    """MSE of pred (B, M, t·p·p·3) against the (per-patch normalized) pixels of the clip at mask_idx. fp32 scalar."""
    kw = dict(tubelet=tubelet, patch=patch, mean=mean, std=std, normalize_target=normalize_target)
    if resolve_impl("norm_pixel_loss", pred.device, impl) == "triton":
        return _pixel.norm_pixel_loss_triton(video, mask_idx, pred, **kw)
    return _pixel.norm_pixel_loss_eager(video, mask_idx, pred, **kw)
