"""A 2.5D U-Net: any timm encoder (`features_only=True`, `in_chans=C`) and a light decoder.

The C slices enter the encoder's first conv directly. `pretrained=False` always: timm weights
come only from a local file (`load_timm_weights`, through `kit.models.load_pretrained`; no
downloads here).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import KitError
from kit.models.output import ModelOutput


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def create_encoder(name: str, in_channels: int) -> nn.Module:
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.5)
        raise KitError(
            f"unknown timm encoder {name!r} for model.variant; close names: {close} "
            "(any name from timm.list_models(); small CPU choices: resnet10t, "
            "mobilenetv3_small_100, efficientnet_b0)"
        )
    try:
        return timm.create_model(name, features_only=True, in_chans=in_channels, pretrained=False)
    except RuntimeError as exc:  # e.g. a ViT without a feature pyramid
        raise KitError(f"timm encoder {name!r} cannot produce U-Net features: {exc}") from exc


class TimmUnet(nn.Module):
    """x (B, C, T, T) -> ModelOutput(logits (B, 1, T, T), iou=None)."""

    def __init__(self, encoder: str, *, in_channels: int, decoder_channels: list[int]) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, in_channels)
        skips = self.encoder.feature_info.channels()
        n_up = len(skips) - 1
        if len(decoder_channels) < n_up:
            raise KitError(
                f"model.decoder_channels {decoder_channels} has {len(decoder_channels)} entries; "
                f"encoder {encoder!r} has {len(skips)} feature levels, so give at least {n_up}"
            )
        blocks, cin = [], skips[-1]
        for i in range(n_up):
            blocks.append(_conv_block(cin + skips[-2 - i], decoder_channels[i]))
            cin = decoder_channels[i]
        self.blocks = nn.ModuleList(blocks)
        # Features whose finest level is /2 or /4 get one more block at full resolution.
        self.has_final = self.encoder.feature_info.reduction()[0] > 1
        final = decoder_channels[n_up] if len(decoder_channels) > n_up else cin
        self.final = _conv_block(cin, final) if self.has_final else nn.Identity()
        self.head = nn.Conv2d(final if self.has_final else cin, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x (B, C, T, T) -> ModelOutput(logits (B, 1, T, T), None)."""
        feats = self.encoder(x)
        h = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        if self.has_final:
            h = self.final(F.interpolate(h, size=x.shape[-2:], mode="bilinear"))
        return ModelOutput(self.head(h), None)


def load_timm_weights(model: TimmUnet, path: Path, *, variant: str, in_channels: int) -> None:
    """A timm state dict of `variant` (classifier included, optionally under "state_dict" or
    "model"), loaded strictly into a full timm model first (the stem conv adapted from 3 to C
    channels), then into `model.encoder`."""
    import timm
    from timm.models import adapt_input_conv

    if not path.is_file():
        raise KitError(f"pretrained weights {path} do not exist; give a local timm .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    c = in_channels
    full = timm.create_model(variant, pretrained=False, in_chans=c)
    target = full.state_dict()
    for key, value in state.items():
        if key in target and value.ndim == 4 and value.shape[1] != c == target[key].shape[1]:
            state[key] = adapt_input_conv(c, value)
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise KitError(f"{path} does not fit timm model {variant!r} (strict load): {exc}") from exc
    source = full.state_dict()
    encoder_state = {}
    for key in model.encoder.state_dict():
        # features_only nets may flatten `stages.1` into `stages_1`
        original = key if key in source else re.sub(r"^([A-Za-z]+)_(\d+)", r"\1.\2", key)
        encoder_state[key] = source[original]
    model.encoder.load_state_dict(encoder_state, strict=True)
