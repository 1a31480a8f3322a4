"""Training tiles as uint16 tensors: `TileDataset` and the loader that feeds the device.

Workers read only the tile's window through `kit.data.preprocess.read_window` (never a whole
volume) and return it still as uint16, with the fragment's normalisation stats and the label
window and its ignore window (the pixels no loss counts); normalisation and augmentation happen
batched on the device (`kit.train.step`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kit.config import DataConfig
from kit.data.fragment import Fragment
from kit.data.preprocess import prior_window, read_window


class TileDataset(Dataset):
    """Item i = tile `tiles[i]` = (fragment index, y, x) of size data.tile.

    Returns {"image": uint16 (C, T, T) (C + 1 with a prior attached to the fragments:
    read_window), "label": uint8 (1, T, T), "ignore": uint8 (1, T, T) (1 = counts in no loss;
    only when some fragment has an ignore mask, so that the step knows without reading a
    tensor), "stats": float32 (2,), "tile": int64 (3,) the tile row}. Where
    `skip_image[i]` is true the image is zeros and never read (its embedding is already cached;
    see `kit.models.sam_training`). Labels and ignore masks (2-D, one per fragment; an ignore
    mask None where a fragment has none) are held in memory and shared copy-on-write with forked
    workers; the fragments pickle as paths and reopen their files in each worker.
    """

    def __init__(
        self,
        fragments: Sequence[Fragment],
        labels: Sequence[np.ndarray],
        stats: torch.Tensor,
        tiles: np.ndarray,
        data: DataConfig,
        *,
        ignore: Sequence[np.ndarray | None] | None = None,
        skip_image: np.ndarray | None = None,
    ):
        self.fragments, self.labels, self.stats = list(fragments), list(labels), stats
        self.ignore = list(ignore) if ignore is not None else [None] * len(self.fragments)
        self.tiles, self.data, self.skip_image = tiles, data, skip_image

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index, y, x = (int(v) for v in self.tiles[i])
        t = self.data.tile
        if self.skip_image is not None and self.skip_image[i]:
            image = np.zeros((self.data.in_channels, t, t), dtype=np.uint16)
            fragment = self.fragments[index]
            if fragment.prior is not None:  # the prior is no part of the cached embedding
                image = np.concatenate([image, prior_window(fragment.prior, y, x, t, t)])
        else:
            image = read_window(self.fragments[index], self.data, y, x, t, t)
        item = {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(_label_window(self.labels[index], y, x, t)[None]),
            "stats": self.stats[index],
            "tile": torch.from_numpy(np.asarray(self.tiles[i], dtype=np.int64)),
        }
        if any(m is not None for m in self.ignore):
            ignore = self.ignore[index]
            ignored = (
                np.zeros((t, t), np.uint8) if ignore is None else _label_window(ignore, y, x, t)
            )
            item["ignore"] = torch.from_numpy(ignored[None])
        return item


def _label_window(label: np.ndarray, y: int, x: int, t: int) -> np.ndarray:
    """uint8 (t, t) window of a 2-D label (or bool ignore) map, zero outside it (like
    read_window)."""
    out = np.zeros((t, t), dtype=np.uint8)
    h, w = label.shape
    ys, ye, xs, xe = max(y, 0), min(y + t, h), max(x, 0), min(x + t, w)
    if ys < ye and xs < xe:
        out[ys - y : ye - y, xs - x : xe - x] = label[ys:ye, xs:xe]
    return out


def tile_loader(
    dataset: TileDataset, *, batch_size: int, num_workers: int, device: torch.device
) -> DataLoader:
    """In-order batches (the sampler already shuffled): the k-th batch is the same on resume.

    The loader gets its own generator so that starting an iterator (which draws a worker base
    seed) never advances the global torch RNG: a run resumed mid-epoch starts its iterator at a
    different moment than the uninterrupted run, and must still see the same RNG stream.
    """
    cuda = device.type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=cuda,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
