"""SAM vit_b image encoder on CPU: a 256-px tile at native resolution vs upscaled to 1024.

Also times one training step (forward + backward) of the CPU demo models on a batch of 16
tiles of 64 px with 16 slices. Random weights: speed does not depend on them.

    PYTHONPATH=. python bench/bench_sam_encoder.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from segment_anything import build_sam_vit_b

from kit.config import Config
from kit.models import build_model


def _median_seconds(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:  # allocations, oneDNN kernel selection
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encoder_native_vs_upscaled(repeats: int, batch: int) -> tuple[float, float]:
    """Seconds per tile: kit vit_b at tile 256 (16×16 tokens) vs Meta's at 1024 (64×64)."""
    config = Config()
    config.data.tile, config.model.variant = 256, "vit_b"
    native = build_model(config).eval()
    meta = build_sam_vit_b().image_encoder.eval()
    x = torch.rand(batch, config.data.in_channels, 256, 256)
    with torch.inference_mode():
        t_native = _median_seconds(lambda: native.encode(x), repeats) / batch
        image = native.adapter(x[:1])

        def upscaled():
            meta(F.interpolate(image, size=(1024, 1024), mode="bilinear"))

        # ~20x slower: fewer repeats, and a warm-up is negligible next to one call
        t_up = _median_seconds(upscaled, max(1, repeats - 1), warmup=False)
    return t_native, t_up


def demo_train_step(family: str, variant: str, repeats: int) -> float:
    config = Config()
    config.data.tile, config.data.z_start, config.data.z_end = 64, 0, 16
    config.model.family, config.model.variant = family, variant
    config.model.decoder_channels = [64, 32, 16, 16, 16]
    model = build_model(config).train()
    x = torch.rand(16, 16, 64, 64)

    def step():
        out = model(x)
        loss = out.logits.mean() + (out.iou.mean() if out.iou is not None else 0)
        loss.backward()

    return _median_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_native, t_up = encoder_native_vs_upscaled(args.repeats, args.batch)
    print(f"vit_b encoder, 256 native:        {t_native * 1000:8.1f} ms/tile")
    print(f"vit_b encoder, 256 -> 1024:       {t_up * 1000:8.1f} ms/tile")
    print(f"ratio upscaled / native:          {t_up / t_native:8.1f}x")
    for family, variant in (("sam", "vit_tiny"), ("unet", "resnet10t")):
        t = demo_train_step(family, variant, args.repeats)
        print(f"{family} {variant}: fwd+bwd, 16 tiles of 64 px x 16 slices: {t * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
