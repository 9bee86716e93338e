"""The model card (``README.md``) of an exported folder: what it is, the recipe, the data, the measured top-1.

Everything in it is read from the run (its saved config, ``eval/test.json``); what is not known is said so,
never guessed. The numbers are the ones ``python -m amd_fast.finetune --eval`` measured and wrote.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def run_eval(run_dir: Optional[Path]) -> Optional[Dict[str, Any]]:
    """The run's ``eval/test.json`` (the multi-view test of ``--eval`` / the end of fine-tuning), if any."""
    path = Path(run_dir) / "eval" / "test.json" if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("cannot read %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def _get(cfg: Dict[str, Any], dotted: str):
    section, key = dotted.split(".", 1)
    return (cfg.get(section) or {}).get(key)


def _rows(cfg: Dict[str, Any], keys: Sequence[str]) -> List[str]:
    return [f"| `{k}` | `{_get(cfg, k)}` |" for k in keys if _get(cfg, k) is not None]


_PRETRAIN_KEYS = ("model.student", "model.teacher", "model.teacher_checkpoint", "model.student_align_layers",
                  "model.teacher_align_layers", "mask.type", "mask.student_ratio", "mask.teacher_ratio", "loss.rec",
                  "loss.dir", "loss.gen", "loss.align_kind", "train.epochs", "train.max_steps", "data.batch_size",
                  "data.num_sample", "optim.lr", "optim.weight_decay")
_FINETUNE_KEYS = ("model.arch", "model.pretrained", "model.num_classes", "model.pool", "model.drop_path",
                  "train.epochs", "train.max_steps", "data.batch_size", "optim.lr", "optim.layer_decay",
                  "aug.mixup", "aug.cutmix", "aug.smoothing")
_DATA_KEYS = ("data.shards", "data.split", "data.num_frames", "data.sampling_rate", "data.input_size", "eval.split")


def model_card(exportable, hf_class: str, classes: Optional[Sequence[str]]) -> str:
    """Markdown with a YAML header (library, tags, pipeline) for the Hub."""
    cfg = exportable.config or {}
    enc = getattr(exportable.model, "encoder", exportable.model)
    size, frames = enc.patch_embed.input_size, enc.patch_embed.num_frames
    classifier = hf_class == "VideoMAEForVideoClassification"
    kind = {"pretrain": "pretraining student encoder (AMD / VideoMAE)",
            "finetune": "fine-tuned video classifier", "encoder": "video ViT encoder"}[exportable.kind]
    teacher = _get(cfg, "model.teacher")
    what = (f"distilled with Asymmetric Masked Distillation (AMD, CVPR 2024) from a `{teacher}` teacher"
            if exportable.kind == "pretrain" and teacher else
            "pretrained as a masked video autoencoder (VideoMAE, no teacher)" if exportable.kind == "pretrain" else
            f"fine-tuned from `{_get(cfg, 'model.pretrained')}`" if exportable.kind == "finetune" else
            "exported from an encoder file")
    lines = ["---", "library_name: transformers",
             f"pipeline_tag: {'video-classification' if classifier else 'feature-extraction'}",
             "tags:", "- video", "- videomae", "- amd_fast", "---", "",
             f"# {exportable.source.parent.parent.name if exportable.source.parent.name == 'checkpoints' else exportable.source.stem}",
             "", f"A {kind}, {what}; trained with `amd_fast` and exported as a `transformers` `{hf_class}` "
             f"(`python -m amd_fast.export --format hf`) from `{exportable.source}`"
             + (f" (step {exportable.step})." if exportable.step is not None else "."), ""]
    lines += ["## Results", ""]
    result = run_eval(exportable.run_dir) if exportable.kind == "finetune" else None
    if result and "top1" in result:
        s = result.get("settings") or {}
        lines += ["Measured by `python -m amd_fast.finetune --eval` (`eval/test.json` of the run):", "",
                  "| split | videos | views (segments x crops) | top-1 | top-5 | top-1, one view |",
                  "|---|---|---|---|---|---|",
                  f"| {s.get('split', '?')} | {result.get('videos', '?')} | {result.get('views', '?')} "
                  f"({s.get('segments', '?')} x {s.get('crops', '?')}) | {100 * result['top1']:.2f}% | "
                  f"{100 * result.get('top5', float('nan')):.2f}% | {100 * result.get('top1_single_view', float('nan')):.2f}% |",
                  ""]
    elif exportable.kind == "finetune":
        lines += [f"Not measured: the run ({exportable.run_dir or 'folder not found'}) has no `eval/test.json`.", ""]
    else:
        lines += ["None: a pretraining encoder has no top-1 of its own; fine-tune it (or probe it) to measure one.", ""]
    lines += ["## Recipe", "", "| setting | value |", "|---|---|"]
    lines += _rows(cfg, _FINETUNE_KEYS if exportable.kind == "finetune" else _PRETRAIN_KEYS) or ["| (run config not found) | |"]
    lines += ["", "## Data", "", "| setting | value |", "|---|---|"]
    lines += _rows(cfg, _DATA_KEYS) or ["| (run config not found) | |"]
    if classes:
        shown = ", ".join(f"`{c}`" for c in list(classes)[:50])
        lines += ["", f"Classes ({len(classes)}, in label order): {shown}{' ...' if len(classes) > 50 else ''}"]
    lines += ["", "## Use", "", "```python", "import torch",
              f"from transformers import {hf_class}", "",
              f"model = {hf_class}.from_pretrained(\"<this folder or repo>\").eval()",
              f"# clips: (batch, {frames} frames, 3, {size}, {size}), RGB in [0, 1] normalized with",
              f"# mean {IMAGENET_MEAN} and std {IMAGENET_STD} (amd_fast's loaders give (batch, 3, frames, H, W):",
              "# .permute(0, 2, 1, 3, 4))",
              f"clips = torch.randn(1, {frames}, 3, {size}, {size})",
              "with torch.no_grad():",
              ("    label = model(pixel_values=clips).logits.argmax(-1)" if classifier else
               "    features = model(pixel_values=clips).last_hidden_state  # (batch, tokens, width)"),
              "```", ""]
    eps = getattr(getattr(exportable.model, "fc_norm", None), "eps", None)
    if classifier and eps is not None and eps != 1e-5:
        lines += [f"`fc_norm` runs with transformers' fixed eps 1e-5 where amd_fast trained with {eps:g}: the logits "
                  "differ from the run's by about 1e-4 of their size (the encoder's features are the same).", ""]
    return "\n".join(lines)
