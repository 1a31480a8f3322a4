"""Models: one builder over a registry of families ("sam", "unet").

    check_model_config(config)     -> KitError unless config.model fits its family (no build)
    build_model(config)            -> nn.Module; model(x (B, C, T, T)) -> ModelOutput
    load_pretrained(model, config) -> loads config.model.pretrained (never inside build_model)
    param_groups(model, config)    -> optimizer groups: trainable params, layer-wise LR decay
    training_hooks(config, model, ...) -> what the trainer adds to the family's forward
    needs_prior(config)            -> whether the member reads a first-stage prediction

A family is a `FamilySpec` registered under its name (registry.py); each family's module
registers itself when imported below. Constructors never touch files. `build_model` also applies
`config.model.train_mode` (which parameters train), so a checkpoint's stored config rebuilds the
same structure (LoRA included). Importing this package loads no torch.
"""

from __future__ import annotations

from kit.models import sam_family, unet_family  # registers the built-in families
from kit.models.output import ModelOutput
from kit.models.registry import (
    MODEL_FAMILIES,
    FamilySpec,
    TrainingHooks,
    build_model,
    check_model_config,
    family,
    load_pretrained,
    needs_prior,
    param_groups,
    register_family,
    training_hooks,
)

__all__ = [
    "MODEL_FAMILIES",
    "FamilySpec",
    "ModelOutput",
    "TrainingHooks",
    "build_model",
    "check_model_config",
    "family",
    "load_pretrained",
    "needs_prior",
    "param_groups",
    "register_family",
    "sam_family",
    "training_hooks",
    "unet_family",
]
