"""Reach the model inside training wrappers (DDP / FSDP ``.module``, ``torch.compile``'s ``._orig_mod``)."""
from __future__ import annotations

import torch.nn as nn


def unwrap(module: nn.Module) -> nn.Module:
    while True:
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner
