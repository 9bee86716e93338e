"""The fine-tuning config: the same system as pretraining (YAML + ``section.key=value``, validated at start-up).

Sections: ``data`` (:class:`~amd_fast.data.DataConfig`: shards, sampling, crop, views), ``model``
(:class:`~amd_fast.models.classifier.ClassifierConfig`), ``aug`` (:class:`AugConfig`), ``eval``
(:class:`EvalConfig`), ``optim`` (:class:`FinetuneOptimConfig`), ``train`` / ``checkpoint`` / ``log`` (as
pretraining). Defaults are the AMD reference's ``run_class_finetuning.py`` defaults; ``configs/finetune-*.yaml``
give each recipe with the source of every value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from amd_fast.config import (CheckpointConfig, ConfigBase, ConfigSchema, LogConfig, OptimConfig, TrainConfig,
                             build_config, load_config)
from amd_fast.data import DataConfig
from amd_fast.models.classifier import ClassifierConfig

from .augment import MixSpec, RandAugmentSpec


@dataclass
class AugConfig:
    """On-device augmentation after the loader's crop and flip (``finetune.augment``).

    ``randaugment``: timm config string ('' = off); ``reprob``: random-erasing probability per clip;
    ``mixup`` / ``cutmix``: Beta alphas (0 = off); ``mix_prob``: chance a batch is mixed at all;
    ``switch_prob``: chance a mixed batch uses cutmix; ``smoothing``: label smoothing of the targets, in [0, 1).
    Every probability is checked to lie in [0, 1] at start-up, the RandAugment string's ``p`` included."""

    randaugment: str = "rand-m7-n4-mstd0.5-inc1"
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1

    def __post_init__(self):
        RandAugmentSpec.parse(self.randaugment)  # a bad string is an error now, not at the first step
        for name in ("reprob", "mix_prob", "switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"aug.{name}={getattr(self, name)} is a probability: it must be in [0, 1]")
        if not 0 <= self.smoothing < 1:  # 1 would make every target uniform: nothing left to learn
            raise ValueError(f"aug.smoothing={self.smoothing} must be in [0, 1) (the recipes: 0.1; 0 = none)")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("aug.mixup and aug.cutmix are Beta alphas: >= 0 (0 turns one off)")

    @property
    def randaugment_spec(self):
        return RandAugmentSpec.parse(self.randaugment)

    @property
    def mix_spec(self) -> MixSpec:
        return MixSpec(self.mixup, self.cutmix, self.mix_prob, self.switch_prob, self.smoothing)


@dataclass
class EvalConfig:
    """Evaluation. ``split``: the shards' split to evaluate; ``test_segments`` x ``test_crops`` views per video
    (the reference: K400 5 x 3, SSv2 2 x 3), softmax averaged over them; ``every_n_epochs``: a one-view
    (middle clip, centre crop) top-1 during training (0 = never); the multi-view test runs at the end and with
    ``--eval``. ``batch_size``: videos per rank per batch (None = data.batch_size). Each view is a pass over the
    split: more than the recipes' 15 views (``RECIPE_MAX_VIEWS``) is logged as a warning at start-up. The split is
    opened at start-up (with ``data.split``), so a wrong name stops the run before training."""

    split: str = "val"
    test_segments: int = 5
    test_crops: int = 3
    every_n_epochs: int = 1
    batch_size: Optional[int] = None

    def __post_init__(self):
        if self.test_segments < 1 or self.test_crops < 1:
            raise ValueError("eval.test_segments and eval.test_crops must be >= 1")
        if not self.split or "/" in self.split or "\\" in self.split:
            raise ValueError(f"eval.split={self.split!r} must be a split name such as val or test (the shards "
                             "folder is data.shards)")
        if self.every_n_epochs < 0:
            raise ValueError("eval.every_n_epochs must be >= 0 (0: only the final test)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("eval.batch_size must be >= 1 or null")


# The most views per video any recipe tests with (K400 / UCF101 / HMDB51: 5 segments x 3 crops).
RECIPE_MAX_VIEWS = 15


def views_warning(ec: EvalConfig) -> Optional[str]:
    """A warning when ``test_segments x test_crops`` is above the recipes' 15 views (each view is a pass over
    the split, so the test costs that many times one view), else None."""
    views = ec.test_segments * ec.test_crops
    if views <= RECIPE_MAX_VIEWS:
        return None
    return (f"eval.test_segments x eval.test_crops = {ec.test_segments} x {ec.test_crops} = {views} views per video, "
            f"above the recipes' {RECIPE_MAX_VIEWS} (K400 5 x 3, SSv2 2 x 3): the test reads the split {views} times "
            f"({views / RECIPE_MAX_VIEWS:.1f}x a 15-view test); lower eval.test_segments / eval.test_crops unless "
            "this is what you want")


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """AdamW with layer-wise lr decay (``layer_decay``: the lr of layer l is ``lr * layer_decay ** (L + 1 - l)``,
    patch embedding l = 0, block i l = i + 1, fc_norm / head l = L + 1). Rates are per 256 videos (the
    reference's ``batch_size x world_size / 256``: ``num_sample`` is not counted). Warmup starts at
    ``warmup_lr`` (the reference: 0), the weight decay is constant, no gradient clipping."""

    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_lr: float = 0.0
    warmup_epochs: float = 5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: Optional[float] = None
    layer_decay: float = 0.75

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay={self.layer_decay} must be in (0, 1] (1 = no decay)")


# Where fine-tuning's defaults differ from the shared sections' (the reference's fine-tuning data pipeline:
# window sampling, RandomResizedCrop, flips, 2 clips per decoded video).
SECTION_DEFAULTS = {"data": {"num_sample": 2, "sampling": "window", "crop": "resized", "flip": True},
                    "train": {"epochs": 30}, "log": {"dir": "runs/finetune"}}


@dataclass
class FinetuneConfig(ConfigBase):
    data: DataConfig = field(default_factory=lambda: DataConfig(**SECTION_DEFAULTS["data"]))
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**SECTION_DEFAULTS["train"]))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(**SECTION_DEFAULTS["log"]))

    def __post_init__(self):
        for key in ("input_size", "num_frames"):
            if getattr(self.data, key) != getattr(self.model, key):
                raise ValueError(f"data.{key}={getattr(self.data, key)} but model.{key}={getattr(self.model, key)}")
        if self.aug.mix_spec.active and (self.data.batch_size * self.data.num_sample) % 2:
            raise ValueError(f"mixup / cutmix pair clip i with clip B-1-i: data.batch_size x data.num_sample = "
                             f"{self.data.batch_size * self.data.num_sample} must be even (or set aug.mixup=0 "
                             "aug.cutmix=0)")


FINETUNE = ConfigSchema(FinetuneConfig, {"data": DataConfig, "model": ClassifierConfig, "aug": AugConfig,
                                         "eval": EvalConfig, "optim": FinetuneOptimConfig, "train": TrainConfig,
                                         "checkpoint": CheckpointConfig, "log": LogConfig},
                        defaults=SECTION_DEFAULTS)


def load_finetune_config(path=None, overrides=()) -> FinetuneConfig:
    """A validated :class:`FinetuneConfig` from a YAML file (or the defaults) and overrides."""
    return load_config(path, overrides, FINETUNE)


def build_finetune_config(raw=None, overrides=()) -> FinetuneConfig:
    return build_config(raw, overrides, FINETUNE)
