"""DataConfig: every knob of the video loaders, shared by the DALI and the eager backend."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from amd_fast.cores import usable_cores  # noqa: F401 (also imported from here)

from .decoders import DECODERS
from .remote import configure, is_url, redact, secrets_in

log = logging.getLogger(__name__)

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
      ``split`` in it is used, else its ``<split>-*.tar``), or a list of tar paths; each may be a local path or
      an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``https://...``; credentials from the backend's
      standard sources, never in the URL). See ``data.remote``.
    - ``remote_concurrency``: ranged reads in flight per loader process (eager worker, DALI planner) for
      URL shards; ``remote_timeout_s``: a request that has not finished by then is abandoned and retried;
      ``remote_retries``: tries after the first for a transient error (5xx, reset, timeout) before the sample
      counts as unreadable (``on_bad_sample``).
    - ``stall_timeout_s``: the eager loader's watchdog. When its workers deliver no batch for this long, their
      Python stacks are printed, they are replaced, and reading goes on from the batch that stalled (the same
      batches, exactly once); a second stall at the same batch stops the run naming its samples. ``auto``:
      120 s for local shards, or the worst case of a URL read (``remote_timeout_s`` x (``remote_retries`` + 1))
      plus 120 s; 0: wait forever (torch's default).
    - ``cache_dir`` / ``cache_bytes``: keep whole tars read from URLs in this local folder, least recently used
      evicted beyond ``cache_bytes`` (an int, or ``"50G"``, ``"500M"``: binary units); off when either is unset.
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
    - ``backend``: ``auto`` = DALI on CUDA when it decodes every codec of the split, else the eager loader;
      on a machine without CUDA always the eager loader (its one-pass PyAV path costs less CPU per clip than
      DALI's CPU decoder); ``dali`` / ``eager`` force one. The log says which and why.
    - ``num_workers``: eager DataLoader worker processes; ``eager_decoder``: the eager loader's video
      decoder (``pyav``, or the peers ``torchcodec`` / ``decord`` / ``spdl``, see ``data.decoders``; a peer
      that cannot decode on this machine, e.g. torchcodec without FFmpeg's shared libraries, is refused when
      the loader is built).
    - ``dali_pipelines``: DALI pipelines per rank (an int, or ``auto``: 1 on CPU, one per NVDEC engine the
      rank has on CUDA, see ``dali_pipeline.auto_pipelines``); ``dali_threads``: CPU threads per pipeline.
      ``num_workers`` (eager) or an explicit ``dali_pipelines`` (DALI) above twice the CPU cores a rank has
      (:func:`usable_cores` / ``LOCAL_WORLD_SIZE``) logs a warning naming the core count.
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
    remote_concurrency: int = 16
    remote_timeout_s: float = 60.0
    remote_retries: int = 8
    stall_timeout_s: Union[float, str] = "auto"
    cache_dir: Optional[str] = None
    cache_bytes: Union[int, str] = 0

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
        need(int(self.remote_concurrency) >= 1, f"remote_concurrency={self.remote_concurrency!r} must be >= 1")
        need(float(self.remote_timeout_s) > 0, f"remote_timeout_s={self.remote_timeout_s!r} must be > 0")
        need(int(self.remote_retries) >= 0, f"remote_retries={self.remote_retries!r} must be >= 0")
        need(self.stall_timeout_s == "auto" or (isinstance(self.stall_timeout_s, (int, float))
                                                 and not isinstance(self.stall_timeout_s, bool)
                                                 and self.stall_timeout_s >= 0),
             f"stall_timeout_s={self.stall_timeout_s!r} must be 'auto', 0 (off) or seconds > 0")
        try:
            cache_bytes = parse_bytes(self.cache_bytes)
        except ValueError as e:
            need(False, f"cache_bytes={self.cache_bytes!r}: {e}")
        need(not self.cache_dir or not is_url(str(self.cache_dir)),
             f"cache_dir={self.cache_dir!r} must be a local folder")
        if cache_bytes > 0 and not self.cache_dir:
            log.warning("data.cache_bytes is set but data.cache_dir is not: no cache")
        for where in self._shard_locations():
            what = secrets_in(where)
            need(what is None, f"shards={redact(where)} carries {what}: credentials in a URL would be written to "
                               "config.yaml and logs; give them the backend's standard way (AWS_* variables, a "
                               "profile or an instance role for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://) "
                               "and drop them from the URL")

    def configure_remote(self) -> None:
        """Hand the URL-reading settings to ``remote`` (process-wide; forked loader workers inherit them)."""
        configure(concurrency=int(self.remote_concurrency), timeout_s=float(self.remote_timeout_s),
                  retries=int(self.remote_retries), cache_dir=str(self.cache_dir) if self.cache_dir else None,
                  cache_bytes=parse_bytes(self.cache_bytes))

    def _shard_locations(self) -> list:
        """``shards`` as a list of strings (it may be one path or URL, or a list of them)."""
        return [str(w) for w in ([self.shards] if isinstance(self.shards, (str, Path)) else list(self.shards))]

    def stall_timeout(self) -> float:
        """Seconds without a batch before the eager loader's watchdog acts (0: never); see the class doc."""
        if self.stall_timeout_s != "auto":
            return float(self.stall_timeout_s)
        remote = any(is_url(w) for w in self._shard_locations())
        return 120.0 + (float(self.remote_timeout_s) * (int(self.remote_retries) + 1) if remote else 0.0)

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


def warn_oversubscription(cfg: DataConfig, backend: str, pipelines: int) -> None:
    """Log a warning when the loader's processes / pipelines (``data.num_workers`` for eager, an explicit
    ``data.dali_pipelines`` for DALI) exceed twice the cores this rank has (the usable cores divided by the
    ranks on this node, ``LOCAL_WORLD_SIZE``): they then only compete for the cores and add memory."""
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = usable_cores()
    per_rank = max(1, cores // ranks)
    where = f"{cores} usable CPU cores" + (f" shared by {ranks} ranks ({per_rank} each)" if ranks > 1 else "")
    if backend == "eager" and cfg.num_workers > 2 * per_rank:
        log.warning("data.num_workers=%d is more than twice the %s: the workers only compete for the cores "
                    "(and each holds a copy of the decoder state); set data.num_workers=%d or fewer",
                    cfg.num_workers, where, per_rank)
    if backend == "dali" and cfg.dali_pipelines != "auto" and pipelines > 2 * per_rank:
        log.warning("data.dali_pipelines=%d is more than twice the %s: the pipelines only compete for the cores; "
                    "set data.dali_pipelines=auto or at most %d", pipelines, where, per_rank)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(value: Union[int, str, None]) -> int:
    """``1073741824``, ``"1G"``, ``"1GiB"``, ``"500M"`` -> bytes (binary units); None / 0 -> 0."""
    if value is None:
        return 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must be >= 0")
        return int(value)
    text = str(value).strip().upper().replace("IB", "").rstrip("B")
    num, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "")
    try:
        n = float(num)
    except ValueError:
        raise ValueError("give bytes as an integer or with a unit: 500M, 50G, 1T") from None
    if n < 0:
        raise ValueError("must be >= 0")
    return int(n * _UNITS[unit])
