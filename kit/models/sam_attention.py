"""SAM's encoder block with attention through `F.scaled_dot_product_attention` (`model.attention`).

`sdpa_block(block, x)` computes what segment-anything's `Block.forward` computes, with the same
parameters (so Meta checkpoints load unchanged: nothing here owns a weight), in four ways
cheaper:
- the attention is an SDPA call with the decomposed relative-position bias (MViTv2, as Meta adds
  it) as its `attn_mask`, instead of an explicit softmax over a separately materialised score
  matrix;
- the qkv and output projections run on the real tokens only. Meta pads the normalised tokens
  with zeros to a multiple of the window before projecting them (at 256 px the 16×16 grid
  becomes 28×28 for 14-token windows: 3× the tokens); a zero token's qkv is the qkv layer's
  value at 0 (its bias), so the padded windows are filled with that vector after projecting.
  Padded tokens still take part as keys and values, exactly as in Meta's blocks;
- only real tokens are queries: Meta's padded queries are computed and then dropped. Windows
  with the same number of real rows and columns are stacked (at most four such groups: full
  windows, the last row, the last column, the corner), each one SDPA call with its queries'
  rows of the bias, so scores, softmax and bias shrink with the queries (at 256 px to a third);
- the relative-position index is built once per size and device, not on the host every call.
Results equal Meta's up to float rounding (tests/models/test_sam_attention.py states the
difference, outputs and gradients, windowed and global blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# model.attention (kit.models.sam_family.ATTENTION): "meta" is segment-anything's own
# Block.forward, "sdpa" is sdpa_block, "auto" per device: sdpa measured 1.31-1.44× faster on
# the CPU (BENCHMARKS.md, "Kit against the plain loop"); on CUDA sdpa is chosen unmeasured by
# this kit (torch's fused kernels; bench/gpu_check.sh's attention section measures it)
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
    sh, sw = (size, size) if size > 0 else (h, w)  # a global block: one window, the grid
    if h % sh or w % sw:
        qkv = _pad_with(qkv, (sh, sw), attn.qkv(x.new_zeros(d)))
    hp, wp = qkv.shape[1:3]
    windows = qkv.view(b, hp // sh, sh, wp // sw, sw, 3 * d).permute(0, 1, 3, 2, 4, 5)
    rows = []
    for row_windows, real_h in _groups(h, sh):
        blocks = [
            _window_attention(attn, windows[:, row_windows, col_windows], (real_h, real_w))
            for col_windows, real_w in _groups(w, sw)
        ]
        rows.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)  # (B, H, W, D)
    x = x + attn.proj(out)
    return x + block.mlp(block.norm2(x))


def _groups(length: int, size: int) -> list[tuple[slice, int]]:
    """Windows along one axis of `length` real tokens, grouped by how many of their `size`
    tokens are real: [(window slice, real tokens)], the full ones and then the last if partial."""
    full, rest = divmod(length, size)
    groups = [(slice(0, full), size)] if full else []
    return groups + ([(slice(full, full + 1), rest)] if rest else [])


def _window_attention(
    attn: nn.Module, windows: torch.Tensor, real: tuple[int, int]
) -> torch.Tensor:
    """Windows (B, nr, nc, sh, sw, 3D) of qkv whose first `real` (rh, rw) rows and columns are
    real tokens -> their attention output (B, nr·rh, nc·rw, D): queries the real tokens, keys
    and values every token of the window."""
    b, nr, nc, sh, sw, c = windows.shape
    (rh, rw), d, heads = real, c // 3, attn.num_heads
    n = b * nr * nc

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # (..., y, x, D) -> (n, heads, y·x, hd)
        return t.reshape(n, -1, heads, d // heads).transpose(1, 2)

    q = heads_first(windows[..., :rh, :rw, :d])
    k, v = heads_first(windows[..., d : 2 * d]), heads_first(windows[..., 2 * d :])
    bias = None
    if attn.use_rel_pos:
        bias = _rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (rh, rw), (sh, sw))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, nr, nc, rh, rw, d).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(b, nr * rh, nc * rw, d)


def _pad_with(x: torch.Tensor, size: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, Hp, Wp, C), H and W rounded up to multiples of `size`, new cells
    `fill` (C,). Concatenation keeps the real entries bit for bit (and `fill` in the graph)."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % size[0], -w % size[1]
    if pad_w:
        x = torch.cat([x, fill.expand(b, h, pad_w, c)], dim=2)
    if pad_h:
        x = torch.cat([x, fill.expand(b, pad_h, w + pad_w, c)], dim=1)
    return x


def _rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Decomposed relative-position bias (segment_anything add_decomposed_rel_pos) of the
    queries at the first q_size (rh, rw) positions of a k_size (sh, sw) window, as an additive
    mask: q (N, heads, rh·rw, hd) unscaled -> (N, heads, rh·rw, sh·sw)."""
    (rh, rw), (sh, sw) = q_size, k_size
    r_h = rel_pos_h[_rel_index(sh, rel_pos_h)[:rh]]  # (rh, sh, hd)
    r_w = rel_pos_w[_rel_index(sw, rel_pos_w)[:rw]]
    n, heads, _, hd = q.shape
    r_q = q.reshape(n, heads, rh, rw, hd)
    rel_h = torch.einsum("nahwc,hkc->nahwk", r_q, r_h)
    rel_w = torch.einsum("nahwc,wkc->nahwk", r_q, r_w)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (N, heads, rh, rw, sh, sw)
    return bias.reshape(n, heads, rh * rw, sh * sw)


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
