"""The SAM family's training hooks: the frozen encoder's embedding cache and point prompts.

Made by `kit.models.training_hooks` for `model.family: sam`. With `train.embedding_cache` a
tile's embedding is computed once and looked up by `tile_key` afterwards, so tiles must be the
plain grid tiles (`plain_tiles`: no jitter, no augmentation) and cached ones need not be read.
With `model.prompt: points` each step's prompts are sampled from its augmented labels (on the
current model's errors for `point_sampling: error`), drawn with the augmentation generator after
augmentation; inference stays prompt-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kit.config import Config
from kit.models.embedding_cache import EmbeddingCache, tile_key
from kit.models.prompts import Prompts, training_prompts
from kit.models.registry import ForwardKwargs, TrainingHooks
from kit.models.sam_family import cache_ignores


class SamTrainingHooks(TrainingHooks):
    def __init__(
        self,
        config: Config,
        model: nn.Module,
        *,
        fragments: Sequence[str],
        n_tiles: int,
        device: torch.device,
    ) -> None:
        self.config, self.model, self.fragments = config, model, list(fragments)
        self.n_tiles = n_tiles
        self.cache = EmbeddingCache(device=str(device)) if config.train.embedding_cache else None
        self.plain_tiles = self.cache is not None
        self.last_points = None

    def notes(self) -> list[str]:
        if self.cache is None:
            return []
        notes = []
        ignored = cache_ignores(self.config)
        if ignored:
            notes.append(
                "embedding cache: tiles are neither jittered nor augmented, so each tile's "
                f"embedding is computed once; ignoring {', '.join(ignored)} (set them to 0/false "
                "to silence this note)"
            )
        pe = self.model.prompt_encoder
        h, w = pe.image_embedding_size
        per_tile = pe.embed_dim * h * w * 4
        n = self.n_tiles
        notes.append(
            f"embedding cache: at most {n} tiles × {pe.embed_dim}×{h}×{w} × 4 B = "
            f"{n * per_tile / 2**20:.1f} MiB on {self.cache.device}"
        )
        return notes

    def cached(self, tiles: np.ndarray) -> np.ndarray | None:
        keys = self._keys(tiles)
        return None if keys is None else np.array([k in self.cache for k in keys], dtype=bool)

    def step_kwargs(
        self, x: Tensor, y: Tensor, tiles: Tensor | None, *, generator: torch.Generator
    ) -> ForwardKwargs:
        keys = self._keys(tiles)
        prompts = self._prompts(x, y, keys, generator)

        def kwargs(part: slice) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if keys is not None:
                out.update(cache=self.cache, cache_keys=keys[part])
            if prompts is not None:
                out["prompts"] = Prompts(*(p[part] if p is not None else None for p in prompts))
            return out

        return kwargs

    def eval_kwargs(self, tiles: Tensor | None) -> dict[str, Any]:
        return self._lookup(self._keys(tiles))

    def reset(self) -> None:
        if self.cache is not None:  # the run encodes its tiles itself, as an unbudgeted one would
            self.cache.clear()
            self.cache.hits = self.cache.misses = 0

    def _keys(self, tiles: np.ndarray | Tensor | None) -> list[tuple] | None:
        """tile_key of each (fragment index, y, x) row, or None without a cache (or tiles)."""
        if self.cache is None or tiles is None:
            return None
        d = self.config.data
        rows = torch.as_tensor(tiles).reshape(-1, 3).tolist()
        return [tile_key(self.fragments[f], y, x, d.z_start, d.z_end) for f, y, x in rows]

    def _lookup(self, keys: list[tuple] | None) -> dict[str, Any]:
        return {"cache": self.cache, "cache_keys": keys} if keys is not None else {}

    def _prompts(
        self, x: Tensor, y: Tensor, keys: list | None, generator: torch.Generator
    ) -> Prompts | None:
        """Point prompts for `model.prompt: points` (a training experiment), else None."""
        if self.config.model.prompt != "points":
            return None
        pred = None
        if self.config.model.point_sampling == "error":  # points on the current model's errors
            with torch.no_grad():
                pred = self.model(x, **self._lookup(keys)).logits
        prompts = training_prompts(self.config.model, y, pred_logits=pred, generator=generator)
        self.last_points = (prompts.coords, prompts.labels)
        return prompts
