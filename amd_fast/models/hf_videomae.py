"""Hugging Face ``transformers`` VideoMAE folders <-> our encoders: names, architecture, layer-norm epsilons.

A folder is what ``save_pretrained`` writes (and the ``MCG-NJU/videomae-*`` Hub repositories hold): ``config.json``
(``model_type: videomae``) and ``model.safetensors`` or ``pytorch_model.bin`` (or their sharded ``*.index.json``
forms), of a ``VideoMAEForPreTraining``, ``VideoMAEModel`` or ``VideoMAEForVideoClassification``.

Reading (``models.pretrained.load_pretrained`` calls :func:`read_folder` and :func:`check_architecture`):
safetensors files are read with ``safetensors`` (no pickle at all), ``.bin`` files with our weights-only loader.
transformers' names are renamed to VideoMAE's fine-tuning names, which ``load_pretrained`` already maps:

- ``embeddings.patch_embeddings.projection`` -> ``patch_embed.proj``;
- ``encoder.layer.N.attention.attention.{query,key,value}.weight`` -> one ``blocks.N.attn.qkv.weight`` (q, k, v
  stacked), ``query.bias`` / ``value.bias`` (``q_bias`` / ``v_bias`` in older files) -> ``attn.q_bias`` /
  ``attn.v_bias`` (transformers has no key bias either; ours keeps its k third at zero);
- ``attention.output.dense`` -> ``attn.proj``, ``intermediate.dense`` / ``output.dense`` -> ``mlp.fc1`` / ``fc2``,
  ``layernorm_before`` / ``layernorm_after`` -> ``norm1`` / ``norm2``, ``layernorm`` (no mean pooling) -> ``norm``;
- a classifier's ``fc_norm`` / ``classifier`` -> ``fc_norm`` / ``head``; the pretraining decoder
  (``decoder.*``, ``encoder_to_decoder``, ``mask_token``) is reported as unexpected, as in a ``.pth``.

The position table is VideoMAE's fixed sin-cos one in both (transformers does not even save it).

Layer-norm epsilon: transformers' blocks and final norm use ``config.layer_norm_eps`` (1e-12 in its default and
the Hub configs), its classifier's ``fc_norm`` is fixed at PyTorch's 1e-5; amd_fast (as the VideoMAE / AMD
references) uses 1e-6. A loaded folder sets our norms to its values (:func:`apply_layer_norm_eps`), so the
features match transformers' exactly; an export writes our encoder's epsilon into ``layer_norm_eps``
(:func:`encoder_layer_norm_eps`). Only the exported classifier's ``fc_norm`` can't be matched (transformers fixes
it), see ``amd_fast.export``.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Tuple

import torch
import torch.nn as nn

from amd_fast.errors import InputError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install amd_fast[hf]"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
BIN_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HF_FC_NORM_EPS = 1e-5  # transformers' VideoMAEForVideoClassification: nn.LayerNorm(hidden_size), eps not configurable

# transformers name (after the 'videomae.' prefix) -> VideoMAE fine-tuning name
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_PARTS = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}
_BIASES = {"attention.attention.query.bias": "attn.q_bias", "attention.attention.q_bias": "attn.q_bias",
           "attention.attention.value.bias": "attn.v_bias", "attention.attention.v_bias": "attn.v_bias"}
_QKV = ("query", "key", "value")


def require(module: str):
    """Import ``transformers`` or ``safetensors``; missing: one-line InputError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this needs the {module!r} package, which is not installed: {INSTALL_HINT}") from None


def is_folder(path) -> bool:
    """True for a folder with a ``config.json`` (a transformers model folder)."""
    if isinstance(path, Mapping) or path is None:
        return False
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


class Folder(NamedTuple):
    config: Dict  # config.json as read
    state: Dict[str, torch.Tensor]  # weights in VideoMAE fine-tuning names (+ unknown names kept as they were)
    path: Path


def read_config(folder: Path) -> Dict:
    from amd_fast.models.pretrained import CheckpointImportError

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointImportError(f"transformers folder {folder}: config.json cannot be read ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != "videomae":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise CheckpointImportError(f"transformers folder {folder} holds a {kind!r} model, not a VideoMAE one "
                                    "(config.json model_type must be 'videomae'); give a VideoMAE folder")
    return config


def _weight_files(folder: Path) -> Tuple[str, List[Path]]:
    """('safetensors' | 'bin', the files to read), preferring safetensors as transformers does."""
    from amd_fast.models.pretrained import CheckpointImportError

    for kind, (single, index) in (("safetensors", SAFETENSORS_FILES), ("bin", BIN_FILES)):
        if (folder / single).is_file():
            return kind, [folder / single]
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise CheckpointImportError(f"transformers folder {folder}: {index} cannot be read ({e})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointImportError(f"transformers folder {folder}: {index} names {missing[:3]}, which are "
                                            "not there; download the whole folder again")
            return kind, [folder / s for s in shards]
    present = sorted(p.name for p in folder.iterdir())[:8]
    raise CheckpointImportError(f"transformers folder {folder} has config.json but no weights (model.safetensors or "
                                f"pytorch_model.bin; it holds {present}): download the weights too")


def read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The folder's tensors under transformers' names: safetensors without pickle, ``.bin`` weights-only."""
    from amd_fast.models.pretrained import CheckpointImportError
    from amd_fast.serialization import load_file

    kind, files = _weight_files(folder)
    state: Dict[str, torch.Tensor] = {}
    for f in files:
        if kind == "safetensors":
            st = require("safetensors.torch")
            try:
                state.update(st.load_file(str(f), device="cpu"))
            except Exception as e:  # safetensors raises its own SafetensorError on a damaged header / file
                raise CheckpointImportError(f"weights file {f} cannot be read as safetensors ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0][:200] if str(e) else ''}); download it again")
        else:
            part = load_file(f, CheckpointImportError, "weights file")  # weights_only=True + allowlist
            if not isinstance(part, Mapping):
                raise CheckpointImportError(f"weights file {f} holds a {type(part).__name__}, not a state dict")
            state.update({k: v for k, v in part.items() if isinstance(v, torch.Tensor)})
    return state


def to_videomae_names(hf: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """transformers VideoMAE names -> VideoMAE fine-tuning names. Names it does not know are kept, so the load
    report lists them as unexpected (a 'encoder.' name keeps a 'videomae.' prefix: load_pretrained would read a
    bare 'encoder.' prefix as our pretraining checkpoints' encoder part)."""
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, v in hf.items():
        k = name[len("videomae."):] if name.startswith("videomae.") else name
        m = _LAYER.match(k)
        if k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k in ("layernorm.weight", "layernorm.bias"):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith(("fc_norm.", "classifier.")):
            out[k.replace("classifier.", "head.", 1)] = v
        elif m and m.group(2) in _BIASES:
            out[f"blocks.{m.group(1)}.{_BIASES[m.group(2)]}"] = v
        elif m and re.fullmatch(r"attention\.attention\.(query|key|value)\.weight", m.group(2)):
            qkv.setdefault(m.group(1), {})[m.group(2).split(".")[2]] = v
        elif m and m.group(2).rsplit(".", 1)[0] in _LAYER_PARTS and m.group(2).rsplit(".", 1)[1] in ("weight", "bias"):
            part, what = m.group(2).rsplit(".", 1)
            out[f"blocks.{m.group(1)}.{_LAYER_PARTS[part]}.{what}"] = v
        else:
            out["videomae." + k if k.startswith("encoder.") else name] = v
    for i, parts in qkv.items():
        if set(parts) != set(_QKV):
            for p, v in parts.items():  # an incomplete attention: left for the report (its blocks then miss qkv)
                out[f"videomae.encoder.layer.{i}.attention.attention.{p}.weight"] = v
            continue
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts[p] for p in _QKV])
    return out


def from_videomae_names(state: Mapping[str, torch.Tensor], target_keys, prefix: str = "") -> Dict[str, torch.Tensor]:
    """VideoMAE fine-tuning names (``models.pretrained.encoder_state_videomae``, plus ``fc_norm`` / ``head``) ->
    transformers names, spelled as ``target_keys`` (the installed transformers model's state dict keys) spells
    the attention biases (``query.bias`` in transformers 5, ``q_bias`` before). ``prefix``: 'videomae.' for
    models that wrap the base model (the classifier)."""
    targets = set(target_keys)
    out: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = re.match(r"^blocks\.(\d+)\.(.+)$", k)
        if k.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out[prefix + "layernorm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("fc_norm."):
            out[k] = v
        elif k.startswith("head."):
            out["classifier." + k.rsplit(".", 1)[1]] = v
        elif m and m.group(2) == "attn.qkv.weight":
            for p, w in zip(_QKV, v.chunk(3)):
                out[f"{prefix}encoder.layer.{m.group(1)}.attention.attention.{p}.weight"] = w.clone()
        elif m and m.group(2) in ("attn.q_bias", "attn.v_bias"):
            base = f"{prefix}encoder.layer.{m.group(1)}.attention.attention."
            new, old = base + ("query" if "q_" in m.group(2) else "value") + ".bias", base + m.group(2)[5:]
            out[old if old in targets and new not in targets else new] = v
        elif m:
            part, what = m.group(2).rsplit(".", 1)
            hf_part = {v_: k_ for k_, v_ in _LAYER_PARTS.items()}.get(part)
            if hf_part is None:
                raise InputError(f"encoder weight {k} has no place in a transformers VideoMAE (LayerScale "
                                 "'ls1'/'ls2' from model.init_values > 0 is one); export a model without it")
            out[f"{prefix}encoder.layer.{m.group(1)}.{hf_part}.{what}"] = v
        else:
            raise InputError(f"encoder weight {k} has no place in a transformers VideoMAE")
    return out


def read_folder(path) -> Folder:
    """Config and weights (VideoMAE names) of a transformers VideoMAE folder."""
    folder = Path(path)
    config = read_config(folder)
    state = to_videomae_names(read_weights(folder))
    log.info("transformers folder %s: %s, %d tensors", folder, ", ".join(config.get("architectures") or ["?"]),
             len(state))
    return Folder(config, state, folder)


# ---- architecture ----------------------------------------------------------------------------------------------

_ARCH_KEYS = {"AMDTeacher": ("model.teacher", "teacher"), "AMDStudent": ("model.student", "student"),
              "VideoClassifier": ("model.arch", "arch")}


def _pair(x) -> Tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (list, tuple)) else (int(x), int(x))


def check_architecture(config: Mapping, model: nn.Module, source: str, takes_head: bool) -> None:
    """The folder's architecture (config.json) against the model the run's config built: hidden size, depth,
    heads, MLP width, patch, tubelet, frames, image size, q/v bias, activation, and for a classifier head its
    pooling. The first mismatch is a one-line ``CheckpointImportError`` naming both values."""
    from amd_fast.models.pretrained import CheckpointImportError

    encoder = getattr(model, "encoder", model)
    arch = encoder.arch
    key, attr = _ARCH_KEYS.get(type(model).__name__, ("the model's arch", None))
    arch_name = getattr(getattr(model, "cfg", None), attr, None) if attr else None
    arch_txt = f"{key}={arch_name}" if arch_name else key
    t, p, _ = encoder.patch_embed.proj.kernel_size
    size = _pair(config.get("image_size", 224))
    rows = [  # (config.json key, its value, ours, how the run names ours)
        ("hidden_size", config.get("hidden_size", 768), arch.dim, f"{arch_txt} (width {arch.dim})"),
        ("num_hidden_layers", config.get("num_hidden_layers", 12), arch.depth, f"{arch_txt} (depth {arch.depth})"),
        ("num_attention_heads", config.get("num_attention_heads", 12), arch.heads, f"{arch_txt} ({arch.heads} heads)"),
        ("intermediate_size", config.get("intermediate_size", 3072), int(arch.dim * arch.mlp_ratio),
         f"{arch_txt} (MLP width {int(arch.dim * arch.mlp_ratio)})"),
        ("patch_size", _pair(config.get("patch_size", 16)), (p, p), f"model.patch_size={p}"),
        ("tubelet_size", config.get("tubelet_size", 2), t, f"model.tubelet_size={t}"),
        ("num_frames", config.get("num_frames", 16), encoder.patch_embed.num_frames,
         f"data.num_frames={encoder.patch_embed.num_frames}"),
        ("image_size", size, (encoder.patch_embed.input_size,) * 2, f"data.input_size={encoder.patch_embed.input_size}"),
        ("num_channels", config.get("num_channels", 3), 3, "3 (RGB clips)"),
        ("qv_bias", bool(config.get("qv_bias", config.get("qkv_bias", True))), True,
         "amd_fast's ViTs, which always have q and v biases"),
        ("hidden_act", config.get("hidden_act", "gelu"), "gelu", "amd_fast's ViTs (exact GELU)"),
    ]
    if takes_head:
        rows.append(("use_mean_pooling", bool(config.get("use_mean_pooling", True)), True,
                     "amd_fast's classifier (mean over tokens, then fc_norm)"))
    for name, theirs, ours, what in rows:
        if theirs != ours:
            shown = theirs[0] if name in ("patch_size", "image_size") and theirs[0] == theirs[1] else theirs
            raise CheckpointImportError(
                f"transformers folder {source}: config.json has {name}={shown!r} but the run has {what}; make the "
                "run's config match the folder (or use a folder made for this one)")


def takes_head(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """True when the folder has a classifier head of the model's shape, which load_pretrained will load."""
    head = getattr(model, "head", None)
    w = state.get("head.weight")
    return isinstance(head, nn.Linear) and w is not None and tuple(w.shape) == tuple(head.weight.shape)


def _encoder_norms(encoder: nn.Module) -> List[nn.LayerNorm]:
    norms = [n for blk in encoder.blocks for n in (blk.norm1, blk.norm2)]
    return norms + ([encoder.norm] if isinstance(getattr(encoder, "norm", None), nn.LayerNorm) else [])


def apply_layer_norm_eps(model: nn.Module, config: Mapping, fc_norm_loaded: bool) -> None:
    """Give the model's encoder norms the folder's ``layer_norm_eps`` (and its ``fc_norm``, when loaded from the
    folder, transformers' fixed 1e-5), so its features are transformers' to float rounding."""
    eps = float(config.get("layer_norm_eps", 1e-12))
    encoder = getattr(model, "encoder", model)
    for norm in _encoder_norms(encoder):
        norm.eps = eps
    fc_norm = getattr(model, "fc_norm", None)
    if fc_norm_loaded and isinstance(fc_norm, nn.LayerNorm):
        fc_norm.eps = HF_FC_NORM_EPS
    log.info("layer norms: eps %g as the folder's config.json (amd_fast's own default is 1e-6)%s", eps,
             f"; fc_norm eps {HF_FC_NORM_EPS:g} as transformers' classifier" if fc_norm_loaded else "")


def encoder_layer_norm_eps(encoder: nn.Module) -> float:
    """The one epsilon of the encoder's norms (what an export writes as ``layer_norm_eps``)."""
    values = {n.eps for n in _encoder_norms(encoder)}
    if len(values) != 1:
        raise InputError(f"the encoder's layer norms use several eps values {sorted(values)}; transformers' VideoMAE "
                         "has one layer_norm_eps")
    return values.pop()
