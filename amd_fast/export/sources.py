"""What an export starts from: one of our weight files, turned back into the model it holds plus its run's facts.

- a pretraining checkpoint (``step-*.pt`` with ``student``): the student encoder (final norm included);
- a fine-tuning checkpoint (``step-*.pt`` with ``model``): the whole classifier (encoder, ``fc_norm``, head);
- an encoder file (``encoder.pth``, ``encoder.safetensors``, or a VideoMAE / AMD release ``.pth``): the encoder.
  Its weights give the width, depth, patch and tubelet; the heads and the clip shape come from the file's
  metadata (``encoder.safetensors``), else the run's ``config.yaml`` beside it, else the command's flags.

Checkpoints carry their run's config; the run folder (for ``eval/test.json`` and the model card) is where the
checkpoint lies (``<run>/checkpoints/step-*.pt``), else the config's ``log.dir``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

import torch
import torch.nn as nn
import yaml

from amd_fast.errors import InputError
from amd_fast.models.archs import ARCHS, get_arch
from amd_fast.models.pretrained import CheckpointImportError, load_pretrained
from amd_fast.models.vit import ViTEncoder
from amd_fast.serialization import load_file

log = logging.getLogger(__name__)

TRAIN_FORMAT = "amd_fast.train/1"  # amd_fast.trainer.checkpoint.FORMAT (not imported: that pulls in the trainer)


class Exportable(NamedTuple):
    model: nn.Module  # a VideoClassifier ('finetune') or a ViTEncoder ('pretrain', 'encoder')
    kind: str  # 'pretrain' | 'finetune' | 'encoder'
    config: Optional[Dict[str, Any]]  # the run's whole config, as saved (None: unknown)
    run_dir: Optional[Path]  # the run's log folder, when found
    step: Optional[int]
    source: Path


def _fields(cls, values: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (values or {}).items() if k in names}


def _run_dir(path: Path, config: Optional[Dict[str, Any]]) -> Optional[Path]:
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file() or (folder / "run.json").is_file():
            return folder
    log_dir = ((config or {}).get("log") or {}).get("dir")
    return Path(log_dir) if log_dir and Path(log_dir).is_dir() else None


def _run_config(run_dir: Optional[Path]) -> Optional[Dict[str, Any]]:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return None
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read %s: %s", run_dir / "config.yaml", e)
        return None
    return cfg if isinstance(cfg, dict) else None


def _pretrain_encoder(state: Dict[str, Any], config: Dict[str, Any], path: Path) -> ViTEncoder:
    from amd_fast.models.config import ModelConfig

    mcfg = ModelConfig(**_fields(ModelConfig, config.get("model")))
    encoder = ViTEncoder(get_arch(mcfg.student), input_size=mcfg.input_size, patch_size=mcfg.patch_size,
                         num_frames=mcfg.num_frames, tubelet_size=mcfg.tubelet_size, init_values=mcfg.init_values)
    load_pretrained(encoder, state["student"])  # the encoder part; decoder, heads, generators: unexpected (logged)
    return encoder


def _classifier(state: Dict[str, Any], config: Dict[str, Any], path: Path) -> nn.Module:
    from amd_fast.models import hf_videomae
    from amd_fast.models.classifier import ClassifierConfig, VideoClassifier

    ccfg = ClassifierConfig(**{**_fields(ClassifierConfig, config.get("model")), "pretrained": None})
    model = VideoClassifier(ccfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointImportError(f"checkpoint {path}: its weights do not fit the model its own config describes "
                                    f"({str(e).splitlines()[0][:200]})") from None
    init = (config.get("model") or {}).get("pretrained")
    if init and hf_videomae.is_folder(init):  # fine-tuned from a transformers folder: it trained with those eps
        folder_cfg = hf_videomae.read_config(Path(init))
        head = folder_cfg.get("num_labels", len(folder_cfg.get("id2label") or {})) == ccfg.num_classes
        hf_videomae.apply_layer_norm_eps(model, folder_cfg, fc_norm_loaded=head and "VideoMAEForVideoClassification"
                                         in (folder_cfg.get("architectures") or []))
    return model


def _infer_arch(state: Dict[str, torch.Tensor], hint: Optional[str], path: Path) -> str:
    width = state["patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if hint:
        arch = get_arch(hint)
        if (arch.dim, arch.depth) != (width, depth):
            raise InputError(f"{path} holds a {depth}-block, {width}-wide encoder but arch {hint} is "
                             f"{arch.depth} x {arch.dim}; give the right --arch")
        return hint
    names = [n for n, a in ARCHS.items() if (a.dim, a.depth) == (width, depth)]
    if len(names) != 1:
        raise InputError(f"{path} holds a {depth}-block, {width}-wide encoder, which is "
                         f"{'none' if not names else 'several'} of amd_fast's archs ({', '.join(names or ARCHS)}): "
                         "name it with --arch")
    return names[0]


def _encoder_file(path: Path, overrides: Dict[str, Any]) -> Exportable:
    meta: Dict[str, str] = {}
    if path.suffix == ".safetensors":
        from amd_fast.models import hf_videomae

        st = hf_videomae.require("safetensors")
        with st.safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    run_dir = _run_dir(path, None)
    config = _run_config(run_dir)
    run_model = (config or {}).get("model") or {}
    # the encoder's tensors under our names, as load_pretrained maps them (VideoMAE names, checkpoints, releases)
    from amd_fast.models.pretrained import _find_state, _read, _to_ours

    mapped = _to_ours(_find_state(_read(path)))[0]
    if "patch_embed.proj.weight" not in mapped or not any(k.startswith("blocks.") for k in mapped):
        raise CheckpointImportError(f"{path} holds no ViT encoder weights (patch_embed / blocks); give a "
                                    "step-*.pt, encoder.pth or encoder.safetensors")
    t, p = mapped["patch_embed.proj.weight"].shape[2:4]
    geometry = {}
    for key in ("input_size", "num_frames"):
        value = overrides.get(key) or meta.get(key) or run_model.get(key)
        if value is None:
            raise InputError(f"{path}: its {key} is not recorded (no metadata, no config.yaml of its run beside it); "
                             f"give it with --{key.replace('_', '-')}")
        geometry[key] = int(value)
    arch = _infer_arch(mapped, overrides.get("arch") or meta.get("arch") or run_model.get("student")
                       or run_model.get("arch"), path)
    encoder = ViTEncoder(get_arch(arch), patch_size=int(p), tubelet_size=int(t), final_norm="norm.weight" in mapped,
                         **geometry)
    load_pretrained(encoder, path)
    log.info("encoder file %s: arch %s, %d frames at %d px", path, arch, geometry["num_frames"], geometry["input_size"])
    return Exportable(encoder, "encoder", config, run_dir, None, path)


def load_source(path, **overrides) -> Exportable:
    """The model held by ``path`` (see the module doc). ``overrides``: ``arch``, ``input_size``, ``num_frames`` for
    encoder files that do not record them."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: give a weights file (<run>/checkpoints/step-*.pt, encoder.pth or "
                         "encoder.safetensors)")
    if not path.is_file():
        raise InputError(f"{path} does not exist; give a checkpoint (step-*.pt), encoder.pth or encoder.safetensors")
    if path.suffix != ".safetensors":
        state = load_file(path, CheckpointImportError, "checkpoint")  # weights_only=True: never runs code
        if isinstance(state, dict) and state.get("format") == TRAIN_FORMAT:
            config = state.get("config") or {}
            run_dir = _run_dir(path, config)
            if "model" in state:
                return Exportable(_classifier(state, config, path), "finetune", config, run_dir, state.get("step"),
                                  path)
            if "student" in state:
                return Exportable(_pretrain_encoder(state, config, path), "pretrain", config, run_dir,
                                  state.get("step"), path)
            raise CheckpointImportError(f"checkpoint {path} holds neither a student nor a classifier")
    return _encoder_file(path, overrides)
