"""Typed configuration: one dataclass per pipeline stage, presets as YAML, `key=value` overrides.

The resolved config is saved as `config.yaml` in every run directory and inside every checkpoint
(`config_to_dict`), so a checkpoint alone rebuilds its model and preprocessing
(`config_from_dict`). Unknown keys are errors, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kit.errors import KitError


@dataclass
class DataConfig:
    """What the model sees and how it is normalised (shared by training, validation, inference)."""

    input_mode: str = "volume"  # "volume": slices z_start..z_end-1; "ir": infrared image
    # File indices of the slice window, z_end exclusive; "auto": found by `kit probe` on the
    # training fragments when a run starts (kit.data.probe.resolve_auto), saved resolved.
    z_start: int | str = 24
    z_end: int | str = 40
    reverse: bool | str = False  # feed the window deepest slice first; "auto": from the probe
    # Read each pixel's slices relative to its own papyrus surface (found from the volume,
    # kit.data.surface): slice z is file slice z + round(surface(y, x) - surface_depth), so the
    # window follows a surface that wanders in depth. "auto": where the probe finds the ink
    # signal stronger that way on the training rows. surface_depth is resolved with it.
    flatten: bool | str = False
    surface_depth: float | None = None  # the depth the surface is moved to, in file slices
    norm: str = "percentile"  # "percentile" (clip to p_low..p_high inside mask) or "meanstd"
    p_low: float = 1.0
    p_high: float = 99.5
    tile: int = 256
    stride: int = 128
    min_mask_fraction: float = 0.25  # tiles with less papyrus than this are skipped

    @property
    def in_channels(self) -> int:
        if self.input_mode == "ir":
            return 1
        if "auto" in (self.z_start, self.z_end):
            raise ConfigError(
                f"data.z_start={self.z_start!r}, data.z_end={self.z_end!r} are not resolved yet: "
                "'auto' is resolved by kit train from the training fragments (kit probe)"
            )
        return self.z_end - self.z_start

    @property
    def unresolved(self) -> list[str]:
        """The fields still set to "auto" (and surface_depth, while flattening needs one)."""
        names = [k for k in AUTO_FIELDS if getattr(self, k) == "auto"]
        if self.flatten is not False and self.surface_depth is None:
            names.append("surface_depth")
        return names

    def __post_init__(self) -> None:
        for key in AUTO_FIELDS:
            value = getattr(self, key)
            if isinstance(value, str) and value != "auto":
                raise ConfigError(f"data.{key}: expected a number or 'auto', got {value!r}")
        bounds = (self.z_start, self.z_end)
        if "auto" not in bounds and self.input_mode == "volume" and self.z_end <= self.z_start:
            raise ConfigError(f"data.z_end={self.z_end} must be above data.z_start={self.z_start}")


AUTO_FIELDS = ("z_start", "z_end", "reverse", "flatten")


@dataclass
class ModelConfig:
    family: str = "sam"  # see kit.models.MODEL_FAMILIES
    variant: str = "vit_b"  # SAM: vit_b/vit_l/vit_h/vit_tiny...; U-Net: a timm encoder name
    adapter: str = "conv1x1"  # volume -> 3 channels: "conv1x1", "stem3d", "mosaic"
    prompt: str = "none"  # "none", "box", "points", "mask" (a first-stage prior: --prior DIR)
    num_points: int = 8  # points per tile when prompt == "points"
    train_mode: str = "full"  # "frozen", "lora", "full"
    lora_rank: int = 8
    layer_decay: float = 1.0  # layer-wise LR decay for full fine-tuning (1.0 = off)
    grad_checkpointing: bool = False
    pretrained: str | None = None  # local path to weights (Meta SAM checkpoint or timm weights)
    # a run directory (or checkpoint) of the same family/variant to start from: every tensor
    # whose name and shape match is copied (e.g. an infrared warm-up run); the rest are named
    init_from: str | None = None
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    point_sampling: str = "labels"  # prompt == "points": "labels", "grid" or "error"
    rel_pos_resize: str = "interpolate"  # Meta rel_pos 127 -> 2*tokens-1: "interpolate" or "crop"
    # SAM: > 0 sets the adapter's image to 0.5 + input_gain·(image − tile mean) before SAM's pixel
    # normalisation (from-scratch models on faint volume contrast); 0 = off (pretrained SAM);
    # "auto": measured on training tiles when a run starts (kit.data.probe.tile_contrast)
    input_gain: float | str = 0.0
    # SAM encoder attention: "sdpa" (kit.models.sam_attention: one fused kernel, projections on
    # real tokens only), "meta" (segment-anything's own), "auto" (per device, as measured:
    # sam_attention.AUTO_ATTENTION). The same weights and outputs up to float rounding.
    attention: str = "auto"
    compile: bool = False  # torch.compile the training forward (off: slower on a CPU, BENCHMARKS)
    # SAM with prompt "mask": output logits = the decoder's + the prior's logits (the model learns
    # a correction of the first stage's map instead of first learning to pass it through)
    prior_residual: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.input_gain, str) and self.input_gain != "auto":
            raise ConfigError(
                f"model.input_gain: expected a number or 'auto', got {self.input_gain!r}"
            )


@dataclass
class LossConfig:
    bce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float = -1.0  # < 0: no class weighting
    iou: float = 1.0  # MSE between predicted and actual IoU (SAM only)
    label_smoothing: float = 0.0


@dataclass
class AugmentConfig:
    """Probabilities (p_*) and ranges of the on-device batched augmentations."""

    p_flip: float = 0.5
    p_rot90: float = 0.5
    p_affine: float = 0.5
    scale: float = 0.1
    rotate_deg: float = 15.0
    shift: float = 0.05
    p_intensity: float = 0.5  # brightness/contrast/gamma per sample
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    p_slice_jitter: float = 0.3
    slice_jitter: float = 0.05
    p_zshift: float = 0.3
    max_zshift: int = 3
    p_slice_dropout: float = 0.2
    slice_dropout: float = 0.1
    p_coarse_dropout: float = 0.3
    coarse_holes: int = 4
    coarse_size: float = 0.15
    p_noise: float = 0.3
    noise_std: float = 0.03


@dataclass
class TrainConfig:
    epochs: int = 20
    steps_per_epoch: int = 200
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay (0 = off)
    # "auto" (bf16 on CUDA, float32 on a CPU), "bf16" (also on a CPU with native bf16),
    # "fp16" (CUDA only), "off": kit.precision
    amp: str = "auto"
    ink_fraction: float = 0.5  # share of sampled tiles that contain ink
    jitter: bool = True  # random shift of tile positions each epoch
    val_every: int = 1  # validate every N epochs
    num_workers: int = 2
    seed: int = 0
    embedding_cache: bool = False  # frozen SAM encoder only
    checkpoint_every: int = 200  # also write last.pt every N steps mid-epoch (0 = epoch ends only)
    cpu_threads: int = 0  # torch threads when training on the CPU (0 = torch's default)
    # steps between reads of the losses (progress bar, TensorBoard): a step itself never waits
    # for the device, reading a loss back does
    log_every: int = 10
    # > 0: minutes for the whole run (training and its validations); the run times its steps
    # and sets steps_per_epoch (and caps warmup_steps at 10 % of the steps) to fit
    budget_minutes: float = 0.0
    # set by a budget, not by hand: the last epoch's steps when the run fell behind its budget
    # and cut it short (0 = a whole epoch; kit/train/budget.py)
    final_epoch_steps: int = 0

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run: every epoch, the last one `final_epoch_steps` long
        when a budget cut it."""
        last = min(self.final_epoch_steps or self.steps_per_epoch, self.steps_per_epoch)
        return (self.epochs - 1) * self.steps_per_epoch + last


@dataclass
class InferConfig:
    stride: int = 0  # 0: use data.stride
    window: str = "gaussian"  # "gaussian", "hann", "flat"
    tta: list[str] = field(default_factory=lambda: ["identity"])
    batch_size: int = 16
    amp: str = "auto"  # as train.amp (kit.precision)


@dataclass
class PostConfig:
    threshold: float = 0.5
    percentile: float = 0.0  # if > 0: threshold at this top-percent of mask pixels
    min_component_area: int = 0


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    post: PostConfig = field(default_factory=PostConfig)


class ConfigError(KitError, ValueError):
    """A preset, YAML file or override that does not fit the schema."""


def unresolved(config: Config) -> list[str]:
    """The fields still "auto" (resolved from the data when a run starts)."""
    names = [f"data.{k}" for k in config.data.unresolved]
    return names + (["model.input_gain"] if config.model.input_gain == "auto" else [])


def preset_names() -> list[str]:
    folder = resources.files("kit") / "presets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name (`cpu-demo`) or a YAML path, then `section.key=value` overrides. A file may
    start from another with `base: NAME_OR_PATH` (a preset, or a path relative to the file) and
    set only what differs: each section's keys replace the base's, one by one."""
    raw = _read_raw(name_or_path)
    path = Path(name_or_path)
    raw.setdefault("name", path.stem if path.suffix else name_or_path)
    config = config_from_dict(raw, source=str(name_or_path))
    return apply_overrides(config, overrides)


def _read_raw(name_or_path: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a preset or file, its `base:` chain merged in (base first)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text, here = path.read_text(), path.resolve()
    elif name_or_path in preset_names():
        text = (resources.files("kit") / "presets" / f"{name_or_path}.yaml").read_text()
        here = None
    else:
        raise ConfigError(
            f"unknown config {name_or_path!r}: give a YAML path or one of {preset_names()}"
        )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{name_or_path} is not valid YAML {_yaml_problem(exc)}; fix the file"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{name_or_path}: expected a mapping of sections (model:, data:, train:, ...), got "
            f"a {type(raw).__name__}"
        )
    base = raw.pop("base", None)
    if base is None:
        return raw
    key = str(here or name_or_path)
    if key in chain:
        raise ConfigError(f"{name_or_path}: its base chain loops ({' -> '.join(chain)} -> {key})")
    if not isinstance(base, str):
        raise ConfigError(
            f"{name_or_path}: base must be a preset name or a YAML path, got {base!r}"
        )
    if here is not None and base not in preset_names():
        base = str(here.parent / base)  # a path relative to the file that names it
    merged = _read_raw(base, (*chain, key))
    merged.pop("name", None)  # a file is named by itself, not by its base
    for section, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **value}
        else:
            merged[section] = value
    return merged


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flat_config(config: Config) -> dict[str, Any]:
    """Every field by its dotted key, as `--set` names it: {"name": ..., "data.tile": 256, ...}."""
    flat: dict[str, Any] = {}
    for key, value in config_to_dict(config).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> Config:
    config = _build(Config, raw, source)
    check_config(config, source)
    return config


def with_added_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A config dict an older kit wrote (a checkpoint's, a run's provenance) with the fields
    added since at their defaults, so that a new field alone never tells two runs apart;
    unchanged when it no longer loads."""
    try:
        return config_to_dict(config_from_dict(raw))
    except KitError:
        return raw


AMP_MODES = ("auto", "bf16", "fp16", "off")
INPUT_MODES = ("volume", "ir")
NORMS = ("percentile", "meanstd")
INF = math.inf
# "section.key": (low, high, low_open, high_open) for every number with a bound.
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "data.p_low": (0, 100, False, False), "data.p_high": (0, 100, False, False),
    "data.tile": (1, INF, False, True), "data.stride": (1, INF, False, True),
    "data.min_mask_fraction": (0, 1, False, False), "data.z_start": (0, INF, False, True),
    "model.num_points": (1, INF, False, True), "model.lora_rank": (1, INF, False, True),
    "model.layer_decay": (0, 1, True, False), "model.input_gain": (0, INF, False, True),
    "loss.bce": (0, INF, False, True), "loss.dice": (0, INF, False, True),
    "loss.focal": (0, INF, False, True), "loss.focal_gamma": (0, INF, False, True),
    "loss.iou": (0, INF, False, True), "loss.label_smoothing": (0, 0.5, False, True),
    "augment.scale": (0, 1, False, True), "augment.rotate_deg": (0, 180, False, False),
    "augment.shift": (0, 1, False, False), "augment.brightness": (0, 1, False, False),
    "augment.contrast": (0, 1, False, True), "augment.gamma": (0, 1, False, True),
    "augment.slice_jitter": (0, 1, False, False), "augment.max_zshift": (0, INF, False, True),
    "augment.slice_dropout": (0, 1, False, True), "augment.coarse_holes": (0, INF, False, True),
    "augment.coarse_size": (0, 1, False, False), "augment.noise_std": (0, INF, False, True),
    "train.epochs": (1, INF, False, True), "train.steps_per_epoch": (1, INF, False, True),
    "train.batch_size": (1, INF, False, True), "train.accumulate": (1, INF, False, True),
    "train.lr": (0, INF, True, True), "train.weight_decay": (0, INF, False, True),
    "train.warmup_steps": (0, INF, False, True), "train.grad_clip": (0, INF, False, True),
    "train.ema": (0, 1, False, True), "train.ink_fraction": (0, 1, False, False),
    "train.val_every": (1, INF, False, True), "train.num_workers": (0, INF, False, True),
    "train.checkpoint_every": (0, INF, False, True), "train.cpu_threads": (0, INF, False, True),
    "train.budget_minutes": (0, INF, False, True), "train.log_every": (1, INF, False, True),
    "train.final_epoch_steps": (0, INF, False, True),
    "infer.stride": (0, INF, False, True), "infer.batch_size": (1, INF, False, True),
    "post.threshold": (0, 1, False, False), "post.percentile": (0, 100, False, False),
    "post.min_component_area": (0, INF, False, True),
}  # fmt: skip
_RANGES.update(  # every probability
    {
        f"augment.{f.name}": (0, 1, False, False)
        for f in dataclasses.fields(AugmentConfig)
        if f.name.startswith("p_")
    }
)


def check_config(config: Config, source: str = "config") -> None:
    """ConfigError naming the first field outside its choices or range (with the valid ones),
    so a typo fails when the config loads, not after every member has loaded."""
    from kit.infer.tta import check_tta
    from kit.tiles import WINDOWS

    def value(key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(config, section), name)

    choices = {"data.input_mode": INPUT_MODES, "data.norm": NORMS, "train.amp": AMP_MODES,
               "infer.amp": AMP_MODES, "infer.window": WINDOWS}  # fmt: skip
    for key, valid in choices.items():
        if value(key) not in valid:
            raise ConfigError(f"{source}: {key}={value(key)!r} is not one of {list(valid)}")
    try:
        check_tta(config.infer.tta)
    except ValueError as exc:
        raise ConfigError(f"{source}: infer.tta: {exc}") from None
    for key, (low, high, low_open, high_open) in _RANGES.items():
        x = value(key)
        if isinstance(x, str):  # "auto": resolved from the data, checked then
            continue
        inside = math.isfinite(x) and (low < x if low_open else low <= x)
        inside = inside and (x < high if high_open else x <= high)
        if not inside:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise ConfigError(f"{source}: {key}={x!r} is outside {lo}{low:g}, {high:g}{hi}")
    from kit.models import check_model_config  # the family's own choices (no torch import)

    try:
        check_model_config(config)
    except ConfigError:
        raise
    except KitError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    d = config.data
    if d.p_low >= d.p_high:
        raise ConfigError(f"{source}: data.p_low={d.p_low} must be below data.p_high={d.p_high}")
    if any(c < 1 for c in config.model.decoder_channels):
        raise ConfigError(f"{source}: model.decoder_channels must be positive")


def save_config(config: Config, path: Path) -> None:
    """config.yaml, atomically."""
    from kit.io import write_text

    write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return a copy with each `section.key=value` applied (value parsed as YAML)."""
    raw = config_to_dict(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) not in (1, 2) or not all(parts):
            raise ConfigError(
                f"override {item!r} must look like section.key=value, e.g. train.lr=3e-4"
            )
        node = raw
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(
                    f"override {item!r}: unknown section {part!r}; sections: {list(raw)}"
                )
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}; keys: {list(node)}")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(
                f"override {item!r}: {value!r} is not valid YAML; quote a string ('...') and "
                "write a list as [a, b]"
            ) from None
    return config_from_dict(raw, source="--set")


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {unknown} in {cls.__name__}; valid: {sorted(names)}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a section's own check names the key; add the file (one level up)
        raise ConfigError(f"{where if cls is Config else where.rsplit('.', 1)[0]}: {exc}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where a YAML parse error is ("at line L, column C") and what it is, as far as it says."""
    mark = getattr(exc, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1} " if mark is not None else ""
    return f"{where}({getattr(exc, 'problem', None) or exc})"


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if str in options and isinstance(value, str) and len(options) > 1:
            return value  # "auto" and friends: checked by the dataclass
        hint = options[0]
        origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is str and isinstance(value, bool):
        # YAML 1.1 reads an unquoted off/on (amp: off, --set train.amp=off) as false/true
        return "on" if value else "off"
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
