"""AdamW with VideoMAE's parameter groups and per-step schedules.

- No weight decay on 1-D parameters (biases, norm weights), and on any parameter whose name contains
  ``pos_embed``, ``mask_token`` or ``cls_token`` or that the model lists in ``no_weight_decay()``
  (timm / VideoMAE convention).
- Learning rate: linear warmup from ``warmup_lr`` to ``lr`` (its last step at ``lr``), then a half cosine
  down towards ``min_lr``; weight decay: a half cosine from ``weight_decay`` to ``weight_decay_end``, no
  warmup (VideoMAE's ``cosine_scheduler``, value for value: :func:`cosine_schedule`). Both are
  precomputed arrays indexed by the global step; the decay value is written only to the groups that decay.
- The rates in the config are per 256 videos (see :class:`amd_fast.config.OptimConfig`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch
import torch.nn as nn

from amd_fast.config import OptimConfig

log = logging.getLogger(__name__)

NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token")


def _decays(model: nn.Module, name: str, p: torch.Tensor) -> bool:
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    return not (p.ndim <= 1 or name.endswith(".bias") or name in skip or any(k in name for k in NO_DECAY_NAMES))


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups: decayed weights and everything that must not decay (see module doc)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if _decays(model, name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False}]


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> List[Dict]:
    """VideoMAE / BEiT layer-wise lr decay: ``model.layer_id(name)`` in 0..L+1 (``model.num_layers`` = L) puts
    each parameter in a layer; a group per (layer, decays) with ``lr_scale = layer_decay ** (L + 1 - layer)``
    (``apply_schedules`` multiplies the step's lr by it) and the same weight-decay rule as :func:`param_groups`."""
    top = model.num_layers + 1
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decays = model.layer_id(name), _decays(model, name, p)
        g = groups.setdefault((layer, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                 "decay": decays, "lr_scale": layer_decay ** (top - layer),
                                                 "layer": layer})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model_or_groups, cfg: OptimConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over parameter groups (a model: :func:`param_groups` of it); the fused CUDA kernel on CUDA."""
    groups = param_groups(model_or_groups, cfg.weight_decay) if isinstance(model_or_groups, nn.Module) \
        else model_or_groups
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """``total_steps`` values, exactly VideoMAE's / AMD's ``utils.cosine_scheduler``: a linear warmup
    ``np.linspace(warmup_start, base, warmup_steps)`` (both ends included: its last step is at ``base``),
    then ``final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))`` for ``i = 0..n-1``,
    ``n = total_steps - warmup_steps`` (so the cosine part starts at ``base`` too and never reaches ``final``).
    A warmup longer than the run is cut to the run (the reference asserts instead)."""
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps) if warmup_steps > 0 else np.array([])
    n = total_steps - warmup_steps
    # math.cos per step, as the reference: np.cos may differ from it in the last bit
    cos = np.array([final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) for i in range(n)])
    out = np.concatenate((warm, cos)).astype(np.float64)
    assert len(out) == total_steps
    return out


@dataclass
class Schedules:
    lr: np.ndarray
    weight_decay: np.ndarray
    peak_lr: float
    warmup_steps: int


def lr_scale(cfg: OptimConfig, global_videos: int) -> float:
    """AMD / VideoMAE: rates scale with videos per optimizer step / 256 (clips are not counted)."""
    return global_videos / 256.0 if cfg.scale_lr else 1.0


def build_schedules(cfg: OptimConfig, total_steps: int, steps_per_epoch: int, global_videos: int) -> Schedules:
    s = lr_scale(cfg, global_videos)
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_epochs * steps_per_epoch))
    if warmup >= total_steps and total_steps > 1:
        log.warning("warmup (%d steps) is not shorter than the run (%d steps): the lr never reaches its cosine part",
                    warmup, total_steps)
    lr = cosine_schedule(cfg.lr * s, cfg.min_lr * s, total_steps, warmup, cfg.warmup_lr * s)
    wd_end = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
    wd = cosine_schedule(cfg.weight_decay, wd_end, total_steps)
    return Schedules(lr, wd, cfg.lr * s, min(warmup, total_steps))


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: Schedules, step: int) -> None:
    """Set this step's lr on every group (times the group's ``lr_scale``: layer-wise decay) and weight decay
    on the decaying groups."""
    i = min(step, len(schedules.lr) - 1)
    lr, wd = float(schedules.lr[i]), float(schedules.weight_decay[i])
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        if g.get("decay", g["weight_decay"] > 0):
            g["weight_decay"] = wd
