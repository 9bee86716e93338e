"""Our models as Hugging Face ``transformers`` VideoMAE folders (``python -m amd_fast.export --format hf``).

- an encoder (pretraining student, ``encoder.pth``) -> ``VideoMAEModel``; with its final norm (a pretraining
  encoder) ``use_mean_pooling=false``, so ``last_hidden_state`` is our encoder's output, norm included;
- a fine-tuned classifier (``model.pool=mean``) -> ``VideoMAEForVideoClassification`` (``use_mean_pooling=true``:
  mean over tokens, ``fc_norm``, ``classifier``), ``id2label`` from the shards' class names.

The folder is written by transformers itself (``save_pretrained``: ``config.json``, ``model.safetensors``) after a
strict ``load_state_dict`` of our renamed weights (``models.hf_videomae``), plus a model card ``README.md``; it is
written beside the target and renamed into place when complete.

One setting can't be carried: transformers' classifier fixes its ``fc_norm`` eps at 1e-5, ours defaults to 1e-6 (the
VideoMAE reference's, ``model.fc_norm_eps``). A classifier fine-tuned with ``model.fc_norm_eps=1e-5`` exports exactly;
for any other eps the export measures what it does to the logits on a random clip and logs it as a warning (up to
~2e-4 on logits of order 1 in our tests; the ranking did not change). The block norms' eps is written exactly
(``layer_norm_eps``), so the encoder's features are exact. transformers expects clips as ``(B, T, 3, H, W)``, ours are ``(B, 3, T, H, W)``.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from amd_fast.errors import InputError
from amd_fast.models import hf_videomae
from amd_fast.models.pretrained import encoder_state_videomae
from amd_fast.models.unwrap import unwrap

log = logging.getLogger(__name__)

__all__ = ["to_transformers", "hf_config", "hf_state"]


def _is_classifier(model: nn.Module) -> bool:
    return isinstance(getattr(model, "head", None), nn.Linear) and hasattr(model, "fc_norm")


def hf_config(model: nn.Module, classes: Optional[Sequence[str]] = None, encoder_only: bool = False):
    """The ``VideoMAEConfig`` of ``model`` (our encoder or classifier)."""
    transformers = hf_videomae.require("transformers")
    model = unwrap(model)
    encoder = getattr(model, "encoder", model)
    arch = encoder.arch
    t, p, _ = encoder.patch_embed.proj.kernel_size
    kwargs = dict(image_size=encoder.patch_embed.input_size, patch_size=p, num_channels=3,
                  num_frames=encoder.patch_embed.num_frames, tubelet_size=t, hidden_size=arch.dim,
                  num_hidden_layers=len(encoder.blocks), num_attention_heads=arch.heads,
                  intermediate_size=int(arch.dim * arch.mlp_ratio), hidden_act="gelu",
                  layer_norm_eps=hf_videomae.encoder_layer_norm_eps(encoder), qv_bias=True,
                  use_mean_pooling=getattr(encoder, "norm", None) is None,
                  decoder_hidden_size=arch.decoder_dim, decoder_num_attention_heads=arch.decoder_heads,
                  decoder_intermediate_size=int(arch.decoder_dim * arch.mlp_ratio))
    if _is_classifier(model) and not encoder_only:
        n = model.head.out_features
        names = list(classes) if classes is not None else [str(c) for c in range(n)]
        if len(names) != n:
            raise InputError(f"{len(names)} class names for a {n}-way head; give one name per output")
        kwargs.update(id2label=dict(enumerate(names)), label2id={name: c for c, name in enumerate(names)})
    return transformers.VideoMAEConfig(**kwargs)


def hf_state(model: nn.Module, target_keys, encoder_only: bool = False, prefix: str = ""):
    """Our weights under the names of the transformers model whose state dict keys are ``target_keys``."""
    model = unwrap(model)
    state = encoder_state_videomae(model)
    if _is_classifier(model) and not encoder_only:
        state.update({f"fc_norm.{k}": v.detach().cpu().clone() for k, v in model.fc_norm.state_dict().items()})
        state.update({f"head.{k}": v.detach().cpu().clone() for k, v in model.head.state_dict().items()})
    return hf_videomae.from_videomae_names(state, target_keys, prefix)


def _fc_norm_gap(model: nn.Module, hf_model: nn.Module) -> float:
    """Largest logit difference, on one random clip, between our classifier and the transformers one."""
    encoder = model.encoder
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(1, 3, encoder.patch_embed.num_frames, encoder.patch_embed.input_size,
                       encoder.patch_embed.input_size, generator=g)
    with torch.no_grad():
        ours = model.eval()(clip)
        theirs = hf_model.eval()(pixel_values=clip.permute(0, 2, 1, 3, 4)).logits
    return float((ours - theirs).abs().max())


def to_transformers(model: nn.Module, out, *, classes: Optional[Sequence[str]] = None, card: Optional[str] = None,
                    encoder_only: bool = False, overwrite: bool = False) -> Path:
    """Write ``model`` (our encoder or classifier) to ``out`` as a transformers VideoMAE folder; returns ``out``.

    ``classes``: a classifier's label names (``id2label``); ``card``: the model card text (README.md);
    ``encoder_only``: a classifier's encoder alone (``VideoMAEModel``). A classifier must mean-pool
    (``model.pool=mean``): transformers' has no other pooling."""
    transformers = hf_videomae.require("transformers")
    model = unwrap(model).cpu().float().eval()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} is not empty; give a new folder, or --overwrite to replace it")
    classifier = _is_classifier(model) and not encoder_only
    if classifier and getattr(getattr(model, "cfg", None), "pool", "mean") != "mean":
        raise InputError(f"the classifier uses model.pool={model.cfg.pool!r}, which transformers' "
                         "VideoMAEForVideoClassification can't do (it mean-pools): export its encoder alone with "
                         "--encoder-only, or fine-tune with model.pool=mean")
    config = hf_config(model, classes, encoder_only)
    cls = transformers.VideoMAEForVideoClassification if classifier else transformers.VideoMAEModel
    hf_model = cls(config).eval()
    state = hf_state(model, hf_model.state_dict().keys(), encoder_only, "videomae." if classifier else "")
    result = hf_model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:  # our renaming is out of step with the installed transformers
        raise RuntimeError(f"transformers {transformers.__version__} VideoMAE names differ from amd_fast's mapping: "
                           f"missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}")
    if classifier:
        if model.fc_norm.eps != hf_videomae.HF_FC_NORM_EPS:  # can't be mapped: say what it does
            log.warning("fc_norm eps: this classifier's is %g, transformers' VideoMAEForVideoClassification fixes "
                        "%g; on a random clip the logits differ by %.2g (the encoder's features are exact); a "
                        "classifier fine-tuned with model.fc_norm_eps=1e-5 exports with transformers' logits exact",
                        model.fc_norm.eps, hf_videomae.HF_FC_NORM_EPS, _fc_norm_gap(model, hf_model))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf_model.save_pretrained(str(tmp))
        if card:
            (tmp / "README.md").write_text(card)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (%s, %d tensors, layer_norm_eps %g)", out, cls.__name__, len(state), config.layer_norm_eps)
    return out


def class_names_for(exportable) -> Optional[List[str]]:
    """A classifier's label names: the run's eval/test.json, else the shards' manifest (data.shards, eval.split)."""
    from amd_fast.export.card import run_eval
    from amd_fast.finetune.evaluate import class_names

    model = exportable.model
    n = model.head.out_features
    result = run_eval(exportable.run_dir)
    if result and isinstance(result.get("classes"), list) and len(result["classes"]) == n:
        return [str(c) for c in result["classes"]]
    cfg = exportable.config or {}
    shards = (cfg.get("data") or {}).get("shards")
    if shards:
        from amd_fast.data.shards import open_shards

        for split in dict.fromkeys([(cfg.get("eval") or {}).get("split"), (cfg.get("data") or {}).get("split")]):
            if not split:
                continue
            try:
                classes = list((open_shards(shards, split).manifest or {}).get("classes") or [])
            except (InputError, OSError) as e:
                log.warning("class names: cannot open split %r of %s (%s)", split, shards, str(e).splitlines()[0])
                continue
            if classes:
                return class_names(classes, n)
    log.warning("no class names found (no eval/test.json, shards unreadable): id2label is the label numbers")
    return None
