"""DataConfig: every knob of the video loaders, shared by the DALI and the eager backend."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from .decoders import DECODERS

BACKENDS = ("auto", "dali", "eager")
SAMPLINGS = ("stride", "window", "segments")
CROPS = ("multiscale", "resized")
DTYPES = ("float32", "bfloat16", "float16", "uint8")  # uint8: raw pixels, the consumer normalizes
BAD_SAMPLE_POLICIES = ("skip", "error")

# VideoMAE / AMD pretraining: GroupMultiScaleCrop(input_size, [1, .875, .75, .66]).
VIDEOMAE_SCALES = (1.0, 0.875, 0.75, 0.66)


@dataclass
class DataConfig:
    """What clips to read and how to turn them into training batches.

    Batches are ``{'video': (batch_size*num_sample, 3, num_frames, input_size, input_size),
    'label': (batch_size*num_sample,) int64}`` on ``device``, normalized with ImageNet mean/std.

    - ``shards``: a split manifest (``train.manifest.json``), a shard folder (the manifest of
      ``split`` in it is used, else its ``<split>-*.tar``), or a list of tar paths.
    - ``batch_size`` counts *videos* per rank; each video gives ``num_sample`` clips
      (AMD/VideoMAEv2 ``--num_sample`` repeated augmentation: one decode, independent crops).
    - ``sampling_rate``: stride between the ``num_frames`` frames of a clip (VideoMAE ``new_step``).
    - ``train=True``: frames by ``sampling`` (``stride``: VideoMAE pretraining, a random start and every
      ``sampling_rate``-th frame; ``window``: Kinetics fine-tuning, ``num_frames`` spread by linspace over a
      random window of ``num_frames * sampling_rate``; ``segments``: SSv2 fine-tuning, one random frame per
      segment), crops by ``crop`` (``multiscale``: VideoMAE's ``scales`` / ``max_distort``; ``resized``:
      RandomResizedCrop with ``rrc_scale`` / ``rrc_ratio``), optional flip, shuffle.
      ``train=False`` (eval/probe/demo): view ``view`` of the ``test_segments x test_crops`` deterministic
      views (temporal-major: view = segment * test_crops + crop; one view = the middle clip and the centre
      square crop of the short side), resized to ``input_size``, no flip, reading order = shard order.
    - ``device``: ``'auto'`` = ``'cuda'`` when available else ``'cpu'``; ``'cuda:1'`` etc. accepted.
    - ``num_workers``: eager DataLoader worker processes; ``eager_decoder``: the eager loader's video
      decoder (``pyav``, or the peers ``torchcodec`` / ``decord``, see ``data.decoders``).
    - ``dali_pipelines``: DALI pipelines per rank (an int, or ``auto``: 1 on CPU, one per NVDEC engine the
      rank has on CUDA, see ``dali_pipeline.auto_pipelines``); ``dali_threads``: CPU threads per pipeline.
    - ``shuffle`` (train only): a full permutation of the rank's samples per epoch, from (seed, epoch, rank).
    - ``on_bad_sample``: ``'skip'`` (count + warn) or ``'error'`` for samples missing their video or
      label and for videos that do not decode.
    - ``flip``: off by default as in VideoMAE/AMD pretraining; never turn it on for SSv2-like
      (direction-dependent) data.
    """

    shards: Union[str, Path, Sequence[Union[str, Path]]] = "shards/synthetic"
    split: str = "train"
    backend: str = "auto"
    batch_size: int = 8
    num_frames: int = 16
    sampling_rate: int = 4
    num_sample: int = 1
    input_size: int = 224
    device: str = "auto"
    dtype: str = "float32"
    num_workers: int = 4
    eager_decoder: str = "pyav"
    dali_pipelines: Union[int, str] = "auto"
    dali_threads: int = 4
    prefetch: int = 2
    flip: bool = False
    scales: Sequence[float] = field(default_factory=lambda: list(VIDEOMAE_SCALES))
    max_distort: int = 1
    sampling: str = "stride"
    crop: str = "multiscale"
    rrc_scale: Sequence[float] = field(default_factory=lambda: [0.08, 1.0])
    rrc_ratio: Sequence[float] = field(default_factory=lambda: [0.75, 1.3333])
    test_segments: int = 1
    test_crops: int = 1
    view: int = 0
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    on_bad_sample: str = "skip"
    train: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(f"DataConfig: {msg}")

        need(self.backend in BACKENDS, f"backend={self.backend!r}; choose one of {', '.join(BACKENDS)}")
        need(self.dtype in DTYPES, f"dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")
        need(self.on_bad_sample in BAD_SAMPLE_POLICIES,
             f"on_bad_sample={self.on_bad_sample!r}; choose one of {', '.join(BAD_SAMPLE_POLICIES)}")
        need(self.sampling in SAMPLINGS, f"sampling={self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        need(self.crop in CROPS, f"crop={self.crop!r}; choose one of {', '.join(CROPS)}")
        need(len(self.rrc_scale) == 2 and 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1,
             f"rrc_scale={list(self.rrc_scale)} must be [lo, hi] with 0 < lo <= hi <= 1")
        need(len(self.rrc_ratio) == 2 and 0 < self.rrc_ratio[0] <= self.rrc_ratio[1],
             f"rrc_ratio={list(self.rrc_ratio)} must be [lo, hi] aspect ratios, 0 < lo <= hi")
        need(self.test_segments >= 1 and self.test_crops >= 1 and 0 <= self.view < self.test_segments * self.test_crops,
             f"view={self.view} must index the {self.test_segments} x {self.test_crops} test views")
        need(self.eager_decoder in DECODERS, f"eager_decoder={self.eager_decoder!r}; choose one of "
                                             f"{', '.join(DECODERS)}")
        need(self.dali_pipelines == "auto" or (isinstance(self.dali_pipelines, int) and self.dali_pipelines >= 1),
             f"dali_pipelines={self.dali_pipelines!r} must be 'auto' or an integer >= 1")
        for name in ("batch_size", "num_frames", "sampling_rate", "num_sample", "input_size",
                     "dali_threads", "prefetch"):
            need(int(getattr(self, name)) >= 1, f"{name}={getattr(self, name)!r} must be >= 1")
        need(int(self.num_workers) >= 0, f"num_workers={self.num_workers!r} must be >= 0")
        need(int(self.max_distort) >= 0, f"max_distort={self.max_distort!r} must be >= 0")
        need(len(self.scales) >= 1 and all(0 < float(s) <= 1 for s in self.scales),
             f"scales={list(self.scales)!r} must be a non-empty list of fractions in (0, 1]")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "DataConfig":
        """Build from keyword arguments, naming the valid fields when one is unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"DataConfig: unknown field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**kwargs)

    def resolved_device(self) -> str:
        """The torch device string the batches land on."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
