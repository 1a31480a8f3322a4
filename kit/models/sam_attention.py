"""SAM's encoder block with attention through `F.scaled_dot_product_attention` (`model.attention`).

`sdpa_block(block, x)` computes what segment-anything's `Block.forward` computes, with the same
parameters (so Meta checkpoints load unchanged: nothing here owns a weight), in three ways
cheaper:
- the attention itself is one SDPA call with the decomposed relative-position bias (MViTv2, as
  Meta adds it) as its `attn_mask`, built once per block forward, instead of an explicit
  softmax over a separately materialised score matrix;
- the qkv and output projections run on the real tokens only. Meta pads the normalised tokens
  with zeros to a multiple of the window before projecting them (at 256 px the 16×16 grid
  becomes 28×28 for 14-token windows: 3× the tokens); a zero token's qkv is the qkv layer's
  value at 0 (its bias), so the padded windows are filled with that vector after projecting.
  Padded tokens still take part as keys and values, exactly as in Meta's blocks, and their
  outputs are dropped before the output projection (per token, so dropping first is the same);
- the relative-position index is built once per size and device, not on the host every call.
Results equal Meta's up to float rounding (tests/models/test_sam_attention.py states the
difference, outputs and gradients, windowed and global blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# model.attention (kit.models.sam_family.ATTENTION): "meta" is segment-anything's own
# Block.forward, "sdpa" is sdpa_block, "auto" per device what measured faster there
# (BENCHMARKS.md, "Attention kernel")
AUTO_ATTENTION = {"cuda": "sdpa", "cpu": "sdpa"}


def attention_kernel(setting: str, device: torch.device) -> str:
    """ "sdpa" or "meta" for `model.attention` on `device` ("auto": AUTO_ATTENTION)."""
    if setting != "auto":
        return setting
    return AUTO_ATTENTION.get(device.type, "sdpa")


def sdpa_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything Block (windowed or global) on x (B, H, W, D) -> (B, H, W, D)."""
    attn = block.attn
    b, h, w, d = x.shape
    qkv = attn.qkv(block.norm1(x))  # (B, H, W, 3D), real tokens only
    size = block.window_size
    if size > 0:
        qkv = _pad_with(qkv, size, attn.qkv(x.new_zeros(d)))
        qkv = _partition(qkv, size)  # (B·nW, size, size, 3D)
    n, gh, gw, _ = qkv.shape
    q, k, v = qkv.reshape(n, gh * gw, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = _rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (gh, gw)) if attn.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.transpose(1, 2).reshape(n, gh, gw, d)  # (B·nW, gh, gw, D)
    if size > 0:
        out = _unpartition(out, b, size)[:, :h, :w]
    x = x + attn.proj(out)
    return x + block.mlp(block.norm2(x))


def _pad_with(x: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, Hp, Wp, C), H and W rounded up to multiples of `size`, new cells
    `fill` (C,). Concatenation keeps the real entries bit for bit (and `fill` in the graph)."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % size, -w % size
    if pad_w:
        x = torch.cat([x, fill.expand(b, h, pad_w, c)], dim=2)
    if pad_h:
        x = torch.cat([x, fill.expand(b, pad_h, w + pad_w, c)], dim=1)
    return x


def _partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B·nW, size, size, C), windows in segment-anything's order."""
    b, hp, wp, c = x.shape
    x = x.view(b, hp // size, size, wp // size, size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, c)


def _unpartition(windows: torch.Tensor, b: int, size: int) -> torch.Tensor:
    """(B·nW, size, size, C) -> (B, Hp, Wp, C)."""
    n, _, _, c = windows.shape
    per_side = round((n // b) ** 0.5)  # square grids: SAM pads H and W alike
    x = windows.view(b, per_side, per_side, size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, per_side * size, per_side * size, c)


def _rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Decomposed relative-position bias (segment_anything add_decomposed_rel_pos) as an
    additive mask: q (N, heads, gh·gw, hd) unscaled -> (N, heads, gh·gw, gh·gw)."""
    gh, gw = grid
    rh = rel_pos_h[_rel_index(gh, rel_pos_h)]  # (gh, gh, hd)
    rw = rel_pos_w[_rel_index(gw, rel_pos_w)]
    n, heads, _, hd = q.shape
    r_q = q.reshape(n, heads, gh, gw, hd)
    rel_h = torch.einsum("nahwc,hkc->nahwk", r_q, rh)
    rel_w = torch.einsum("nahwc,wkc->nahwk", r_q, rw)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (N, heads, gh, gw, gh, gw)
    return bias.reshape(n, heads, gh * gw, gh * gw)


_REL_INDEX: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _rel_index(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(size, size) long index into rel_pos (L, hd): entry [i, j] = i − j + size − 1, as in
    get_rel_pos for equal query and key sizes. rel_pos of another length than 2·size − 1 is
    what Meta resizes on the fly; the kit builds and loads the encoder at its tile size."""
    length = rel_pos.shape[0]
    if length != 2 * size - 1:
        raise ValueError(
            f"rel_pos has {length} entries for a {size}-token side (expected {2 * size - 1}); "
            "load checkpoints through kit.models.sam_checkpoint, which resizes them"
        )
    key = (size, length, rel_pos.device)
    index = _REL_INDEX.get(key)
    if index is None:
        # a normal tensor even when first built under inference_mode (validation), or training
        # after it could not index with it
        with torch.inference_mode(False):
            coords = torch.arange(size, device=rel_pos.device)
            index = _REL_INDEX[key] = coords[:, None] - coords[None, :] + size - 1
    return index
