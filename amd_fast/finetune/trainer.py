"""Fine-tuning: the shared loop (``trainer.base``) with the classification task in its hooks.

Per step: the loader's uint8 clips (random resized crop + flip done by the loader, on the GPU with DALI)
get RandAugment, ImageNet normalization, random erasing and mixup / cutmix on the device
(``finetune.augment``, drawn from a generator seeded by (seed, rank, step): a resumed run augments as an
uninterrupted one), then the classifier and the soft-target cross entropy. AdamW with layer-wise lr
decay, cosine schedule with warmup. A one-view top-1 on ``eval.split`` every ``eval.every_n_epochs``, the
multi-view test at the end (``finetune.evaluate``), written to ``<log.dir>/eval/`` and ``metrics.jsonl``.

Start-up checks (:func:`startup_checks`, every rank, before any weights are loaded): every split the run reads
(``data.split`` and ``eval.split``; ``--eval``: ``eval.split``) is opened and its labels checked against
``model.num_classes``, so a wrong name stops the run with exit 2 naming the split, the shards folder and the
splits it has instead of after training; more test views than the recipes' 15 and evaluating on the training
split are warned about.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from amd_fast.data.sampling import normalize_clips
from amd_fast.errors import InputError
from amd_fast.models.classifier import build_classifier
from amd_fast.trainer import run_folder
from amd_fast.trainer.base import FitResult, TrainerBase
from amd_fast.trainer.distributed import DistInfo, init_distributed, setup_logging, shutdown
from amd_fast.trainer.flops import classifier_flops
from amd_fast.trainer.optim import layer_decay_groups

from . import augment, evaluate
from .config import FinetuneConfig, views_warning

log = logging.getLogger(__name__)


def check_splits(cfg: FinetuneConfig, needed: Sequence[Tuple[str, str]], is_main: bool = True,
                 skip_open: Sequence[str] = ()) -> None:
    """Open every split the run will read, at start-up: ``needed`` is ``(config key, split)`` pairs, e.g.
    ``[("data.split", "train"), ("eval.split", "val")]`` (``evaluate.open_splits``: a split the shards folder
    lacks stops the run naming the split, the folder and the splits it has), and check their labels against
    ``model.num_classes`` (``evaluate.check_labels``). Cheap: manifests and index files only; splits in
    ``skip_open`` are only checked by name (the training loader opens and checks its own split next)."""
    for i, (split, found) in enumerate(evaluate.open_splits(cfg.data.shards, needed, skip_open).items()):
        evaluate.check_labels(found, cfg.model.num_classes, split, warn=is_main and i == 0)


def startup_checks(cfg: FinetuneConfig, info: DistInfo, eval_only: bool) -> None:
    """What can be known wrong before any weights are loaded or any step is run (every rank, same outcome)."""
    ec = cfg.eval
    needed = [("eval.split", ec.split)] if eval_only else [("data.split", cfg.data.split), ("eval.split", ec.split)]
    check_splits(cfg, needed, info.is_main, skip_open=() if eval_only else (cfg.data.split,))
    if info.is_main:
        warning = views_warning(ec)
        if warning:
            log.warning("%s", warning)
        if not eval_only and ec.split == cfg.data.split:
            log.warning("eval.split=%r is the training split (data.split): the test reports accuracy on the videos "
                        "the model trained on", ec.split)


def aug_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 998_244_353 + rank * 7_927 + step * 15_485_863 + 1) % (2 ** 63)


class FinetuneTrainer(TrainerBase):
    MODEL_KEY = "model"
    TASK = "finetune"
    RESUME_FREE = TrainerBase.RESUME_FREE + ("model.pretrained", "eval.")

    def __init__(self, cfg: FinetuneConfig, info: DistInfo):
        startup_checks(cfg, info, eval_only=False)  # a wrong eval.split is found now, not after training
        super().__init__(cfg, info)
        self.randaugment = (augment.RandAugment(cfg.aug.randaugment_spec) if cfg.aug.randaugment_spec else None)
        self.aug_gen = torch.Generator()  # CPU: the draws are small; the pixels stay on the device
        self.last_eval: Optional[evaluate.EvalResult] = None

    def data_config(self):
        # raw uint8 clips: RandAugment works on pixels, normalization follows it
        return dataclasses.replace(super().data_config(), dtype="uint8")

    def build_models(self) -> nn.Module:
        cfg = self.cfg
        evaluate.check_labels(self.loader.shards, cfg.model.num_classes, cfg.data.split, warn=self.info.is_main)
        return build_classifier(cfg.model).to(self.device)

    def param_groups(self) -> list:
        return layer_decay_groups(self.model, self.cfg.optim.weight_decay, self.cfg.optim.layer_decay)

    def flops_per_clip(self) -> Optional[float]:
        return classifier_flops(self.cfg.model)

    def compute_loss(self, batch: Dict[str, torch.Tensor], step_index: int):
        cfg, g = self.cfg, self.aug_gen
        g.manual_seed(aug_seed(cfg.train.seed, self.info.rank, step_index))
        video = batch["video"]
        if self.randaugment is not None:
            video = self.randaugment(video, g)
        video = normalize_clips(video, torch.float32)
        video = augment.random_erase(video, cfg.aug.reprob, g)
        video, targets, _ = augment.mix(video, batch["label"], cfg.model.num_classes, cfg.aug.mix_spec, g)
        logits = self.forward_module(video)
        loss = augment.soft_target_cross_entropy(logits, targets)
        return loss, {"loss": loss.detach()}

    # ---- evaluation ---------------------------------------------------------------------------------
    def run_eval(self, segments: int, crops: int, name: str) -> Optional[evaluate.EvalResult]:
        ec = self.cfg.eval
        result = evaluate.evaluate(self.model, self.data_config(), self.info, split=ec.split, segments=segments,
                                   crops=crops, num_classes=self.cfg.model.num_classes, amp=self.amp,
                                   batch_size=ec.batch_size)
        if result is not None:
            log.info("%s on %s: %s", name, ec.split, result.summary())
            evaluate.save(result, self.log_dir / "eval", name,
                          {"split": ec.split, "segments": segments, "crops": crops, "step": self.global_step,
                           "epoch": self.epoch})
        return result

    def on_epoch_end(self, telemetry) -> None:
        every = self.cfg.eval.every_n_epochs
        if every and (self.epoch + 1) % every == 0 and self.global_step < self.total_steps:
            result = self.run_eval(1, 1, f"val-epoch{self.epoch:03d}")
            if result is not None:
                telemetry.event("eval", self.global_step, epoch=self.epoch, views=1, top1=result.top1,
                                top5=result.top5)

    def on_fit_end(self, telemetry, interrupted: bool) -> None:
        if interrupted:
            return
        ec = self.cfg.eval
        self.last_eval = self.run_eval(ec.test_segments, ec.test_crops, "test")
        if self.last_eval is not None:
            r = self.last_eval
            telemetry.event("test", self.global_step, views=r.views, videos=r.videos, top1=r.top1, top5=r.top5,
                            top1_single_view=r.top1_single_view, top5_single_view=r.top5_single_view)


def evaluate_only(cfg: FinetuneConfig, info: DistInfo) -> Optional[evaluate.EvalResult]:
    """``--eval``: the newest checkpoint of the run (or ``checkpoint.resume``), else ``model.pretrained`` (e.g. a
    fine-tuned release file, head included), on the multi-view test of ``eval.split`` (no train split needed)."""
    from amd_fast.models.pretrained import check_finite
    from amd_fast.trainer.checkpoint import CheckpointError, CheckpointManager

    startup_checks(cfg, info, eval_only=True)
    # --eval writes eval/ into log.dir and reads its checkpoints: that folder must be a fine-tuning run's (or new)
    owner = run_folder.owner_task(Path(cfg.log.dir), cfg.checkpoint_dir)
    if owner not in (None, FinetuneTrainer.TASK):
        raise run_folder.RunFolderError(f"--eval: log.dir={cfg.log.dir} holds a {owner} run, not a fine-tuning "
                                        "one; point log.dir at the fine-tuning run (or a new folder)")
    model = build_classifier(dataclasses.replace(cfg.model, pretrained=None))
    found = CheckpointManager(cfg.checkpoint_dir, cfg.checkpoint.keep_last, info.is_main,
                              FinetuneTrainer.MODEL_KEY).resolve(cfg.checkpoint.resume)
    if found is None and cfg.model.pretrained:
        from amd_fast.models.pretrained import load_pretrained

        if "head.weight" not in load_pretrained(model, cfg.model.pretrained).loaded:
            raise InputError(f"--eval: model.pretrained={cfg.model.pretrained} has no classifier head with "
                             f"model.num_classes={cfg.model.num_classes} outputs (a pretraining encoder, or a head "
                             "for another class count), so the test would score a random head: fine-tune it first "
                             "(drop --eval), or give a fine-tuned checkpoint whose head matches")
    if found is not None:
        path, state = found
        weights = state[FinetuneTrainer.MODEL_KEY]
        if isinstance(weights, dict):
            check_finite(weights, str(path))
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path} holds another model than model.* builds: "
                                  f"{_model_mismatch(model, weights, state.get('config'), cfg, e)}") from None
        log.info("--eval: weights of %s (step %s)", path, state.get("step"))
    elif not cfg.model.pretrained:
        raise InputError(f"--eval: no checkpoint in {cfg.checkpoint_dir} and no model.pretrained: nothing to evaluate")
    model.to(info.device)
    amp = cfg.train.bf16_autocast(info.device)
    data = dataclasses.replace(cfg.data, device=str(info.device))
    ec = cfg.eval
    result = evaluate.evaluate(model, data, info, split=ec.split, segments=ec.test_segments, crops=ec.test_crops,
                               num_classes=cfg.model.num_classes, amp=amp, batch_size=ec.batch_size)
    if result is not None:
        log.info("test on %s: %s", ec.split, result.summary())
        paths = evaluate.save(result, Path(cfg.log.dir) / "eval", "test",
                              {"split": ec.split, "segments": ec.test_segments, "crops": ec.test_crops,
                               "weights": str(found[0]) if found else cfg.model.pretrained})
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return result


def _model_mismatch(model: nn.Module, weights, saved_cfg, cfg: FinetuneConfig, error: Exception) -> str:
    """What differs between a run's checkpoint and the model ``cfg`` builds: the model.* settings the run used
    (its checkpoint keeps its config), else the first tensors that do not fit."""
    saved = (saved_cfg or {}).get("model") if isinstance(saved_cfg, dict) else None
    if isinstance(saved, dict):
        now = dataclasses.asdict(cfg.model)
        diff = [f"model.{k}={saved[k]!r} (now {now[k]!r})" for k in now
                if k in saved and saved[k] != now[k] and k not in ("pretrained", "use_checkpoint")]
        if diff:
            return (f"the run used {', '.join(diff)}; set those back for --eval, or give another log.dir / "
                    "checkpoint.resume")
    ours = model.state_dict()
    rows = [f"{k} {tuple(v.shape)} vs the model's {tuple(ours[k].shape)}" for k, v in weights.items()
            if k in ours and hasattr(v, "shape") and tuple(v.shape) != tuple(ours[k].shape)]
    rows += [f"{k} missing" for k in ours if k not in weights]
    rows += [f"{k} not in the model" for k in weights if k not in ours]
    return ("; ".join(rows[:4]) + (f" and {len(rows) - 4} more" if len(rows) > 4 else "")
            if rows else str(error).splitlines()[0][:300])


def run(cfg: FinetuneConfig, eval_only: bool = False):
    """Fine-tune (or only evaluate) with ``cfg`` in this process (joining the torchrun group if any)."""
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    setup_logging(info.rank)
    try:
        if eval_only:
            return evaluate_only(cfg, info)
        trainer = FinetuneTrainer(cfg, info)
        result: FitResult = trainer.fit()
        result.eval = trainer.last_eval
        return result
    finally:
        shutdown()
