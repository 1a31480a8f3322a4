"""Decoder-only epoch of a frozen vit_b SAM at tile 256, with vs without the embedding cache.

Both epochs run the same training steps (forward, loss, backward, AdamW step) over the same
tiles; without the cache every step re-runs the frozen encoder, with a warm cache it does not.

    PYTHONPATH=. python bench/bench_embedding_cache.py [--tiles 16] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from kit.config import Config
from kit.models import build_model, param_groups
from kit.models.embedding_cache import EmbeddingCache, tile_key
from kit.models.losses import segmentation_loss


def epoch(model, optimizer, config, tiles, targets, batch, cache=None) -> float:
    start = time.perf_counter()
    for i in range(0, len(tiles), batch):
        keys = [tile_key("frag", 0, j * 256, 0, 16) for j in range(i, i + batch)]
        x = None if cache is not None and all(k in cache for k in keys) else tiles[i : i + batch]
        out = model(x, cache=cache, cache_keys=keys if cache is not None else None)
        loss = segmentation_loss(out, targets[i : i + batch], config=config.loss)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Config()
    config.data.tile, config.model.variant, config.model.train_mode = 256, "vit_b", "frozen"
    config.train.embedding_cache = True
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(param_groups(model, config))
    tiles = torch.rand(args.tiles, config.data.in_channels, 256, 256)
    targets = (torch.rand(args.tiles, 1, 256, 256) > 0.9).float()
    t_plain = epoch(model, optimizer, config, tiles, targets, args.batch)
    cache = EmbeddingCache()
    t_fill = epoch(model, optimizer, config, tiles, targets, args.batch, cache)
    t_cached = min(
        epoch(model, optimizer, config, tiles, targets, args.batch, cache) for _ in range(3)
    )
    n = args.tiles
    print(f"epoch of {n} tiles, no cache:     {t_plain:8.2f} s ({t_plain / n * 1000:.0f} ms/tile)")
    print(f"epoch filling the cache:      {t_fill:8.2f} s")
    print(f"epoch from the cache:         {t_cached:8.3f} s ({t_cached / n * 1000:.1f} ms/tile)")
    print(f"speed-up:                     {t_plain / t_cached:8.1f}x")
    print(f"cache size: {len(cache)} tiles, {cache.nbytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
