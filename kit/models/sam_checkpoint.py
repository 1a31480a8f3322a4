"""Load Meta SAM checkpoints (`sam_vit_b_01ec64.pth`, ...) into a tile-resolution SamSegmenter.

Meta's files are flat state dicts with `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`
keys for a 1024-px encoder. Before loading:
- `image_encoder.pos_embed` (1, 64, 64, D) is resized bilinearly to the model's token grid;
- the global-attention blocks' `rel_pos_h/w` (127, head_dim) are resized to 2·tokens−1
  ("interpolate", linear as in SAM's own get_rel_pos; or "crop": keep the central entries, i.e.
  the same distances in pixels, since tiles are native-resolution crops, not downscaled images).
  Windowed blocks keep 2·14−1 = 27 entries: the window size does not depend on the image size.
Then the key sets must match exactly (the kit's own adapter and LoRA parameters excepted, they
are never in Meta files) and every shape must fit; otherwise a KitError names the keys. Nothing
loads half-way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kit.errors import KitError
from kit.models.lora import lora_param_names

SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def _name_keys(keys: list[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: {keys[:limit]}{more}"


def read_sam_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"SAM checkpoint {path} does not exist; pass the path of a Meta .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KitError(f"SAM checkpoint {path} could not be read ({exc})") from exc
    if not isinstance(state, dict) or not any(str(k).startswith(SAM_PARTS) for k in state):
        hint = (
            " (an inkkit run checkpoint? use it with predict/--resume)" if "config" in state else ""
        )
        raise KitError(
            f"{path} is not a Meta SAM checkpoint: no image_encoder.*/prompt_encoder.*/"
            f"mask_decoder.* keys{hint}"
        )
    return state


def describe_sam_state(state: dict[str, torch.Tensor]) -> str:
    """'768-dim, 12 blocks' from a Meta state dict (to name the variant it belongs to)."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    dim = weight.shape[0] if weight is not None else "?"
    return f"{dim}-dim, {len(blocks)} blocks"


def resize_pos_embed(pos: torch.Tensor, tokens: tuple[int, int]) -> torch.Tensor:
    """(1, H, W, D) -> (1, h, w, D), bilinear."""
    if tuple(pos.shape[1:3]) == tokens:
        return pos
    grid = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=tokens, mode="bilinear")
    return grid.permute(0, 2, 3, 1).to(pos.dtype)


def resize_rel_pos(rel: torch.Tensor, length: int, mode: str = "interpolate") -> torch.Tensor:
    """(L, head_dim) -> (length, head_dim); length = 2·tokens−1."""
    if rel.shape[0] == length:
        return rel
    if mode == "crop" and rel.shape[0] > length:
        start = (rel.shape[0] - length) // 2
        return rel[start : start + length]
    out = F.interpolate(rel.T.unsqueeze(0).float(), size=length, mode="linear")
    return out[0].T.to(rel.dtype)


def adapt_sam_state(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *, rel_pos_resize: str
) -> dict[str, torch.Tensor]:
    """Resize pos_embed and rel_pos entries of `state` to the shapes in `target`."""
    out = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        if key == "image_encoder.pos_embed":
            out[key] = resize_pos_embed(value, tuple(target[key].shape[1:3]))
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1:] == target[key].shape[1:]:
            out[key] = resize_rel_pos(value, target[key].shape[0], rel_pos_resize)
    return out


def load_sam_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, rel_pos_resize: str = "interpolate"
) -> None:
    """Strictly load a Meta checkpoint into `model`'s SAM parts (resized to its tile size)."""
    state = read_sam_state(path)
    current = model.state_dict()
    own = lora_param_names(model)
    expected = {k for k in current if k.startswith(SAM_PARTS) and k not in own}
    missing, unexpected = expected - set(state), set(state) - expected
    problems = []
    if missing:
        problems.append(f"missing keys {_name_keys(list(missing))}")
    if unexpected:
        problems.append(f"unexpected keys {_name_keys(list(unexpected))}")
    adapted = adapt_sam_state(
        {k: v for k, v in state.items() if k in expected}, current, rel_pos_resize=rel_pos_resize
    )
    wrong = [
        f"{k} {tuple(v.shape)} vs model {tuple(current[k].shape)}"
        for k, v in adapted.items()
        if v.shape != current[k].shape
    ]
    if wrong:
        problems.append(f"shape mismatches {len(wrong)}: {wrong[:5]}")
    if problems:
        raise KitError(
            f"SAM checkpoint {path} ({describe_sam_state(state)}) does not fit model "
            f"{getattr(model, 'variant', '?')} ({'; '.join(problems)}); check model.variant "
            "(vit_b / vit_l / vit_h) matches the file"
        )
    current.update(adapted)
    model.load_state_dict(current, strict=True)
