"""Cache of frozen-encoder image embeddings, so decoder-only epochs skip the encoder.

Keys are whatever identifies an augmentation-free tile exactly; use `tile_key(fragment, y, x,
z_start, z_end)`. An augmented tile must never be looked up (its embedding differs). The cache
refuses a model whose adapter or image encoder has trainable parameters: their embeddings would
go stale after the first optimizer step. Memory: prompt_dim·tokens² values per tile, e.g.
256·16·16·4 B = 256 KiB at tile 256 in float32 (pass dtype=torch.float16 to halve it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn

from kit.errors import KitError


def tile_key(fragment: str, y: int, x: int, z_start: int, z_end: int) -> tuple:
    return (fragment, int(y), int(x), int(z_start), int(z_end))


def _check_frozen(model: nn.Module) -> None:
    trainable = [
        n
        for part in ("adapter", "image_encoder")
        for n, p in getattr(model, part).named_parameters(prefix=part)
        if p.requires_grad
    ]
    if trainable:
        raise KitError(
            f"the embedding cache needs a frozen adapter and encoder, but {len(trainable)} "
            f"parameters train (e.g. {trainable[:3]}); use model.train_mode=frozen with "
            "train.embedding_cache=true, or turn the cache off"
        )


class EmbeddingCache:
    """key -> (D, h, w) embedding, stored on `device` as `dtype`."""

    def __init__(self, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        self.dtype, self.device = dtype, torch.device(device)
        self._store: dict[Hashable, torch.Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._store

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def clear(self) -> None:
        self._store.clear()

    def embeddings(
        self, model: nn.Module, x: torch.Tensor | None, keys: Sequence[Hashable]
    ) -> torch.Tensor:
        """(B, D, h, w) float32 embeddings of x (B, C, T, T); missing keys are encoded once."""
        _check_frozen(model)
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        if missing:
            if x is None:
                raise ValueError(f"{len(missing)} keys are not cached and no input was given")
            if x.shape[0] != len(keys):
                raise ValueError(f"{len(keys)} cache keys for a batch of {x.shape[0]}")
            with torch.no_grad():
                fresh = model.encode(x[missing])
            for i, emb in zip(missing, fresh, strict=True):
                self._store[keys[i]] = emb.to(self.device, self.dtype)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        device = x.device if x is not None else next(model.parameters()).device
        return torch.stack([self._store[k] for k in keys]).to(device, torch.float32)
