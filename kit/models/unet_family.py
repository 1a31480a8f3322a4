"""The U-Net family (`model.family: unet`): a timm encoder and a light decoder (unet.py).

`model.variant` is any timm encoder with a feature pyramid; unet.py checks it when the model is
built (listing timm's names means importing timm, too slow for a config check).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kit.models.registry import FamilySpec, LayerIds, register_family

if TYPE_CHECKING:
    from torch import nn

    from kit.config import Config


def build_unet(config: Config) -> nn.Module:
    from kit.models.unet import TimmUnet

    m = config.model
    model = TimmUnet(
        m.variant, in_channels=config.data.in_channels, decoder_channels=m.decoder_channels
    )
    if m.train_mode == "frozen":
        model.encoder.requires_grad_(False)
    if m.grad_checkpointing and hasattr(model.encoder, "set_grad_checkpointing"):
        model.encoder.set_grad_checkpointing(True)
    model.variant = m.variant
    return model


def load_timm_file(model: nn.Module, config: Config) -> None:
    from kit.models.unet import load_timm_weights

    m = config.model
    load_timm_weights(
        model, Path(m.pretrained), variant=m.variant, in_channels=config.data.in_channels
    )


def unet_layer_ids(model: nn.Module) -> LayerIds:
    """Encoder stages 0..L−1 (the children up to each feature level), decoder L."""
    stage_ends = {i["module"].replace(".", "_") for i in model.encoder.feature_info.info}
    child_layer, layer = {}, 0
    for child, _ in model.encoder.named_children():
        child_layer[child] = layer
        if child.replace(".", "_") in stage_ends:
            layer += 1
    n = layer

    def layer_of(name: str) -> int:
        if not name.startswith("encoder."):
            return n
        return child_layer.get(name.split(".")[1], n)

    return layer_of, n


register_family(
    "unet",
    FamilySpec(
        build=build_unet,
        choices={"train_mode": ("frozen", "full"), "prompt": ("none",), "attention": ("auto",)},
        load_pretrained=load_timm_file,
        layer_ids=unet_layer_ids,
    ),
)
