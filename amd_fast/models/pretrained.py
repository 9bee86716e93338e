"""Encoder weights in and out: VideoMAE / VideoMAEv2 / AMD checkpoints <-> our encoders.

``load_pretrained`` accepts a path or an already loaded dict and finds the weights under the
usual keys ('model' | 'module' | 'state_dict' | 'model_state', possibly nested), strips
wrapper prefixes ('module.', '_orig_mod.', 'backbone.') and, for pretraining checkpoints, keeps
the 'encoder.' part (decoder, heads and generators are reported as unexpected). Both the
pretraining names and the fine-tuning names (``patch_embed.proj.*``, ``blocks.N.*``, ``norm``)
map onto ``model.encoder``:

- ``attn.q_bias`` + ``attn.v_bias`` -> ``attn.qkv.bias`` (k third zero; see ``models.vit``);
- ``gamma_1`` / ``gamma_2`` -> ``ls1.gamma`` / ``ls2.gamma``;
- positional tables are skipped (we rebuild the fixed sin-cos table for our grid), as are
  classifier parts (``head``, ``fc_norm``) and blocks past a teacher's early exit.

Unlike the reference (non-strict load that prints missing keys), missing patch-embed or block
weights raise ``CheckpointImportError`` (a ``ValueError``) naming them. A missing final ``norm``
is reported, not fatal: fine-tuned VideoMAE checkpoints with mean pooling have ``fc_norm`` instead.

``export_encoder`` writes ``{'model': state}`` in VideoMAE's fine-tuning names (``q_bias`` /
``v_bias``, ``gamma_*``), which VideoMAE's / AMD's ``run_class_finetuning.py`` loads.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Union

import torch
import torch.nn as nn

from amd_fast.errors import InputError
from amd_fast.serialization import atomic_save, load_file
from amd_fast.models.unwrap import unwrap

log = logging.getLogger(__name__)

_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state", "student")  # "student": our trainer's checkpoints
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_SKIP = re.compile(r"^(pos_embed|head\..*|fc_norm\..*|head_dropout.*|cls_token)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class CheckpointImportError(InputError):
    """A checkpoint that cannot fill our encoder (wrong architecture, missing weights, no tensors)."""


class LoadReport(NamedTuple):
    missing: List[str]  # our encoder keys the checkpoint did not provide (only 'norm.*' can be here without an error)
    unexpected: List[str]  # checkpoint keys that matched nothing (decoder, heads, unknown)
    loaded: List[str]  # our encoder keys that were filled
    skipped: List[str]  # checkpoint keys deliberately not used (pos tables, classifier, blocks past early exit)


def _read(path_or_state: Union[str, os.PathLike, Mapping]) -> Mapping:
    if isinstance(path_or_state, Mapping):
        return path_or_state
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointImportError(f"checkpoint {str(path)!r} does not exist; "
                                    "check the path (model.teacher_checkpoint, or probe's --weights)")
    # weights_only=True with an allowlist for what release checkpoints carry (their argparse args)
    ckpt = load_file(path, CheckpointImportError, "checkpoint")
    if not isinstance(ckpt, Mapping):
        raise CheckpointImportError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def _find_state(ckpt: Mapping) -> Dict[str, torch.Tensor]:
    state = ckpt
    for _ in range(4):  # containers can nest, e.g. {'module': {'model': ...}}
        key = next((k for k in _CONTAINER_KEYS if isinstance(state.get(k), Mapping)), None)
        if key is None:
            break
        log.info("checkpoint: weights under key %r", key)
        state = state[key]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointImportError(
            f"no tensors found in the checkpoint (top-level keys: {sorted(ckpt)[:10]}); expected a state dict or "
            f"one under one of {_CONTAINER_KEYS}"
        )
    return tensors


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def _to_ours(state: Dict[str, torch.Tensor]):
    """Rename checkpoint keys to ``ViTEncoder`` names. Returns (mapped, unexpected, skipped)."""
    state = {_strip(k): v for k, v in state.items()}
    unexpected: List[str] = []
    if any(k.startswith("encoder.") for k in state):  # pretraining checkpoint: only the encoder part is ours
        unexpected = sorted(k for k in state if not k.startswith("encoder."))
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    mapped: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    biases: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if _SKIP.match(k):
            skipped.append(k)
        elif k.endswith(("attn.q_bias", "attn.v_bias")):
            biases.setdefault(k[: -len("q_bias")], {})[k[-6]] = v
        elif k.endswith(".gamma_1") or k.endswith(".gamma_2"):
            mapped[k[: -len("gamma_1")] + f"ls{k[-1]}.gamma"] = v
        elif k.startswith(("patch_embed.", "blocks.", "norm.")):
            mapped[k] = v
        else:
            unexpected.append(k)
    for prefix, qv in biases.items():
        if set(qv) != {"q", "v"}:
            raise CheckpointImportError(f"checkpoint has only {prefix}{next(iter(qv))}_bias; "
                                        "VideoMAE attention needs both q and v")
        mapped[prefix + "qkv.bias"] = torch.cat([qv["q"], torch.zeros_like(qv["q"]), qv["v"]])
    return mapped, unexpected, skipped


def load_pretrained(model: nn.Module, path_or_state, *, strict_encoder: bool = True) -> LoadReport:
    """Load encoder weights into ``model.encoder`` (student or teacher) or into a bare ``ViTEncoder``.

    Raises ``CheckpointImportError`` naming the missing patch-embed / block weights (unless
    ``strict_encoder=False``) and on any shape mismatch. Logs and returns a ``LoadReport``.
    """
    model = unwrap(model)
    encoder = getattr(model, "encoder", model)
    mapped, unexpected, skipped = _to_ours(_find_state(_read(path_or_state)))
    ours = encoder.state_dict()
    depth = len(encoder.blocks)
    for k in list(mapped):
        m = _BLOCK.match(k)
        if (m and int(m.group(1)) >= depth) or (k.startswith("norm.") and k not in ours):
            skipped.append(k)  # past the teacher's early exit / a final norm the teacher does not use
            del mapped[k]
        elif ".ls" in k and k not in ours:
            raise CheckpointImportError(
                f"checkpoint uses LayerScale ({k} from gamma_1/gamma_2) but the model has none; "
                "set model.init_values > 0 (e.g. 0.1) so the blocks have it"
            )
        elif k not in ours:
            unexpected.append(k)
            del mapped[k]
        elif mapped[k].shape != ours[k].shape:
            raise CheckpointImportError(
                f"checkpoint tensor {k} has shape {tuple(mapped[k].shape)} but the model's is {tuple(ours[k].shape)}: "
                f"the checkpoint is for a different architecture / patch / tubelet size than model config"
            )
    missing = sorted(k for k in ours if k not in mapped)
    fatal = [k for k in missing if not k.startswith("norm.")]
    if fatal and strict_encoder:
        raise CheckpointImportError(
            f"checkpoint lacks {len(fatal)} encoder weights, e.g. {fatal[:6]}; it has keys like "
            f"{sorted(mapped)[:4] or (unexpected + skipped)[:4]}. Check that it is a VideoMAE/AMD ViT checkpoint of "
            f"the configured arch, or pass strict_encoder=False to accept a partial load"
        )
    encoder.load_state_dict(mapped, strict=False)
    report = LoadReport(missing, sorted(unexpected), sorted(mapped), sorted(skipped))
    log.info("load_pretrained: %d tensors loaded, %d missing %s, %d unexpected %s, %d skipped (pos tables, "
             "classifier, blocks past early exit)", len(report.loaded), len(missing), missing[:6],
             len(report.unexpected), report.unexpected[:6], len(report.skipped))
    return report


def encoder_state_videomae(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The encoder's weights in VideoMAE fine-tuning names (``q_bias``/``v_bias``, ``gamma_1``/``gamma_2``)."""
    model = unwrap(model)
    encoder = getattr(model, "encoder", model)
    out: Dict[str, torch.Tensor] = {}
    for k, v in encoder.state_dict().items():
        v = v.detach().cpu().clone()
        if k.endswith("attn.qkv.bias"):
            q, _, vb = v.chunk(3)  # the k third is always zero (models.vit zeroes its gradient)
            out[k[: -len("qkv.bias")] + "q_bias"], out[k[: -len("qkv.bias")] + "v_bias"] = q, vb
        elif k.endswith(("ls1.gamma", "ls2.gamma")):
            out[k[: -len("ls1.gamma")] + f"gamma_{k[-7]}"] = v
        else:
            out[k] = v
    return out


def export_encoder(student: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Save ``{'model': encoder state}`` in VideoMAE fine-tuning names; written atomically (temp file + rename)."""
    path = atomic_save({"model": encoder_state_videomae(student)}, Path(path))
    log.info("exported encoder (%s names) to %s", "VideoMAE fine-tune", path)
    return path
