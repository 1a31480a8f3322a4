"""Shared builders for the model tests (tiny variants, CPU)."""

from __future__ import annotations

from kit.config import Config


def tiny_config(
    family: str = "sam",
    *,
    variant: str | None = None,
    tile: int = 32,
    channels: int = 4,
    **model: object,
) -> Config:
    config = Config()
    config.data.tile = tile
    config.data.z_start, config.data.z_end = 0, channels
    config.model.family = family
    config.model.variant = variant or ("vit_tiny" if family == "sam" else "resnet10t")
    if family == "unet":
        config.model.decoder_channels = [32, 16, 16, 8, 8]
    for key, value in model.items():
        setattr(config.model, key, value)
    return config
