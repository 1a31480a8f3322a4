"""SAM at tile resolution: adapter -> image encoder -> prompt encoder -> batched mask decoder.

The encoder is built at the tile size (256 -> 16×16 tokens with patch 16), never at 1024, and
the prompt encoder with the matching embedding and input sizes. SAM's `Sam.forward` runs under
`torch.no_grad` and loops over images in Python, so this module calls the three submodules
directly and re-implements the few lines of `MaskDecoder.predict_masks` that assume one image
per call (it `repeat_interleave`s the image embedding by the number of prompt sets): here B image
embeddings meet B prompt sets in one call, each image with its own prompts.

The encoder's blocks run either as segment-anything wrote them or through
`kit.models.sam_attention.sdpa_block` (`attention`, from `model.attention`), with the same
parameters. State-dict keys are `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*` exactly
as in Meta's checkpoints, plus the kit's own `adapter.*` (and `...qkv.lora_a/b` under LoRA).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from kit.models.adapters import build_adapter
from kit.models.output import ModelOutput
from kit.models.prompts import Prompts, whole_tile_box
from kit.models.sam_attention import attention_kernel, sdpa_block
from kit.models.sam_family import SamSpec

if TYPE_CHECKING:
    from kit.models.embedding_cache import EmbeddingCache

# Meta's pixel statistics in the 0-255 frame (segment_anything.build_sam).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# a prior of 0 or 1 becomes logit ±4.6 in the mask prompt, not ±inf
PRIOR_EPS = 0.01


def prior_logits(prior: torch.Tensor) -> torch.Tensor:
    """Probabilities in [0, 1] -> logits, clamped to [PRIOR_EPS, 1 - PRIOR_EPS] first."""
    p = prior.clamp(PRIOR_EPS, 1 - PRIOR_EPS)
    return torch.log(p) - torch.log1p(-p)


class SamSegmenter(nn.Module):
    """x (B, C, T, T) in [0, 1] -> ModelOutput(logits (B, 1, T, T), iou (B, 1)).

    With prompt="mask", x is (B, C + 1, T, T): channel C is a first-stage probability map (the
    prior), fed to the prompt encoder's mask input (`mask_prompt`); the image is channels 0..C-1.
    With `prior_residual` the output logits are the decoder's plus the prior's own logits: the
    decoder learns a correction of the prior instead of having to pass it through first.
    """

    def __init__(
        self,
        spec: SamSpec,
        *,
        in_channels: int,
        tile: int,
        adapter: str = "conv1x1",
        prompt: str = "none",
        grad_checkpointing: bool = False,
        input_gain: float = 0.0,
        attention: str = "auto",
        prior_residual: bool = False,
    ) -> None:
        super().__init__()
        self.tile, self.prompt, self.grad_checkpointing = tile, prompt, grad_checkpointing
        self.input_gain, self.attention = input_gain, attention
        self.in_channels = in_channels  # the slices; model.prompt=mask reads one channel more
        self.prior_residual = prior_residual
        self.adapter = build_adapter(adapter, in_channels)
        self.img_size = tile * self.adapter.scale
        tokens = self.img_size // spec.patch_size
        self.image_encoder = ImageEncoderViT(
            img_size=self.img_size,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=4,
            out_chans=spec.prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=spec.window_size,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=spec.prompt_dim,
            image_embedding_size=(tokens, tokens),
            input_image_size=(self.img_size, self.img_size),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=spec.prompt_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_heads,
            ),
            transformer_dim=spec.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_hidden_dim,
        )
        # Not persistent, as in Sam: Meta checkpoints do not carry them.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, T) in [0, 1] -> image embeddings (B, prompt_dim, tokens, tokens)."""
        image = self.adapter(x)
        if self.input_gain > 0:
            # A faint volume signal (ink ~0.02 of the [0, 1] range) is tiny on SAM's pixel
            # scale and a from-scratch ViT barely moves towards it; amplified around the tile's
            # mean it learns (model.input_gain; off for pretrained SAM, which expects raw frames).
            mean = image.mean(dim=(2, 3), keepdim=True)
            image = 0.5 + self.input_gain * (image - mean)
        image = (image * 255.0 - self.pixel_mean) / self.pixel_std
        enc = self.image_encoder
        h = enc.patch_embed(image)
        if enc.pos_embed is not None:
            h = h + enc.pos_embed
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        sdpa = attention_kernel(self.attention, h.device) == "sdpa"
        for block in enc.blocks:
            run = partial(sdpa_block, block) if sdpa else block
            h = checkpoint(run, h, use_reentrant=False) if use_ckpt else run(h)
        return enc.neck(h.permute(0, 3, 1, 2))

    def forward(
        self,
        x: torch.Tensor | None,
        prompts: Prompts | None = None,
        *,
        cache: EmbeddingCache | None = None,
        cache_keys: Sequence[Hashable] | None = None,
    ) -> ModelOutput:
        """x (B, C, T, T) -> ModelOutput. With `cache`, embeddings of `cache_keys` are reused
        (x may then be None when every key is cached)."""
        prior = None
        if self.prompt == "mask":
            x, prior = self.split_prior(x)
        if cache is not None:
            if cache_keys is None:
                raise ValueError("cache_keys are required with an embedding cache")
            embeddings = cache.embeddings(self, x, cache_keys)
        else:
            assert x is not None
            embeddings = self.encode(x)
        return self.decode(embeddings, prompts, prior=prior)

    def split_prior(self, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C + 1, T, T) -> the image (B, C, T, T) and the prior (B, 1, T, T) in [0, 1]."""
        c = self.in_channels
        if x is None or x.shape[1] != c + 1:
            got = "no input" if x is None else f"{x.shape[1]} channels"
            raise ValueError(
                f"model.prompt=mask reads {c} slices and a prior channel, got {got}: attach the "
                "first-stage map to the fragment (kit train/predict --prior DIR)"
            )
        return x[:, :c], x[:, c:]

    def mask_prompt(self, prior: torch.Tensor) -> torch.Tensor:
        """Prior (B, 1, T, T) in [0, 1] -> mask-prompt logits (B, 1, 4h, 4w): SAM's mask input
        is the low-res logits of a previous prediction at 4× the embedding grid (for patch 4
        that is the tile itself; for patch 16 the prior is area-averaged down)."""
        size = tuple(self.prompt_encoder.mask_input_size)
        if tuple(prior.shape[-2:]) != size:
            prior = F.interpolate(prior, size=size, mode="area")
        return prior_logits(prior)

    def decode(
        self,
        embeddings: torch.Tensor,
        prompts: Prompts | None = None,
        *,
        prior: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Image embeddings (B, D, h, w) + prompts in the tile frame (+ the prior (B, 1, T, T)
        for model.prompt=mask) -> ModelOutput."""
        b = embeddings.shape[0]
        if prompts is None and self.prompt == "box":
            prompts = Prompts(boxes=whole_tile_box(b, self.img_size, embeddings.device))
        points, boxes = None, None
        if prompts is not None:
            if prompts.coords is not None:
                assert prompts.labels is not None, "point prompts need labels"
                points = self.adapter.map_points(prompts.coords.float(), prompts.labels, self.tile)
            boxes = prompts.boxes
        masks = self.mask_prompt(prior) if prior is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = self._predict_masks(embeddings, sparse, dense)
        logits = F.interpolate(
            low_res[:, :1], size=(self.img_size, self.img_size), mode="bilinear",
            align_corners=False,
        )  # fmt: skip
        logits = self.adapter.fold(logits)
        if prior is not None and self.prior_residual:
            logits = logits + prior_logits(prior)
        return ModelOutput(logits, iou[:, :1])

    def _predict_masks(
        self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MaskDecoder.predict_masks with one prompt set per image (no repeat_interleave).

        embeddings (B, D, h, w); sparse (B or 1, K, D); dense (B or 1, D, h, w)
        -> masks (B, M, 4h, 4w), iou (B, M) with M = 1 + num_multimask_outputs.
        """
        dec = self.mask_decoder
        b, c, h, w = embeddings.shape
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse.expand(b, -1, -1)], dim=1
        )
        src = embeddings + dense
        pos_src = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)],
            dim=1,
        )
        _, uc, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        return masks, dec.iou_prediction_head(iou_token_out)
