"""SAM's encoder attention (issue 15): `model.attention` meta vs sdpa, and Meta's 14-token
windows against windows that divide the token grid.

    PYTHONPATH=. python bench/bench_attention.py [--tile 256] [--batch 2] [--repeats 5]
        [--threads 1] [--device cpu] [--windows 14 16 8] [--modes train infer]

vit_b's encoder as the kit runs it (`SamSegmenter.encode`: adapter, patch embedding, the 12
blocks, neck) at `--tile` px, random weights, 16 slices in. Modes: "train" = forward and
backward of the embedding; "infer" = forward under inference_mode. At 256 px the token grid is
16×16: Meta's 14-token windows pad it to 28×28 in the 8 windowed blocks; 16 (one window) and 8
divide it. Only window 14 fits Meta's pretrained windowed rel_pos (27 entries), so the others
measure what the padding costs, nothing the kit offers. Per mode, every (kernel, window) pair
is timed once per round, the order alternating; ratios against meta at window 14 are taken
within each round and their median reported, with wall and process CPU time (CUDA: wall, bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without install
from kit.models.sam import SamSegmenter
from kit.models.sam_family import SAM_VARIANTS

KERNELS = ("meta", "sdpa")


def encoder(
    window: int, kernel: str, tile: int, device: torch.device, variant: str = "vit_b"
) -> SamSegmenter:
    torch.manual_seed(0)
    spec = dataclasses.replace(SAM_VARIANTS[variant], window_size=window)
    return SamSegmenter(spec, in_channels=16, tile=tile, attention=kernel).to(device)


def measure(
    *, tile: int, batch: int, windows: list[int], modes: list[str], repeats: int,
    device: torch.device, variant: str = "vit_b",
) -> dict:  # fmt: skip
    """{mode: {"<kernel>_w<window>": {ms_per_tile, cpu_ms_per_tile, ratio, cpu_ratio}}}."""
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    x = torch.rand(batch, 16, tile, tile, device=device)
    models = {f"{k}_w{w}": encoder(w, k, tile, device, variant) for w in windows for k in KERNELS}
    base = f"meta_w{windows[0]}"
    out = {}
    for mode in modes:

        def run(model, mode=mode):
            if mode == "train":
                with amp:
                    embedding = model.encode(x)
                embedding.float().square().mean().backward()
            else:
                with torch.inference_mode(), amp:
                    model.encode(x)

        wall: dict[str, list[float]] = {n: [] for n in models}
        cpu: dict[str, list[float]] = {n: [] for n in models}
        for model in models.values():  # warm-up (allocator, kernel selection)
            run(model)
        for r in range(repeats):
            for name in list(models) if r % 2 == 0 else list(models)[::-1]:
                if cuda:
                    torch.cuda.synchronize(device)
                begin, begin_cpu = time.perf_counter(), time.process_time()
                run(models[name])
                if cuda:
                    torch.cuda.synchronize(device)
                wall[name].append((time.perf_counter() - begin) / batch)
                cpu[name].append((time.process_time() - begin_cpu) / batch)

        def ratio(times: dict[str, list[float]], name: str) -> float:
            return statistics.median(b / t for b, t in zip(times[base], times[name], strict=True))

        out[mode] = {
            name: {
                "ms_per_tile": 1000 * statistics.median(wall[name]),
                "cpu_ms_per_tile": 1000 * statistics.median(cpu[name]),
                "ratio": ratio(wall, name),
                "cpu_ratio": ratio(cpu, name),
            }
            for name in models
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--windows", type=int, nargs="+", default=[14, 16, 8])
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    r = measure(tile=args.tile, batch=args.batch, windows=args.windows, modes=args.modes,
                repeats=args.repeats, device=torch.device(args.device))  # fmt: skip
    print(f"vit_b encoder at {args.tile} px, batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads; ratio = meta_w{args.windows[0]} time / this time")  # fmt: skip
    for mode, rows in r.items():
        for name, v in rows.items():
            print(f"{mode:5s} {name:8s} {v['ms_per_tile']:8.1f} ms/tile  ratio {v['ratio']:.2f}"
                  f"  (CPU time {v['cpu_ms_per_tile']:.1f} ms/tile, {v['cpu_ratio']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
