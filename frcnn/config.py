"""Configuration: one frozen dataclass per `params.yaml` section, loaded and validated once.

`load_config("params.yaml", {"loss.lambda": 10})` returns a `Config`; an unknown key or a bad
value raises `ConfigError` with one line naming the key (`anchors.scales: must not be empty`).
Modules never read this object globally: `build_model` and the stages pass explicit values on.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from frcnn.errors import ConfigError
from frcnn.validation import validate


@dataclass(frozen=True)
class SynthConfig:
    num_trainval: int = 1000
    num_test: int = 250
    image_size: int = 256
    seed: int = 0
    # Difficulty (frcnn/data/synth.py):
    min_object_size: float = 32.0  # px, nominal diameter of the smallest objects
    max_object_size: float = 160.0  # px, of the largest (at most 90% of image_size)
    max_objects: int = 4  # per image
    distractors: int = 2  # at most this many non-class clutter shapes per image
    patterned_fill: float = 0.8  # fraction of objects filled with a pattern instead of a colour
    textured_background: float = 0.5  # fraction of backgrounds with a faint pattern
    class_colour: float = 1.0  # fraction of objects coloured from their class's hue band


@dataclass(frozen=True)
class ArchiveMD5Config:
    # The VOC archives' expected MD5s; null = the published ones (frcnn/data/download.py). Set
    # them, with data.mirrors, to run a VOC preset against other archives (a rehearsal, a mirror
    # that repacked them).
    voc2007_trainval: str | None = None
    voc2007_test: str | None = None
    voc2012_trainval: str | None = None


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["synth", "voc2007", "voc0712", "url"] = "synth"
    url: str | None = None
    md5: str | None = None
    mirrors: tuple[str, ...] = ()
    unknown_class: Literal["error", "drop"] = "error"
    classes: tuple[str, ...] | None = None
    archive_md5: ArchiveMD5Config = field(default_factory=ArchiveMD5Config)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass(frozen=True)
class AugmentConfig:
    seed: int = 0
    copies: int = 1
    hflip_p: float = 0.5
    scale_jitter: float = 0.0
    color_jitter: float = 0.0
    random_crop_p: float = 0.0
    min_visibility: float = 0.3
    online_flip: bool = True


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18_c4", "resnet50", "resnet50_c4"] = "resnet18_c4"
    pretrained: bool = False
    num_classes: int = 0
    min_size: int = 256  # short side at test time, and in training unless min_size_train is set
    max_size: int = 320
    # multi-scale training: one short side drawn per batch from this list (empty = min_size)
    min_size_train: tuple[int, ...] = ()
    frozen_bn: bool | None = None  # None: frozen exactly when `pretrained`
    freeze_stem: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    unit: Literal["px", "cells"] = "px"
    scales: tuple[float, ...] = (24.0, 48.0, 96.0, 192.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class RPNConfig:
    hidden_channels: int = 256
    pos_iou_thresh: float = 0.7
    neg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    border_tolerance: float = 0.0
    nms_thresh: float = 0.7
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 1000
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 300
    min_box_size: float = 1.0


@dataclass(frozen=True)
class ROIConfig:
    op: Literal["align_grid", "align", "pool"] = "align_grid"
    output_size: int = 7
    sampling_ratio: int = 1
    head: Literal["mlp", "avg"] = "mlp"
    hidden_dim: int = 512
    class_agnostic_box: bool = False
    batch_size_per_image: int = 64
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh_lo: float = 0.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    detections_per_img: int = 100


@dataclass(frozen=True)
class LossConfig:
    # `lambda` is a Python keyword: the YAML key `lambda` maps to this field.
    lambda_: float = 5.0
    roi_lambda: float = 1.0
    smooth_l1_beta: float = 0.111  # 1/9 to three digits, as params.yaml writes it


@dataclass(frozen=True)
class PretrainConfig:
    # Backbone pretraining on object crops (frcnn/pretrain.py); steps 0 = start from random weights
    # (or from ImageNet with model.pretrained).
    steps: int = 0
    batch_size: int = 64
    crop_size: int = 64
    context: float = 0.1
    lr: float = 0.001
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 4
    epochs: int = 4
    max_steps: int = 1850
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.0005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: Literal["cosine", "step"] = "cosine"
    step_milestones: tuple[float, ...] = (0.67, 0.89)
    step_gamma: float = 0.1
    grad_clip: float = 10.0
    amp: bool = True
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    nonfinite_patience: int = 25
    num_workers: int = 0
    checkpoint_every: int = 500
    log_every: int = 10


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 8
    num_preview: int = 12
    # Inference speed-ups, off by default because they change the numbers (a little): reduced
    # precision as `train.amp` resolves it (bfloat16 where the CPU runs it natively, float32
    # elsewhere; float16 on CUDA), and the channels-last layout oneDNN's fast convolutions use.
    amp: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    # the trained model as an MLflow model in the train run (a pyfunc: images in, detections
    # out); each is a weights-only copy of the checkpoint, so a long study turns it off
    log_model: bool = True


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: ROIConfig = field(default_factory=ROIConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict as written in params.yaml (`lambda`, lists), for logging and checkpoints."""
        return _to_plain(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys (`loss.lambda`) -> values, as MLflow params and DVC `-S` overrides name them."""
        return flatten(self.to_dict())


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"loss": {"lambda": 5}} -> {"loss.lambda": 5}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def _yaml_key(f: dataclasses.Field) -> str:
    return "lambda" if f.name == "lambda_" else f.name


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {_yaml_key(f): _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- parsing with types


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            choices = " | ".join(str(a) for a in args)
            raise ConfigError(f"{key}: must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in this file, not user input


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    by_key = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(by_key))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(by_key))})")
    kwargs = {}
    for key, value in raw.items():
        f = by_key[key]
        kwargs[f.name] = _coerce(value, hints[f.name], f"{prefix}.{key}" if prefix else key)
    return cls(**kwargs)


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Build and validate a Config from a nested dict (params.yaml's content) plus dotted overrides."""
    raw = _deep_copy(raw or {})
    for dotted, value in (overrides or {}).items():
        _apply_override(raw, dotted, value)
    return validate(_build(Config, raw, ""))


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (YAML), apply dotted `overrides` ({"loss.lambda": 10}), validate, return a Config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping of sections")
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw
