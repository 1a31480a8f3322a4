"""The SAM family (`model.family: sam`): variants, config choices, build, Meta checkpoints, layers.

Like segment-anything's `build_sam.py`: the size table and the builder, with the modules in
sam.py and the trainer's hooks (embedding cache, point prompts) in sam_training.py, imported
only when a model is built or trained (this module imports no torch; see registry.py).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from kit.errors import KitError
from kit.models.registry import FamilySpec, LayerIds, register_family

if TYPE_CHECKING:
    from torch import nn

    from kit.config import Config
    from kit.models.sam_training import SamTrainingHooks


@dataclass(frozen=True)
class SamSpec:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_hidden_dim: int = 256


SAM_VARIANTS: dict[str, SamSpec] = {
    # Meta's hyperparameters (segment_anything/build_sam.py)
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    # From-scratch CPU variants, same code path. Patch 8 so a 64-px demo tile still has 8×8
    # tokens and 32×32 low-res masks; no Meta checkpoint fits them.
    "vit_tiny": SamSpec(
        96, 4, 3, (1, 3), patch_size=8, window_size=4, prompt_dim=64, decoder_mlp_dim=256,
        decoder_heads=4, iou_hidden_dim=64,
    ),
    "vit_tiny4": SamSpec(
        96, 4, 3, (1, 3), patch_size=4, window_size=4, prompt_dim=64, decoder_mlp_dim=256,
        decoder_heads=4, iou_hidden_dim=64,
    ),
    "vit_tiny16": SamSpec(
        96, 4, 3, (1, 3), patch_size=16, window_size=14, prompt_dim=64, decoder_mlp_dim=256,
        decoder_heads=4, iou_hidden_dim=64,
    ),
}  # fmt: skip

ADAPTERS = ("conv1x1", "stem3d", "mosaic")  # the names kit.models.adapters.build_adapter builds
# "mask": a first-stage prediction (the prior, an input channel) into SAM's mask prompt
PROMPT_MODES = ("none", "box", "points", "mask")
POINT_SAMPLING = ("labels", "grid", "error")  # kit.models.prompts.sample_points modes
ATTENTION = ("auto", "sdpa", "meta")  # kit.models.sam_attention.attention_kernel's settings


def check_sam_config(config: Config) -> None:
    """The checks beyond the names: the tile fits the patch grid; the embedding cache works."""
    m = config.model
    patch = SAM_VARIANTS[m.variant].patch_size
    if config.data.tile % patch:
        raise KitError(
            f"data.tile={config.data.tile} is not a multiple of {m.variant}'s patch size "
            f"{patch}; pick e.g. {config.data.tile // patch * patch}"
        )
    if m.prompt == "mask" and m.adapter == "mosaic":
        raise KitError(
            "model.prompt=mask feeds the prior at the tile's own frame; model.adapter=mosaic "
            "tiles the slices into a larger image: use adapter conv1x1 or stem3d"
        )
    if m.prior_residual and m.prompt != "mask":
        raise KitError(
            f"model.prior_residual=true adds the prior's logits to the output, but "
            f"model.prompt={m.prompt!r} reads no prior; set model.prompt=mask"
        )
    check_embedding_cache(config)


def sam_needs_prior(config: Config) -> bool:
    """model.prompt=mask reads a first-stage probability map (kit.models.needs_prior)."""
    return config.model.prompt == "mask"


def check_embedding_cache(config: Config) -> None:
    """KitError unless `train.embedding_cache` can work: a frozen SAM encoder."""
    mode = config.model.train_mode
    if config.train.embedding_cache and mode != "frozen":
        raise KitError(
            f"train.embedding_cache=true needs a frozen SAM encoder, but model.train_mode="
            f"{mode!r} changes it every step; set model.train_mode=frozen, "
            "or train.embedding_cache=false"
        )


def cache_ignores(config: Config) -> list[str]:
    """The settings an embedding-cache run ignores: jitter and every image augmentation (the
    cached embedding is the unaugmented tile's; no transform of it equals encoding a transformed
    tile)."""
    ignored = ["train.jitter"] if config.train.jitter else []
    return ignored + [
        f"augment.{k}" for k, v in asdict(config.augment).items() if k.startswith("p_") and v > 0
    ]


def build_sam(config: Config) -> nn.Module:
    from kit.models.lora import add_lora_to_qkv
    from kit.models.sam import SamSegmenter

    m = config.model
    model = SamSegmenter(
        SAM_VARIANTS[m.variant],
        in_channels=config.data.in_channels,
        tile=config.data.tile,
        adapter=m.adapter,
        prompt=m.prompt,
        grad_checkpointing=m.grad_checkpointing,
        input_gain=m.input_gain,
        prior_residual=m.prior_residual,
        attention=m.attention,
    )
    model.variant = m.variant
    if m.train_mode == "lora":
        add_lora_to_qkv(model.image_encoder, rank=m.lora_rank)
    _set_trainable(model, config)
    return model


def _set_trainable(model: nn.Module, config: Config) -> None:
    """Freeze per train_mode, and always what never gets a gradient: the prompt-encoder parts
    this prompt mode does not use (the mask-prompt downscaler unless prompt=mask, which in turn
    never uses the "no mask" embedding) and the IoU head when the IoU loss is off. Unused
    trainable parameters break DDP's gradient sync."""
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
            elif name.startswith("prompt_encoder.mask_downscaling."):
                trainable = prompt == "mask"
            elif name.startswith("prompt_encoder.no_mask_embed."):
                trainable = prompt != "mask"
        p.requires_grad_(trainable)


def load_meta_checkpoint(model: nn.Module, config: Config) -> None:
    """A Meta checkpoint, resized to the tile and loaded strictly (see sam_checkpoint.py)."""
    from kit.models.sam_checkpoint import load_sam_checkpoint

    load_sam_checkpoint(model, config.model.pretrained, rel_pos_resize=config.model.rel_pos_resize)


def sam_layer_ids(model: nn.Module) -> LayerIds:
    """Layer 0 = adapter, patch embed and pos_embed; block i = i + 1; neck, prompt encoder and
    mask decoder = L = depth + 1 (full lr)."""
    depth = len(model.image_encoder.blocks)

    def layer_of(name: str) -> int:
        if name.startswith(("adapter.", "image_encoder.patch_embed.", "image_encoder.pos_embed")):
            return 0
        m = re.match(r"image_encoder\.blocks\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else depth + 1

    return layer_of, depth + 1


def sam_training_hooks(config: Config, model: nn.Module, **context) -> SamTrainingHooks:
    from kit.models.sam_training import SamTrainingHooks

    return SamTrainingHooks(config, model, **context)


register_family(
    "sam",
    FamilySpec(
        build=build_sam,
        choices={
            "train_mode": ("frozen", "lora", "full"),
            "variant": tuple(SAM_VARIANTS),
            "adapter": ADAPTERS,
            "prompt": PROMPT_MODES,
            "point_sampling": POINT_SAMPLING,
            "rel_pos_resize": ("interpolate", "crop"),
            "attention": ATTENTION,
        },
        check=check_sam_config,
        load_pretrained=load_meta_checkpoint,
        layer_ids=sam_layer_ids,
        training_hooks=sam_training_hooks,
        embedding_cache=True,
        needs_prior=sam_needs_prior,
    ),
)
