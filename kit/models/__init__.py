"""Models: one builder over a registry of families ("sam", "unet").

    build_model(config)            -> nn.Module; model(x (B, C, T, T)) -> ModelOutput
    load_pretrained(model, config) -> loads config.model.pretrained (never inside build_model)
    param_groups(model, config)    -> optimizer groups: trainable params, layer-wise LR decay

Constructors never touch files. `build_model` also applies `config.model.train_mode` (which
parameters train), so a checkpoint's stored config rebuilds the same structure (LoRA included).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kit.config import Config
from kit.errors import KitError
from kit.models.adapters import ADAPTERS
from kit.models.output import ModelOutput
from kit.models.prompts import POINT_SAMPLING, PROMPT_MODES, Prompts

__all__ = [
    "MODEL_FAMILIES",
    "TRAIN_MODES",
    "ModelOutput",
    "Prompts",
    "build_model",
    "load_pretrained",
    "param_groups",
]

TRAIN_MODES = ("frozen", "lora", "full")


def _check(value: str, valid: tuple[str, ...] | list[str], key: str) -> None:
    if value not in valid:
        raise KitError(f"unknown {key} {value!r}; valid: {list(valid)}")


def _build_sam(config: Config) -> nn.Module:
    from kit.models.lora import add_lora_to_qkv
    from kit.models.sam import SAM_VARIANTS, SamSegmenter

    m = config.model
    _check(m.variant, list(SAM_VARIANTS), "model.variant for family sam")
    _check(m.adapter, ADAPTERS, "model.adapter")
    _check(m.prompt, PROMPT_MODES, "model.prompt")
    _check(m.point_sampling, POINT_SAMPLING, "model.point_sampling")
    _check(m.rel_pos_resize, ("interpolate", "crop"), "model.rel_pos_resize")
    spec = SAM_VARIANTS[m.variant]
    if config.data.tile % spec.patch_size:
        raise KitError(
            f"data.tile={config.data.tile} is not a multiple of {m.variant}'s patch size "
            f"{spec.patch_size}; pick e.g. {config.data.tile // spec.patch_size * spec.patch_size}"
        )
    model = SamSegmenter(
        spec,
        in_channels=config.data.in_channels,
        tile=config.data.tile,
        adapter=m.adapter,
        prompt=m.prompt,
        grad_checkpointing=m.grad_checkpointing,
        input_gain=m.input_gain,
    )
    model.variant = m.variant
    if m.train_mode == "lora":
        add_lora_to_qkv(model.image_encoder, rank=m.lora_rank)
    _set_sam_trainable(model, config)
    return model


def _set_sam_trainable(model: nn.Module, config: Config) -> None:
    """Freeze per train_mode, and always what never gets a gradient: the prompt-encoder parts
    this prompt mode does not use (mask prompts are never fed) and the IoU head when the IoU
    loss is off. Unused trainable parameters break DDP's gradient sync."""
    from kit.models.lora import lora_param_names

    mode, prompt = config.model.train_mode, config.model.prompt
    lora = lora_param_names(model)
    used_point_embeddings = {"points": (0, 1), "box": (2, 3)}.get(prompt, ())
    for name, p in model.named_parameters():
        trainable = True
        if name.startswith("image_encoder."):
            trainable = mode == "full" or name in lora
        elif name.startswith("adapter."):
            # A cached embedding is only valid while the adapter in front of it is fixed.
            trainable = not (mode == "frozen" and config.train.embedding_cache)
        elif name.startswith("mask_decoder.iou_prediction_head."):
            trainable = config.loss.iou > 0
        elif name.startswith("prompt_encoder."):
            m = re.match(r"prompt_encoder\.point_embeddings\.(\d+)\.", name)
            if m:
                trainable = int(m.group(1)) in used_point_embeddings
            elif name.startswith("prompt_encoder.not_a_point_embed."):
                trainable = prompt == "points"
            else:
                trainable = not name.startswith("prompt_encoder.mask_downscaling.")
        p.requires_grad_(trainable)


def _build_unet(config: Config) -> nn.Module:
    from kit.models.unet import TimmUnet

    m = config.model
    if m.train_mode == "lora":
        raise KitError("model.train_mode=lora is for SAM; the U-Net trains 'full' or 'frozen'")
    if m.prompt != "none":
        raise KitError("the U-Net family takes no prompts; set model.prompt=none")
    model = TimmUnet(
        m.variant, in_channels=config.data.in_channels, decoder_channels=m.decoder_channels
    )
    if m.train_mode == "frozen":
        model.encoder.requires_grad_(False)
    if m.grad_checkpointing and hasattr(model.encoder, "set_grad_checkpointing"):
        model.encoder.set_grad_checkpointing(True)
    model.variant = m.variant
    return model


MODEL_FAMILIES: dict[str, Callable[[Config], nn.Module]] = {"sam": _build_sam, "unet": _build_unet}


def build_model(config: Config) -> nn.Module:
    """The model `config.model` describes, for `config.data.in_channels` and `config.data.tile`."""
    from kit.config import ConfigError, unresolved

    if unresolved(config):
        raise ConfigError(
            f"{', '.join(unresolved(config))} = 'auto' must be resolved from the data first "
            "(kit train does it; see kit.data.probe.resolve_auto)"
        )
    _check(config.model.family, list(MODEL_FAMILIES), "model.family")
    _check(config.model.train_mode, TRAIN_MODES, "model.train_mode")
    return MODEL_FAMILIES[config.model.family](config)


def load_pretrained(model: nn.Module, config: Config) -> None:
    """Load `config.model.pretrained` (a local path) into `model`; a no-op when it is None.

    SAM: a Meta checkpoint, resized to the tile and loaded strictly (see sam_checkpoint.py).
    U-Net: a timm state dict of `model.variant` (classifier included), loaded strictly into a
    full timm model first (the stem conv adapted from 3 to C channels), then into the encoder.
    """
    path = config.model.pretrained
    if path is None:
        return
    if config.model.family == "sam":
        from kit.models.sam_checkpoint import load_sam_checkpoint

        load_sam_checkpoint(model, path, rel_pos_resize=config.model.rel_pos_resize)
    else:
        _load_timm_weights(model, Path(path), config)


def _load_timm_weights(model: nn.Module, path: Path, config: Config) -> None:
    import timm
    from timm.models import adapt_input_conv

    if not path.is_file():
        raise KitError(f"pretrained weights {path} do not exist; give a local timm .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    c = config.data.in_channels
    full = timm.create_model(config.model.variant, pretrained=False, in_chans=c)
    target = full.state_dict()
    for key, value in state.items():
        if key in target and value.ndim == 4 and value.shape[1] != c == target[key].shape[1]:
            state[key] = adapt_input_conv(c, value)
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise KitError(
            f"{path} does not fit timm model {config.model.variant!r} (strict load): {exc}"
        ) from exc
    source = full.state_dict()
    encoder_state = {}
    for key in model.encoder.state_dict():
        # features_only nets may flatten `stages.1` into `stages_1`
        original = key if key in source else re.sub(r"^([A-Za-z]+)_(\d+)", r"\1.\2", key)
        encoder_state[key] = source[original]
    model.encoder.load_state_dict(encoder_state, strict=True)


def _sam_layer_id(name: str, depth: int) -> int:
    if name.startswith(("adapter.", "image_encoder.patch_embed.", "image_encoder.pos_embed")):
        return 0
    m = re.match(r"image_encoder\.blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def _unet_layer_ids(model: nn.Module) -> tuple[Callable[[str], int], int]:
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


def param_groups(model: nn.Module, config: Config) -> list[dict]:
    """Optimizer groups over trainable params only: lr = train.lr · layer_decay^(L − layer),
    weight decay 0 for norms, biases, positional embeddings and learned tokens.

    Each group has "params", "lr", "lr_scale" (for schedulers), "weight_decay", "name".
    SAM: layer 0 = adapter, patch embed and pos_embed; block i = i + 1; neck, prompt encoder and
    mask decoder = L = depth + 1 (full lr). U-Net: encoder stages 0..L−1, decoder L.
    """
    if config.model.family == "sam":
        depth = len(model.image_encoder.blocks)
        n_layers = depth + 1

        def layer_of(name: str) -> int:
            return _sam_layer_id(name, depth)
    else:
        layer_of, n_layers = _unet_layer_ids(model)
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
