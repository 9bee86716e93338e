"""Encoder weights in and out: VideoMAE / VideoMAEv2 / AMD checkpoints <-> our encoders.

``load_pretrained`` accepts a path or an already loaded dict and finds the weights under the
usual keys ('model' | 'module' | 'state_dict' | 'model_state', possibly nested), strips
wrapper prefixes ('module.', '_orig_mod.', 'backbone.') and, for pretraining checkpoints, keeps
the 'encoder.' part (decoder, heads and generators are reported as unexpected). Both the
pretraining names and the fine-tuning names (``patch_embed.proj.*``, ``blocks.N.*``, ``norm``)
map onto ``model.encoder``:

- ``attn.q_bias`` + ``attn.v_bias`` -> ``attn.qkv.bias`` (k third zero; see ``models.vit``);
- ``gamma_1`` / ``gamma_2`` -> ``ls1.gamma`` / ``ls2.gamma``;
- a fixed sin-cos position table is skipped (we rebuild it for our grid); a learned one (VideoMAEv2
  fine-tuned models) is resampled to our grid, bicubic over space as the reference, linear over time;
- a classifier's ``head`` / ``fc_norm`` are loaded into a model that has them at the same shape (a fine-tuned
  release file evaluated as is), else skipped (another class count, as the reference drops it);
- blocks past the model's depth are skipped only for a model that declares ``early_exit = True`` (the AMD
  teacher, built up to its last aligned block); for any other model (the fine-tuning classifier, the
  probe's student) a deeper checkpoint is another architecture: ``CheckpointImportError`` naming both depths.

Every tensor that would be loaded is checked for NaN / inf first: a damaged file or one saved from a
diverged run stops with ``CheckpointImportError`` naming the file and the tensors, instead of a
"non-finite loss" at the first step.

Unlike the reference (non-strict load that prints missing keys), missing patch-embed or block
weights raise ``CheckpointImportError`` (a ``ValueError``) naming them. A missing final ``norm``
is reported, not fatal: fine-tuned VideoMAE checkpoints with mean pooling have ``fc_norm`` instead.

``export_encoder`` writes ``{'model': state}`` in VideoMAE's fine-tuning names (``q_bias`` /
``v_bias``, ``gamma_*``), which VideoMAE's / AMD's ``run_class_finetuning.py`` loads;
``export_encoder_safetensors`` the same tensors as safetensors (training writes both).

Besides ``torch.save`` files, ``load_pretrained`` reads ``.safetensors`` files (with ``safetensors``, no pickle)
and Hugging Face ``transformers`` VideoMAE folders (``config.json`` + weights): ``models.hf_videomae`` renames
their tensors to the VideoMAE names above and checks their ``config.json`` against the model first; the same
report (missing / unexpected / skipped) follows.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn as nn

from amd_fast.errors import InputError
from amd_fast.models import hf_videomae
from amd_fast.serialization import atomic_save, load_file
from amd_fast.models.unwrap import unwrap
from amd_fast.models.vit import get_sinusoid_encoding_table

log = logging.getLogger(__name__)

_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state", "student")  # "student": our trainer's checkpoints
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_SKIP = re.compile(r"^(head_dropout.*|cls_token)$")
_EXTRA = re.compile(r"^(pos_embed|head\.(weight|bias)|fc_norm\.(weight|bias))$")  # taken by models that have them
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class CheckpointImportError(InputError):
    """A checkpoint that cannot fill our encoder (wrong architecture, missing weights, no tensors)."""


class LoadReport(NamedTuple):
    missing: List[str]  # our encoder keys the checkpoint did not provide (only 'norm.*' can be here without an error)
    unexpected: List[str]  # checkpoint keys that matched nothing (decoder, heads, unknown)
    loaded: List[str]  # our encoder keys that were filled
    skipped: List[str]  # checkpoint keys deliberately not used (pos tables, classifier, blocks past early exit)


def _source(path_or_state) -> str:
    return "<in-memory state dict>" if isinstance(path_or_state, Mapping) else str(path_or_state)


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity, in order."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state: Mapping[str, torch.Tensor], source: str, what: str = "checkpoint") -> None:
    """``CheckpointImportError`` naming ``source`` and the first tensors with NaN / inf, if there are any."""
    bad = nonfinite_tensors(state)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointImportError(
            f"{what} {source} has NaN/inf values in {len(bad)} of its {len(state)} tensors to load "
            f"({', '.join(bad[:5])}{more}): the file is damaged or was saved from a diverged run; use another "
            "checkpoint (e.g. an earlier step-*.pt of that run) or re-download it")


def _arch_hint(depth: int, width: Optional[int]) -> str:
    from amd_fast.models.archs import ARCHS

    names = [n for n, a in ARCHS.items() if a.depth == depth and (width is None or a.dim == width)]
    return f" (it matches arch {' / '.join(names)})" if names else ""


def _read(path_or_state: Union[str, os.PathLike, Mapping]) -> Mapping:
    if isinstance(path_or_state, Mapping):
        return path_or_state
    path = Path(path_or_state)
    if path.is_dir():  # (a transformers folder, with config.json, never gets here: see load_pretrained)
        found = sorted(str(p.relative_to(path)) for pattern in ("*.pth", "*.pt", "*.safetensors", "checkpoints/*.pth")
                       for p in path.glob(pattern))[:4]
        raise CheckpointImportError(f"checkpoint {str(path)!r} is a folder, not a file, nor a transformers VideoMAE "
                                    "folder (no config.json); point at the weights file "
                                    f"itself{' (it holds ' + ', '.join(found) + ')' if found else ''}, e.g. "
                                    "<run>/checkpoints/encoder.pth or a step-*.pt")
    if not path.is_file():
        raise CheckpointImportError(f"checkpoint {str(path)!r} does not exist; "
                                    "check the path given (model.pretrained, model.teacher_checkpoint or probe's --weights)")
    if path.suffix == ".safetensors":  # e.g. our encoder.safetensors: read without pickle
        return _read_safetensors(path)
    # weights_only=True with an allowlist for what release checkpoints carry (their argparse args)
    ckpt = load_file(path, CheckpointImportError, "checkpoint")
    if not isinstance(ckpt, Mapping):
        raise CheckpointImportError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    return ckpt


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    st = hf_videomae.require("safetensors.torch")
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors' own SafetensorError on a damaged header or a foreign file
        raise CheckpointImportError(f"checkpoint {path} cannot be read as safetensors ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


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
    """Rename checkpoint keys to ``ViTEncoder`` names. Returns (mapped, unexpected, skipped, extras): extras are
    the classifier head / fc_norm and the position table, which only some models take."""
    state = {_strip(k): v for k, v in state.items()}
    unexpected: List[str] = []
    extras: Dict[str, torch.Tensor] = {}
    if any(k.startswith("encoder.") for k in state):  # pretraining / our checkpoints: the encoder part, a head
        for k in sorted(k for k in state if not k.startswith("encoder.")):
            (extras.__setitem__(k, state[k]) if _EXTRA.match(k) else unexpected.append(k))
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    mapped: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    biases: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if _EXTRA.match(k):
            extras[k] = v
        elif _SKIP.match(k):
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
    return mapped, unexpected, skipped, extras


def load_pretrained(model: nn.Module, path_or_state, *, strict_encoder: bool = True,
                    early_exit: Optional[bool] = None) -> LoadReport:
    """Load encoder weights into ``model.encoder`` (student, teacher or classifier) or into a bare ``ViTEncoder``.

    Raises ``CheckpointImportError`` naming the missing patch-embed / block weights (unless
    ``strict_encoder=False``), on any shape mismatch, on a checkpoint with more blocks than the model (unless
    ``early_exit``: None = the model's own ``early_exit`` attribute, True only for the AMD teacher) and on
    NaN / inf in any tensor it would load. Logs and returns a ``LoadReport``.
    """
    model = unwrap(model)
    encoder = getattr(model, "encoder", model)
    if early_exit is None:
        early_exit = bool(getattr(model, "early_exit", False))
    source = _source(path_or_state)
    folder = None
    if hf_videomae.is_folder(path_or_state):  # a transformers VideoMAE folder: its config must be the run's model
        folder = hf_videomae.read_folder(path_or_state)
        hf_videomae.check_architecture(folder.config, model, source, hf_videomae.takes_head(model, folder.state))
        ckpt = folder.state
    else:
        ckpt = _read(path_or_state)
    mapped, unexpected, skipped, extras = _to_ours(_find_state(ckpt))
    ours = {k: v for k, v in encoder.state_dict().items() if k != "pos_embed"}  # (a loaded learned table)
    depth = len(encoder.blocks)
    ckpt_depth = 1 + max((int(m.group(1)) for m in map(_BLOCK.match, mapped) if m), default=-1)
    if ckpt_depth > depth and not early_exit:
        width = mapped.get("blocks.0.norm1.weight")
        raise CheckpointImportError(
            f"checkpoint {source} has {ckpt_depth} blocks but the model has {depth}: it is for a deeper "
            f"architecture{_arch_hint(ckpt_depth, None if width is None else width.shape[0])}; set the model's "
            "arch to the checkpoint's (model.arch for fine-tuning, model.student for the probe) or use a "
            f"checkpoint of a {depth}-block model (only the AMD teacher stops early on purpose)")
    for k in list(mapped):
        m = _BLOCK.match(k)
        if (m and int(m.group(1)) >= depth) or (k.startswith("norm.") and k not in ours):
            skipped.append(k)  # past the teacher's early exit / a final norm the model does not have
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
                f"checkpoint {source}: tensor {k} has shape {tuple(mapped[k].shape)} but the model's is "
                f"{tuple(ours[k].shape)}: "
                f"the checkpoint is for a different architecture / patch / tubelet size than model config"
            )
    missing = sorted(k for k in ours if k not in mapped)
    fatal = [k for k in missing if not k.startswith("norm.")]
    if fatal and strict_encoder:
        raise CheckpointImportError(
            f"checkpoint {source} lacks {len(fatal)} encoder weights, e.g. {fatal[:6]}; it has keys like "
            f"{sorted(mapped)[:4] or (unexpected + skipped)[:4]}. Check that it is a VideoMAE/AMD ViT checkpoint of "
            f"the configured arch, or pass strict_encoder=False to accept a partial load"
        )
    taken: Dict[str, torch.Tensor] = {}  # a classifier head / fc_norm: taken when the model has one of that shape
    for k, v in extras.items():
        if k == "pos_embed":
            continue
        module = getattr(model, k.split(".")[0], None)
        target = getattr(module, k.split(".")[1], None) if module is not None else None
        if isinstance(target, torch.Tensor) and target.shape == v.shape:
            taken[k] = v
        else:
            skipped.append(k)  # the reference drops a head of another shape too (another class count)
    check_finite({**mapped, **taken, **({"pos_embed": extras["pos_embed"]} if "pos_embed" in extras else {})},
                 source)
    encoder.load_state_dict(mapped, strict=False)
    loaded = sorted(mapped)
    if "pos_embed" in extras:
        note = _use_position_table(encoder, extras.pop("pos_embed"), ckpt)
        (loaded if note == "loaded" else skipped).append("pos_embed")
    for k, v in taken.items():
        target = getattr(getattr(model, k.split(".")[0]), k.split(".")[1])
        with torch.no_grad():
            target.copy_(v)
        loaded.append(k)
    if folder is not None:  # transformers' layer-norm eps, so the features are the folder's exactly
        hf_videomae.apply_layer_norm_eps(model, folder.config, fc_norm_loaded="fc_norm.weight" in taken)
    report = LoadReport(missing, sorted(unexpected), loaded, sorted(skipped))
    log.info("load_pretrained: %d tensors loaded, %d missing %s, %d unexpected %s, %d skipped (pos tables, "
             "classifier, blocks past early exit)", len(report.loaded), len(missing), missing[:6],
             len(report.unexpected), report.unexpected[:6], len(report.skipped))
    return report


def interpolate_position_table(table: torch.Tensor, old_grid, new_grid) -> torch.Tensor:
    """A (T'*H'*W', C) table of ``old_grid`` resampled to ``new_grid``: bicubic over space per time slot (the
    reference's rule), then linear over time when the frame counts differ."""
    (t0, h0, w0), (t1, h1, w1) = old_grid, new_grid
    c = table.shape[-1]
    x = table.reshape(t0, h0, w0, c).permute(0, 3, 1, 2).float()  # (T', C, H', W')
    if (h0, w0) != (h1, w1):
        x = torch.nn.functional.interpolate(x, size=(h1, w1), mode="bicubic", align_corners=False)
    if t0 != t1:
        x = x.permute(1, 2, 3, 0).reshape(1, c * h1 * w1, t0)
        x = torch.nn.functional.interpolate(x, size=t1, mode="linear", align_corners=False)
        x = x.reshape(c, h1, w1, t1).permute(3, 0, 1, 2)
    return x.permute(0, 2, 3, 1).reshape(t1 * h1 * w1, c).to(table.dtype)


def _checkpoint_grid(n: int, new_grid, ckpt: Mapping):
    """The token grid of a checkpoint's position table of ``n`` rows: the model's frame count when the rest
    is a square (the reference's assumption), else the frame count its training args name."""
    t = new_grid[0]
    side = round((n // t) ** 0.5) if n % t == 0 else 0
    if side and t * side * side == n:
        return (t, side, side)
    args = ckpt.get("args") if isinstance(ckpt, Mapping) else None
    frames, tubelet = getattr(args, "num_frames", None), getattr(args, "tubelet_size", None)
    if frames and tubelet and n % (frames // tubelet) == 0:
        t = frames // tubelet
        side = round((n // t) ** 0.5)
        if t * side * side == n:
            return (t, side, side)
    raise CheckpointImportError(f"checkpoint position table has {n} rows, which is no T' x S x S grid with the "
                                f"model's T'={new_grid[0]} nor one its args name; cannot resample it")


def _use_position_table(encoder: nn.Module, table: torch.Tensor, ckpt: Mapping) -> str:
    """A checkpoint's ``pos_embed``: a fixed sin-cos table is rebuilt for our grid (skipped); a learned one is
    resampled to our grid (:func:`interpolate_position_table`) and used, fixed, in place of the sin-cos table."""
    table = table.reshape(-1, table.shape[-1]).float()
    n, c = table.shape
    if c != encoder.dim:
        raise CheckpointImportError(f"checkpoint pos_embed has width {c} but the model's is {encoder.dim}: the "
                                    "checkpoint is for another architecture")
    if torch.allclose(table, get_sinusoid_encoding_table(n, c), atol=1e-4):
        return "skipped"
    grid = encoder.patch_embed.grid
    old = _checkpoint_grid(n, grid, ckpt)
    new = interpolate_position_table(table, old, grid)
    encoder.register_buffer("pos_embed", new.to(encoder.pos_embed.device), persistent=True)
    log.info("load_pretrained: learned position table %s resampled to %s and used (fixed) for this grid",
             old, grid)
    return "loaded"


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


def encoder_geometry(model: nn.Module) -> Dict[str, str]:
    """What an encoder's weights do not say about it (arch name, clip shape), as text metadata."""
    model = unwrap(model)
    encoder = getattr(model, "encoder", model)
    t, p, _ = encoder.patch_embed.proj.kernel_size
    arch = getattr(getattr(model, "cfg", None), "student", None) or getattr(getattr(model, "cfg", None), "arch", None)
    meta = {**({"arch": arch} if arch else {}), "input_size": encoder.patch_embed.input_size,
            "num_frames": encoder.patch_embed.num_frames, "patch_size": p, "tubelet_size": t, "heads": encoder.arch.heads}
    return {k: str(v) for k, v in meta.items()}


def export_encoder_safetensors(student: nn.Module, path: Union[str, os.PathLike]) -> Optional[Path]:
    """The weights of :func:`export_encoder` as safetensors (read without pickle, by ``load_pretrained`` too), with
    :func:`encoder_geometry` in its metadata; atomic (temp file + rename). None, logged, without ``safetensors``."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        log.warning("%s not written: the safetensors package is missing (pip install amd_fast[hf])", Path(path).name)
        return None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in encoder_state_videomae(student).items()}, str(tmp),
                  metadata={"format": "pt", "amd_fast": "encoder (VideoMAE fine-tuning names)",
                            **encoder_geometry(student)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported encoder (safetensors) to %s", path)
    return path
