"""Model families as specs in a registry, in the spirit of timm's `register_model`.

    register_family("sam", FamilySpec(build=..., choices=..., ...))   once, in the family's module
    check_model_config(config)      KitError unless config.model fits its family (builds nothing)
    build_model(config)             -> nn.Module; model(x (B, C, T, T)) -> ModelOutput
    load_pretrained(model, config)  loads config.model.pretrained (never inside build_model)
    param_groups(model, config)     -> optimizer groups: trainable params, layer-wise LR decay
    training_hooks(config, model, fragments=..., n_tiles=..., device=...)  -> TrainingHooks
    needs_prior(config)             whether the member reads a first-stage prediction (a prior)

Nothing here imports torch, timm or segment_anything, and neither may a family's module at
import time (its spec imports its modules inside `build`): `check_model_config` is called when a
config is loaded, by commands that never build a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kit.errors import KitError

if TYPE_CHECKING:  # kit.config may import this module at load time
    import numpy as np
    import torch
    from torch import Tensor, nn

    from kit.config import Config

# (layer of a parameter name, L): layer-wise LR decay scales layer k's lr by decay^(L − k)
LayerIds = tuple[Callable[[str], int], int]
# the forward's keyword arguments for one micro-batch (a slice of the step's batch)
ForwardKwargs = Callable[[slice], dict[str, Any]]


class TrainingHooks:
    """A family's part of a training step. This default adds nothing: tiles are jittered,
    augmented and read, and the forward gets x alone. SAM's hooks (kit/models/sam_training.py)
    keep the embedding cache and sample point prompts.

    `tiles` are loader rows (fragment index, y, x): an (N, 3) array or tensor, the fragment
    index into the `fragments` the hooks were made with.
    """

    plain_tiles = False  # True: the trainer neither jitters nor augments the tiles
    last_points = None  # the last step's point prompts (coords, labels), drawn in previews

    def notes(self) -> list[str]:
        """Lines the trainer prints at setup (what the hooks ignore, what they cost)."""
        return []

    def cached(self, tiles: np.ndarray) -> np.ndarray | None:
        """bool (N,): tiles the loader need not read (their result is cached); None: all."""
        return None

    def step_kwargs(
        self, x: Tensor, y: Tensor, tiles: Tensor | None, *, generator: torch.Generator
    ) -> ForwardKwargs:
        """Once per optimiser step, after augmentation (and again if an out-of-memory retry
        repeats the step): x (B, C, T, T), y (B, 1, T, T), their tiles (None: look nothing up)
        and the augmentation generator -> the forward's extra arguments for a micro-batch."""
        return _no_kwargs

    def eval_kwargs(self, tiles: Tensor | None) -> dict[str, Any]:
        """The extra arguments of a prompt-free forward of these tiles (training previews)."""
        return {}

    def reset(self) -> None:
        """Forget what the budget calibration's steps left behind (e.g. cached embeddings)."""


def _no_kwargs(part: slice) -> dict[str, Any]:
    return {}


def _layer_zero(name: str) -> int:
    return 0


@dataclass(frozen=True)
class FamilySpec:
    """What the kit needs of a model family; only `build` is required."""

    build: Callable[[Config], nn.Module]  # config -> the model, config.model.train_mode applied
    # model.<field> -> the values this family accepts, checked with the config
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    check: Callable[[Config], None] | None = None  # further config checks: KitError naming the fix
    # load config.model.pretrained (a local path) into a built model; None: the family has none
    load_pretrained: Callable[[nn.Module, Config], None] | None = None
    layer_ids: Callable[[nn.Module], LayerIds] | None = None  # None: one layer, no LR decay
    # (config, model, *, fragments, n_tiles, device) -> the trainer's hooks; None: TrainingHooks()
    training_hooks: Callable[..., TrainingHooks] | None = None
    embedding_cache: bool = False  # whether train.embedding_cache applies (its hooks keep one)
    # config -> whether the model reads a first-stage probability map of the fragment as one
    # more input channel (kit.data.preprocess.read_window); None: never
    needs_prior: Callable[[Config], bool] | None = None


MODEL_FAMILIES: dict[str, FamilySpec] = {}


def register_family(name: str, spec: FamilySpec) -> FamilySpec:
    """Make `spec` the family `model.family: name` builds."""
    if name in MODEL_FAMILIES:
        raise ValueError(f"model family {name!r} is registered already")
    MODEL_FAMILIES[name] = spec
    return spec


def family(name: str) -> FamilySpec:
    if name not in MODEL_FAMILIES:
        raise KitError(f"unknown model.family {name!r}; valid: {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name]


def check_model_config(config: Config) -> None:
    """KitError unless `config.model` names a registered family and values it accepts. Builds
    no model and imports no torch; "auto" fields may still be unresolved."""
    name = config.model.family
    spec = family(name)
    for key, valid in spec.choices.items():
        value = getattr(config.model, key)
        if value not in valid:
            raise _choice_error(name, key, value, valid)
    if config.train.embedding_cache and not spec.embedding_cache:
        caching = [n for n, s in MODEL_FAMILIES.items() if s.embedding_cache]
        raise KitError(
            f"train.embedding_cache=true caches image embeddings, but model.family={name!r} "
            f"keeps no cache; set train.embedding_cache=false (families with one: {caching})"
        )
    if spec.check is not None:
        spec.check(config)


def _choice_error(name: str, key: str, value: object, valid: Sequence[str]) -> KitError:
    elsewhere = [n for n, s in MODEL_FAMILIES.items() if value in s.choices.get(key, ())]
    if elsewhere:
        return KitError(
            f"model.{key}={value!r} is for model.family {' or '.join(elsewhere)}; "
            f"model.family {name!r} takes {list(valid)}"
        )
    return KitError(
        f"unknown model.{key} {value!r} for model.family {name!r}; valid: {list(valid)}"
    )


def needs_prior(config: Config) -> bool:
    """Whether this member needs a prior (e.g. SAM with model.prompt=mask): a first-stage
    probability map of every fragment it trains on, validates or predicts (`kit train/predict
    --prior DIR`); its input then has data.in_channels + 1 channels."""
    spec = family(config.model.family)
    return spec.needs_prior is not None and spec.needs_prior(config)


def build_model(config: Config) -> nn.Module:
    """The model `config.model` describes, for `config.data.in_channels` and `config.data.tile`."""
    from kit.config import ConfigError, unresolved

    if unresolved(config):
        raise ConfigError(
            f"{', '.join(unresolved(config))} = 'auto' must be resolved from the data first "
            "(kit train does it; see kit.data.probe.resolve_auto)"
        )
    check_model_config(config)
    return family(config.model.family).build(config)


def load_pretrained(model: nn.Module, config: Config) -> None:
    """Load `config.model.pretrained` (a local path) into `model`; a no-op when it is None."""
    if config.model.pretrained is None:
        return
    spec = family(config.model.family)
    if spec.load_pretrained is None:
        raise KitError(
            f"model.family {config.model.family!r} loads no pretrained weights; "
            "unset model.pretrained"
        )
    spec.load_pretrained(model, config)


def param_groups(model: nn.Module, config: Config) -> list[dict]:
    """Optimizer groups over trainable params only: lr = train.lr · layer_decay^(L − layer),
    weight decay 0 for norms, biases, positional embeddings and learned tokens.

    Each group has "params", "lr", "lr_scale" (for schedulers), "weight_decay", "name". The
    layers come from the family's `layer_ids` (see each family's spec for what they are).
    """
    from torch import nn

    spec = family(config.model.family)
    layer_of, n_layers = spec.layer_ids(model) if spec.layer_ids else (_layer_zero, 0)
    embeddings = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.LayerNorm)
    }
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_of(name)
        no_wd = p.ndim <= 1 or id(p) in embeddings or "pos_embed" in name or "rel_pos" in name
        scale = config.model.layer_decay ** (n_layers - layer)
        group = groups.setdefault(
            (layer, no_wd),
            {
                "params": [],
                "lr": config.train.lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_wd else config.train.weight_decay,
                "name": f"layer{layer}" + ("_no_wd" if no_wd else ""),
            },
        )
        group["params"].append(p)
    return list(groups.values())


def training_hooks(
    config: Config,
    model: nn.Module,
    *,
    fragments: Sequence[str],
    n_tiles: int,
    device: torch.device,
) -> TrainingHooks:
    """The family's hooks for a run training `model` (on `device`) on `fragments` (ids, indexed
    by the tiles' first column), drawing from at most `n_tiles` distinct tiles."""
    spec = family(config.model.family)
    if spec.training_hooks is None:
        return TrainingHooks()
    return spec.training_hooks(config, model, fragments=fragments, n_tiles=n_tiles, device=device)
