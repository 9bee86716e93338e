"""The one place that picks Triton or eager for the memory-bound ops.

Each op takes ``impl``: ``'triton'``, ``'eager'`` or None (automatic: ``triton`` when the tensors are
on CUDA, ``eager`` otherwise). There is no process-wide switch: the training config's
``train.ops_impl`` is turned into an ``impl`` once by :func:`configured_impl` and handed to the
objective and the models, which pass it on every call. ``AMD_FAST_OPS=triton|eager`` in the
environment overrides the config there (logged); an explicit ``impl=`` in code is never overridden.
The choice is logged once per (op, impl).

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
from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMPLS = ("triton", "eager")
ENV_VAR = "AMD_FAST_OPS"
_logged: set[tuple[str, str]] = set()


def _check_name(name: str, where: str) -> None:
    if name not in IMPLS:
        raise ValueError(f"{where}: unknown ops impl {name!r}; use one of {IMPLS} (or None for automatic)")


def configured_impl(config_value: str | None) -> str | None:
    """The ``impl`` a run passes to every op: ``$AMD_FAST_OPS`` if set (an override, logged), else the
    config's value (``'auto'``/None -> None, i.e. automatic per device)."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        _check_name(env, ENV_VAR)
        if env != config_value and ("override", env) not in _logged:
            _logged.add(("override", env))
            log.warning("ops: %s=%s overrides the config's ops choice (%s)", ENV_VAR, env, config_value or "auto")
        return env
    if config_value in (None, "auto"):
        return None
    _check_name(config_value, "ops impl")
    return config_value


def triton_interpreted() -> bool:
    """True when the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import time)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_gather._gather_fwd_kernel, InterpretedFunction)


def resolve_impl(op: str, device: torch.device, impl: str | None = None) -> str:
    """Which implementation ``op`` runs for tensors on ``device`` (``impl=None``: automatic)."""
    if impl is not None:
        _check_name(impl, f"{op}(impl=...)")
        chosen, why = impl, "asked for"
    else:
        chosen, why = ("triton" if device.type == "cuda" else "eager"), f"automatic (tensors on {device.type})"
    if chosen == "triton" and device.type != "cuda" and not triton_interpreted():
        raise RuntimeError(
            f"{op}: impl 'triton' was asked for but the tensors are on {device.type} and the Triton "
            "interpreter is off. Fix: move the tensors to CUDA, use train.ops_impl=eager (or "
            f"{ENV_VAR}=eager), or export TRITON_INTERPRET=1 before Python starts, i.e. before triton is "
            "imported (slow; tests only).")
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
                    patch: int = 16, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    normalize_target: bool = True, impl: str | None = None) -> torch.Tensor:
    """MSE of pred (B, M, t·p·p·3) against the (per-patch normalized) pixels of the clip at mask_idx. fp32 scalar."""
    kw = dict(tubelet=tubelet, patch=patch, mean=mean, std=std, normalize_target=normalize_target)
    if resolve_impl("norm_pixel_loss", pred.device, impl) == "triton":
        return _pixel.norm_pixel_loss_triton(video, mask_idx, pred, **kw)
    return _pixel.norm_pixel_loss_eager(video, mask_idx, pred, **kw)
