"""One configuration for a training run: YAML file + dotted ``key=value`` overrides, validated at start-up.

``Config`` is a dataclass of sections; the first four belong to the modules that use them:

- ``data``: :class:`amd_fast.data.DataConfig` (``batch_size`` counts *videos* per rank; each gives ``num_sample`` clips)
- ``model``: :class:`amd_fast.models.ModelConfig` (``teacher: null`` = plain VideoMAE)
- ``loss``: :class:`amd_fast.models.LossConfig`
- ``mask``: :class:`amd_fast.masking.MaskConfig`
- ``optim``: :class:`OptimConfig`, ``train``: :class:`TrainConfig`, ``checkpoint``: :class:`CheckpointConfig`,
  ``log``: :class:`LogConfig` (defined here).

Usage::

    cfg = load_config("configs/tiny-cpu.yaml", ["data.batch_size=8", "optim.lr=1e-3", "model.teacher=null"])

Override values are parsed as YAML scalars/lists (``8`` int, ``1e-3`` float, ``true`` bool, ``[6,12]`` list,
``null`` None) and then checked against the field's type (floats must be finite: ``nan`` / ``inf`` are
refused). An unknown key is an error that lists the section's valid keys (with a "did you mean"); a wrong
type names the key, what it got and what it expects.

Each fact is set once (:data:`DERIVED`): the clip shape lives in ``data`` (``model.num_frames`` /
``model.input_size`` follow it), the seed and the device in ``train`` (``data.seed`` / ``data.device``
follow). A derived key may still be written, but only with the same value: a contradiction is an error.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from amd_fast.data import DataConfig
from amd_fast.errors import InputError
from amd_fast.masking import MaskConfig
from amd_fast.models import LossConfig, ModelConfig


class ConfigError(InputError):
    """A bad configuration file, key or value; the message names the key and the fix."""


@dataclass
class OptimConfig:
    """AdamW + per-step cosine schedules, VideoMAE/AMD style.

    ``lr``, ``min_lr`` and ``warmup_lr`` are *base* rates per 256 videos: with ``scale_lr`` (AMD's
    behaviour) the run uses ``rate * data.batch_size * world_size / 256`` (videos, not clips: AMD
    scales by videos per step although each video gives ``num_sample`` clips). Warmup is linear from
    ``warmup_lr`` to ``lr`` over ``warmup_steps`` (if > 0) else ``warmup_epochs`` epochs, then cosine
    down to ``min_lr``. Weight decay follows a cosine from ``weight_decay`` to ``weight_decay_end``
    (None = constant). No decay on 1-D params (biases, norms) and pos_embed / mask_token / cls_token.
    ``clip_grad``: max global grad norm (None = no clipping).
    """

    lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 40
    warmup_steps: int = -1
    scale_lr: bool = True
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: Optional[float] = 0.02

    def __post_init__(self):
        if self.lr <= 0 or self.min_lr < 0 or self.warmup_lr < 0:
            raise ConfigError(f"optim: lr={self.lr}, min_lr={self.min_lr}, warmup_lr={self.warmup_lr} must be "
                              "positive (lr) / non-negative")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConfigError(f"optim.clip_grad={self.clip_grad} must be > 0, or null to turn clipping off")
        if self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs={self.warmup_epochs} must be >= 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr={self.min_lr} is above optim.lr={self.lr}: the cosine would raise the "
                              "lr; set min_lr <= lr (the floor the cosine decays to)")
        if self.weight_decay < 0 or (self.weight_decay_end is not None and self.weight_decay_end < 0):
            raise ConfigError(f"optim.weight_decay={self.weight_decay} / weight_decay_end={self.weight_decay_end} "
                              "must be >= 0 (0 = no decay; null end = constant)")
        if self.eps <= 0:
            raise ConfigError(f"optim.eps={self.eps} must be > 0 (AdamW's denominator term, e.g. 1e-8)")
        if self.warmup_steps < -1:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0, or -1 to use "
                              "optim.warmup_epochs")
        if self.warmup_steps == 0 and self.warmup_epochs > 0:
            raise ConfigError(f"optim.warmup_steps=0 does not turn warmup off: as in the reference, it falls back to "
                              f"optim.warmup_epochs={self.warmup_epochs:g}; for no warmup set optim.warmup_epochs=0")


@dataclass
class TrainConfig:
    """How long and where to train.

    ``epochs`` over the train split; ``max_steps`` (if set) caps the run and the schedules are laid out
    over ``min(epochs * steps_per_epoch, max_steps)`` steps. ``device``: auto|cpu|cuda.
    ``amp``: 'auto' (bf16 autocast on CUDA, none on CPU), 'bf16' or 'none'. ``compile``: torch.compile
    the student. ``ops_impl``: auto|triton|eager (amd_fast.ops). Loss terms are read on the host
    (a device sync) only every ``log_every`` steps. Masks are drawn from a generator seeded with
    (seed, rank, step), so a resumed run sees the same masks as an uninterrupted one.
    ``cpu_threads``: torch intra-op threads when training on CPU; None = ``OMP_NUM_THREADS`` if set, else
    one less than the usable cores (the loader's decode thread needs one: oversubscribed OpenMP threads
    spin against each other and a 2-core machine slows down many times over).
    ``dist_timeout_s``: how long a collective may wait for the other ranks before the run fails (a stalled
    or dead rank then stops the job with exit 1 instead of hanging it).
    Activation checkpointing is a model property: ``model.use_checkpoint=true`` (kept in one place).
    """

    epochs: int = 200
    max_steps: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    ops_impl: str = "auto"
    log_every: int = 10
    cpu_threads: Optional[int] = None
    dist_timeout_s: float = 300.0

    def bf16_autocast(self, device) -> bool:
        """Whether steps on ``device`` (a torch.device) run under bf16 autocast (``amp``)."""
        return self.amp == "bf16" or (self.amp == "auto" and device.type == "cuda")

    def __post_init__(self):
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        _choice("train.amp", self.amp, ("auto", "bf16", "none"))
        _choice("train.ops_impl", self.ops_impl, ("auto", "triton", "eager"))
        if self.epochs < 1:
            raise ConfigError(f"train.epochs={self.epochs} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps={self.max_steps} must be >= 1 or null")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"train.cpu_threads={self.cpu_threads} must be >= 1 or null (auto)")
        if self.log_every < 1:
            raise ConfigError(f"train.log_every={self.log_every} must be >= 1")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"train.dist_timeout_s={self.dist_timeout_s} must be > 0 seconds")


@dataclass
class CheckpointConfig:
    """Checkpoints: ``dir`` (None = ``<log.dir>/checkpoints``), every ``every_n_steps`` and at the end,
    keeping the last ``keep_last``. ``resume``: 'auto' (newest valid checkpoint in ``dir``, else start
    fresh), 'none', or a checkpoint path. ``save_on_signal``: SIGTERM/SIGINT save a checkpoint, then exit.
    ``export_encoder``: at the end, also write the student encoder (VideoMAE names) to ``<dir>/encoder.pth``,
    loadable as a teacher via ``model.teacher_checkpoint``. ``allow_config_change``: resume even when the
    checkpoint was trained with another model or clip shape (other changes are only printed).
    ``overwrite``: start this run in a folder that holds another one (another task, or ``resume=none``)
    by moving that run's files into ``<log.dir>/replaced/<time>-<task>-<id>/``; nothing is deleted
    (without it such a start is refused: ``amd_fast.trainer.run_folder``)."""

    dir: Optional[str] = None
    every_n_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"
    save_on_signal: bool = True
    export_encoder: bool = True
    allow_config_change: bool = False
    overwrite: bool = False

    def __post_init__(self):
        if self.every_n_steps < 1:
            raise ConfigError(f"checkpoint.every_n_steps={self.every_n_steps} must be >= 1")
        if self.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last={self.keep_last} must be >= 1 (older ones are deleted)")
        if self.dir is not None and not self.dir.strip():
            raise ConfigError("checkpoint.dir is empty (it would write into the current folder): give a folder, "
                              "or null for <log.dir>/checkpoints")
        if not self.resume.strip():
            raise ConfigError("checkpoint.resume is empty: use auto, none or the path of a checkpoint file")


@dataclass
class LogConfig:
    """Run output: ``dir`` holds ``metrics.jsonl``, ``config.yaml``, TensorBoard events (``tensorboard``)
    and, by default, the checkpoints. ``progress``: tqdm bar on rank 0."""

    dir: str = "runs/amd"
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        if not str(self.dir).strip():
            raise ConfigError("log.dir is empty (the run would write into the current folder): give the run's "
                              "folder, e.g. log.dir=runs/my-run")


class ConfigBase:
    """What every run config (pretraining ``Config``, fine-tuning ``FinetuneConfig``) offers; both have
    ``checkpoint`` and ``log`` sections."""

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.log.dir) / "checkpoints"

    def to_dict(self) -> Dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class Config(ConfigBase):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        if self.data.dtype == "uint8":
            raise ConfigError("data.dtype=uint8 (raw pixels) is for fine-tuning, which normalizes after its "
                              "augmentation; pretraining needs normalized clips: float32, bfloat16 or float16")
        # build_config derives model's clip shape from data's; a Config built in code must still agree.
        for key in ("input_size", "num_frames"):
            d, m = getattr(self.data, key), getattr(self.model, key)
            if d != m:
                raise ConfigError(f"data.{key}={d} but model.{key}={m}: set both to the same value")



SECTIONS: Dict[str, type] = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "mask": MaskConfig,
                             "optim": OptimConfig, "train": TrainConfig, "checkpoint": CheckpointConfig,
                             "log": LogConfig}


def _choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _plain(x):
    """dataclasses.asdict output -> YAML-safe plain types (Paths and tuples become str and lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence, typing.get_origin(Sequence[int])):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


class _NotFinite(_Mismatch):
    pass


def _coerce(value, tp):
    """``value`` checked against type ``tp``; ints widen to float, numeric strings ('1e-3', which YAML 1.1
    leaves a string) become floats for float fields; lists become lists. Raises _Mismatch."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (list, tuple) or origin is typing.get_origin(Sequence[int]):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return [_coerce(v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        else:
            raise _Mismatch
        if not math.isfinite(value):
            raise _NotFinite
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path:
        if isinstance(value, (str, Path)):
            return str(value)
        raise _Mismatch
    return value  # an annotation we do not check (none today)


def _unknown_key(where: str, key: str, valid: Sequence[str]) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {where + '.' if where else ''}{near[0]}?)" if near else ""
    return ConfigError(f"unknown config key {where + '.' if where else ''}{key}{hint}; "
                       f"valid keys{' of ' + where if where else ''}: {', '.join(valid)}")


def _build_section(name: str, cls: type, values: Mapping[str, Any]):
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown_key(name, str(key), fields)
        try:
            kwargs[key] = _coerce(value, hints[key])
        except _NotFinite:
            raise ConfigError(f"{name}.{key}={value!r}: must be a finite number (not nan or inf)") from None
        except _Mismatch:
            raise ConfigError(f"{name}.{key}: got {value!r} ({type(value).__name__}), expected "
                              f"{_type_name(hints[key])}") from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # the section's own validation
        raise ConfigError(f"invalid {name} settings: {e}") from e


# (derived section, key, source section, key): each fact is set in the source; the derived key follows it.
DERIVED = (("model", "num_frames", "data", "num_frames"), ("model", "input_size", "data", "input_size"),
           ("data", "seed", "train", "seed"), ("data", "device", "train", "device"))


@dataclass(frozen=True)
class ConfigSchema:
    """A run config's shape: its top-level dataclass, its sections and its derived keys."""

    cls: type
    sections: Dict[str, type]
    derived: tuple = DERIVED
    defaults: Optional[Dict[str, Dict[str, Any]]] = None  # per section, where it differs from the class defaults


def _field_value(section: str, key: str, merged: Mapping[str, Mapping[str, Any]], sections: Mapping[str, type]):
    """The (type-checked) value ``section.key`` will have: the explicit one, else the field default."""
    cls = sections[section]
    if key in merged[section]:
        try:
            return _coerce(merged[section][key], typing.get_type_hints(cls)[key])
        except _Mismatch:
            return merged[section][key]  # _build_section reports the type error with its own message
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _derive(merged: Dict[str, Dict[str, Any]], schema: ConfigSchema) -> None:
    """Fill the derived keys from their sources; an explicit contradiction is an error."""
    for dsec, dkey, ssec, skey in schema.derived:
        src = _field_value(ssec, skey, merged, schema.sections)
        if dkey in merged[dsec] and _field_value(dsec, dkey, merged, schema.sections) != src:
            raise ConfigError(f"{dsec}.{dkey}={merged[dsec][dkey]!r} contradicts {ssec}.{skey}={src!r}: set it once, "
                              f"as {ssec}.{skey} ({dsec}.{dkey} follows it)")
        merged[dsec][dkey] = src


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> List[tuple]:
    """``[(dotted key, old value, new value)]`` where two config dicts (``Config.to_dict()``) differ."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def parse_override(item: str, sections: Sequence[str] = tuple(SECTIONS)):
    """'data.batch_size=8' -> (['data', 'batch_size'], 8); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. data.batch_size=8)")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"override key {key!r} must be section.key (sections: {', '.join(sections)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: cannot parse value {raw!r} ({e})") from None
    return path, value


def build_config(raw: Optional[Mapping[str, Any]] = None, overrides: Sequence[str] = (),
                 schema: Optional[ConfigSchema] = None):
    """A validated config (``schema``: pretraining's ``Config`` by default) from a nested mapping (as read
    from YAML) plus ``key=value`` overrides."""
    schema = schema or PRETRAIN
    SECTIONS = schema.sections  # noqa: N806 (the schema's sections, in the code below)
    raw = dict(raw or {})
    for name in raw:
        if name not in SECTIONS:
            raise _unknown_key("", str(name), list(SECTIONS))
    for name, values in raw.items():
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"config section {name!r} must be a mapping of keys to values "
                              f"(e.g. {name}:\n  key: value), got {values!r}")
    merged = {name: {**(schema.defaults or {}).get(name, {}), **(raw.get(name) or {})} for name in SECTIONS}
    for item in overrides:
        (section, key), value = parse_override(item, tuple(SECTIONS))
        if section not in SECTIONS:
            raise _unknown_key("", section, list(SECTIONS))
        merged[section][key] = value
    _derive(merged, schema)
    sections = {name: _build_section(name, cls, merged[name]) for name, cls in SECTIONS.items()}
    shards = getattr(sections.get("data"), "shards", None)
    if isinstance(shards, (str, Path)) and not str(shards).strip() or isinstance(shards, (list, tuple)) and not shards:
        raise ConfigError("data.shards is empty (it would read the current folder): give the shards folder, "
                          "e.g. data.shards=shards/k400")
    try:
        return schema.cls(**sections)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may be overridden below it
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports an unhashable key
            if key in seen:
                raise ConfigError(f"key {key!r} is written twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one, as YAML would silently use the last")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
                schema: Optional[ConfigSchema] = None):
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    raw: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"--config {p} is a folder, not a YAML file: name one of its files, e.g. "
                              "configs/tiny-cpu.yaml")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; see configs/ for examples")
        try:
            raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
        except ConfigError as e:  # a duplicate key
            raise ConfigError(f"{p}: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a YAML text file ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if raw is None:
            raise ConfigError(f"{p} is empty (no sections): it would run with every default; fill it in (see "
                              "configs/), or leave --config out to use the defaults on purpose")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{p}: the top level must be a mapping of sections "
                              f"({', '.join((schema or PRETRAIN).sections)})")
    return build_config(raw, overrides, schema)


PRETRAIN = ConfigSchema(Config, SECTIONS)
