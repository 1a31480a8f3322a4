"""Input adapters: C normalised channels (B, C, T, T) in [0, 1] -> SAM's 3-channel image frame.

Every adapter returns a (B, 3, S, S) image still in the [0, 1] frame; `SamSegmenter` then maps it
to SAM's 0-255 frame and applies Meta's pixel mean/std, exactly as SAM's own preprocessing does,
so a pretrained encoder sees the statistics it was trained on when the adapter is at its init.

- "conv1x1": a learned 1×1 conv initialised to the channel average (C=1, the IR mode, replicates
  the single channel into R, G and B).
- "stem3d": the same average plus a small 3D conv over (depth, y, x) whose last layer starts at
  zero, so it begins as "conv1x1" and learns depth patterns (ink lies on a wandering surface).
- "mosaic": no parameters; the C slices are tiled into a ceil(√C)×ceil(√C) grid at full
  resolution (S = g·T). The encoder then runs on g² times the tokens (≥ g² the compute, g⁴ in the
  global-attention blocks: 16× and more for C=16); the mask logits of the g² cells are averaged
  back to one (T, T) map. A comparison baseline, not a default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAverage(nn.Module):
    """1×1 conv C -> 3 initialised to the mean over channels."""

    scale = 1  # output side S = scale · T

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, 3, kernel_size=1)
        nn.init.constant_(self.proj.weight, 1.0 / in_channels)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, T) -> (B, 3, T, T)."""
        return self.proj(x)

    def map_points(
        self, coords: torch.Tensor, labels: torch.Tensor, tile: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt points from the tile frame to the encoder frame (identity here)."""
        return coords, labels

    def fold(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) encoder-frame logits -> (B, 1, T, T) tile-frame logits."""
        return logits


class Stem3d(ChannelAverage):
    """Channel average + a zero-initialised 3D conv branch over (depth, y, x)."""

    def __init__(self, in_channels: int, width: int = 4) -> None:
        super().__init__(in_channels)
        self.stem = nn.Sequential(
            nn.Conv3d(1, width, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv3d(width, width, kernel_size=3, padding=1),
            nn.GELU(),
        )
        self.out = nn.Conv2d(width, 3, kernel_size=1)
        nn.init.zeros_(self.out.weight)  # starts exactly as the channel average
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, T) -> (B, 3, T, T)."""
        depth = self.stem(x.unsqueeze(1)).mean(dim=2)  # (B, width, T, T)
        return self.proj(x) + self.out(depth)


class Mosaic(ChannelAverage):
    """Slices tiled into a g×g grid at full resolution; no parameters."""

    def __init__(self, in_channels: int) -> None:
        nn.Module.__init__(self)
        self.in_channels = in_channels
        self.scale = math.ceil(math.sqrt(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, T) -> (B, 3, g·T, g·T), empty cells zero."""
        b, c, t, _ = x.shape
        g = self.scale
        x = F.pad(x, (0, 0, 0, 0, 0, g * g - c))
        grid = x.view(b, g, g, t, t).permute(0, 1, 3, 2, 4).reshape(b, 1, g * t, g * t)
        return grid.expand(-1, 3, -1, -1)

    def _offsets(self, tile: int, device: torch.device) -> torch.Tensor:
        cells = torch.arange(self.in_channels, device=device)
        return torch.stack([cells % self.scale, cells // self.scale], dim=1).float() * tile

    def map_points(
        self, coords: torch.Tensor, labels: torch.Tensor, tile: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 2) tile-frame (x, y) points -> (B, C·N, 2): the same point in every slice cell."""
        b = coords.shape[0]
        shifted = coords[:, None] + self._offsets(tile, coords.device)[None, :, None, :]
        return shifted.reshape(b, -1, 2), labels.repeat(1, self.in_channels)

    def fold(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, g·T, g·T) -> (B, 1, T, T): mean over the cells that hold a slice."""
        b, _, s, _ = logits.shape
        g = self.scale
        t = s // g
        cells = logits.view(b, g, t, g, t).permute(0, 1, 3, 2, 4).reshape(b, g * g, t, t)
        return cells[:, : self.in_channels].mean(dim=1, keepdim=True)


def build_adapter(name: str, in_channels: int) -> ChannelAverage:
    """`name` in kit.models.sam_family.ADAPTERS (checked with the config)."""
    if name == "stem3d":
        return Stem3d(in_channels)
    if name == "mosaic":
        return Mosaic(in_channels)
    return ChannelAverage(in_channels)
