"""Helpers for the inference tests: tiny synthetic fragments in tmp_path, stand-in models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch
from torch import nn

from kit.config import Config
from kit.data.preprocess import fragment_stats, normalize, read_window
from kit.tiles import add_tile, tile_positions, window_weights


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Reference of the prediction file format: float32 probability -> round(p × 255), uint8."""
    return np.clip(np.rint(prob * np.float32(255)), 0, 255).astype(np.uint8)


def write_fragment(
    root: Path,
    name: str,
    *,
    shape: tuple[int, int] = (70, 53),
    n_slices: int = 6,
    seed: int = 0,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    with_mask: bool = True,
) -> Path:
    """A fragment directory in the competition layout with random uint16 slices."""
    rng = np.random.default_rng(seed)
    path = root / name
    (path / "surface_volume").mkdir(parents=True)
    for z in range(n_slices):
        tifffile.imwrite(
            path / "surface_volume" / f"{z:02d}.tif",
            rng.integers(1000, 60000, shape, dtype=np.uint16),
        )
    if mask is None:
        mask = np.ones(shape, bool)
        mask[:, : shape[1] // 5] = False  # a papyrus-free strip: its tiles are skipped
        mask[shape[0] // 3 : shape[0] // 2, -7:] = False
    if with_mask:
        cv2.imwrite(str(path / "mask.png"), mask.astype(np.uint8) * 255)
    if labels is not None:
        cv2.imwrite(str(path / "inklabels.png"), labels.astype(np.uint8) * 255)
    return path


def small_config(**infer) -> Config:
    config = Config()
    config.data.z_start, config.data.z_end = 1, 5
    config.data.tile, config.data.stride = 16, 8
    config.infer.batch_size = 5
    for key, value in infer.items():
        setattr(config.infer, key, value)
    return config


def naive_predict(model, config, fragment, rows=None) -> np.ndarray:
    """Every tile read alone (no TTA), stitched in memory, no skipping: the reference."""
    h, w = fragment.shape
    t = config.data.tile
    pos = tile_positions((h, w), t, config.infer.stride or config.data.stride, rows=rows)
    stats = fragment_stats(fragment, config.data).as_tensor()[None]
    tiles = []
    for y, x in pos:
        raw = torch.from_numpy(read_window(fragment, config.data, int(y), int(x), t, t))[None]
        with torch.inference_mode():
            tiles.append(torch.sigmoid(model(normalize(raw, stats, config.data)).logits)[0, 0])
    window = window_weights(t, config.infer.window)
    sums, weights = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    for tile, (y, x) in zip(torch.stack(tiles).numpy(), pos, strict=True):
        add_tile(sums, weights, tile, window, int(y), int(x))
    prob = np.divide(sums, weights, out=np.zeros_like(sums), where=weights > 0)
    out = to_uint8(prob) * fragment.mask()
    if rows is not None:
        out[: rows[0]] = 0
        out[rows[1] :] = 0
    return out


class Out:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class IdentityModel(nn.Module):
    """Probability = channel 0 of the input, quantised to k/255 so uint8 output is exact."""

    def forward(self, x: torch.Tensor) -> Out:
        q = torch.round(x[:, :1].clamp(0, 1) * 255) / 255
        return Out(torch.logit(q))


class ConvModel(nn.Module):
    """A fixed random conv: position-dependent context, not equivariant to flips."""

    def __init__(self, channels: int = 4, seed: int = 0, bias: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, 1, 5, padding=2)
        nn.init.constant_(self.conv.bias, bias)

    def forward(self, x: torch.Tensor) -> Out:
        return Out(self.conv(x * 4 - 2))


def tiny_sam_config(seed_name: str = "tiny") -> Config:
    """A from-scratch SAM vit_tiny on 32-pixel tiles: a real kit model that runs in milliseconds."""
    config = Config(name=seed_name)
    config.model.family, config.model.variant = "sam", "vit_tiny"
    config.data.z_start, config.data.z_end = 1, 5
    config.data.tile, config.data.stride = 32, 16
    config.infer.batch_size = 8
    return config


def make_run(root: Path, name: str, config: Config, seed: int) -> Path:
    """A run directory with config.yaml and checkpoints/best.pt of a randomly initialised model."""
    from kit.checkpoint import save_checkpoint
    from kit.config import config_to_dict, save_config
    from kit.models import build_model

    torch.manual_seed(seed)
    model = build_model(config)
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    save_config(config, run / "config.yaml")
    state = {"config": config_to_dict(config), "model": model.state_dict()}
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    return run


def write_oof_run(
    root: Path,
    member: str,
    fold: int,
    regions: list[tuple[str, float, float]],
    data: Path,
    *,
    seed: int,
    noise: float,
) -> Path:
    """A run directory with OOF maps = labels blurred by noise on the held-out rows, 0 elsewhere."""
    import json

    from kit.config import save_config
    from kit.data.folds import Region

    rng = np.random.default_rng(seed)
    run = root / member / f"fold{fold}"
    (run / "oof").mkdir(parents=True)
    config = Config(name=member)
    save_config(config, run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"data": str(data), "fold": fold}))
    lines = ["fragment,fold,row_start,row_end"]
    maps: dict[str, np.ndarray] = {}
    for fragment_id, start, end in regions:
        labels = cv2.imread(str(data / "train" / fragment_id / "inklabels.png"), 0) > 0
        prob = maps.get(fragment_id)
        if prob is None:
            prob = np.zeros(labels.shape, np.uint8)
        r0, r1 = Region(fragment_id, fold, start, end).rows(labels.shape[0])
        value = np.clip(labels * 0.6 + 0.2 + rng.normal(0, noise, labels.shape), 0, 1)
        prob[r0:r1] = np.rint(value[r0:r1] * 255).astype(np.uint8)
        maps[fragment_id] = prob
        lines.append(f"{fragment_id},{fold},{start},{end}")
    for fragment_id, prob in maps.items():
        cv2.imwrite(str(run / "oof" / f"{fragment_id}.png"), prob)
    (run / "oof" / "regions.csv").write_text("\n".join(lines) + "\n")
    return run


def write_train_data(root: Path) -> Path:
    """DATA/train/{1,2} with blobby ink labels."""
    for i, (name, shape) in enumerate([("1", (60, 50)), ("2", (90, 40))]):
        rng = np.random.default_rng(i)
        labels = cv2.GaussianBlur(rng.random(shape), (0, 0), 3) > 0.5
        write_fragment(root / "train", name, shape=shape, labels=labels, n_slices=2, seed=i)
    return root
