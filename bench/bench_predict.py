"""Inference benchmarks (issue 5): overhead of streamed predict over the model, and peak memory.

    python bench/bench_predict.py ratio  [--height 1536 --width 2048 --slices 16]
        (a) predict_fragment wall time over the pure model forward time on exactly the same
            tiles and batches (inputs already in memory). Target <= 1.10.
    python bench/bench_predict.py memory [--height 14830 --width 9506 --slices 30]
        (b) peak RSS of `python -m kit predict` (child process, /usr/bin/time -v if present,
            else getrusage) on a generated fragment with fragment 2's geometry, vs what a
            load-everything reader needs (computed). Target <= 2.0 GB.

Both use the cpu-demo preset from scratch (random weights: speed and memory do not depend on
them); `memory` pins its model to vit_tiny (patch 8) with the conv1x1 adapter, as when the
figure was first taken: the preset's vit_tiny4 (patch 4) at 256-px tiles has 4096 tokens, whose
global attention alone takes over a GB at batch 8, and this benchmark is about the streaming. Fragments are written uncompressed into a temporary directory (real
data, not sparse holes, so the page cache behaves as with real slices) and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.checkpoint import save_checkpoint
from kit.config import config_to_dict, load_config, save_config
from kit.data.fragment import Fragment
from kit.infer.stitch import plan_tiles, predict_fragment
from kit.models import build_model


def write_fragment(root: Path, height: int, width: int, slices: int) -> Path:
    """Uncompressed uint16 slices (cheap pattern + noise rows) and an elliptic mask (~70 %)."""
    path = root / "test" / "frag"
    (path / "surface_volume").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = rng.integers(8000, 40000, (64, width), dtype=np.uint16)
    for z in range(slices):
        out = tifffile.memmap(
            path / "surface_volume" / f"{z:02d}.tif", shape=(height, width), dtype=np.uint16
        )
        for y in range(0, height, 64):
            n = min(64, height - y)
            out[y : y + n] = rows[:n] + np.uint16(z * 50)
        out.flush()
        del out
    yy, xx = np.ogrid[:height, :width]
    mask = ((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2 <= 1
    cv2.imwrite(str(path / "mask.png"), mask.astype(np.uint8) * 255)
    return path


MEMORY_MODEL = ["model.variant=vit_tiny", "model.adapter=conv1x1", "model.input_gain=0"]


def bench_config(slices: int, overrides: list[str]):
    fixed = ["data.z_start=0", f"data.z_end={slices}", "data.reverse=false", "data.flatten=false"]
    config = load_config("cpu-demo", [*fixed, *overrides])
    return config


def ratio(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = bench_config(args.slices, args.set)
    torch.manual_seed(0)
    model = build_model(config).eval()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        fragment = Fragment(write_fragment(Path(tmp), args.height, args.width, args.slices))
        plan = plan_tiles(config, fragment)
        n, b, t = plan.n_tiles, config.infer.batch_size, config.data.tile
        sizes = [b] * (n // b) + ([n % b] if n % b else [])
        x = torch.rand(b, config.data.in_channels, t, t)
        predict_fragment(model, config, fragment, progress=False)  # warm-up (and page cache)
        forward_s, predict_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                for size in sizes:
                    torch.sigmoid(model(x[:size]).logits)
            forward_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            predict_fragment(model, config, fragment, progress=False)
            predict_s.append(time.perf_counter() - start)
    f, p = min(forward_s), min(predict_s)
    print(f"fragment {args.height}x{args.width}x{args.slices} slices, tile {t} stride "
          f"{config.infer.stride or config.data.stride}, {n} tiles in batches of {b}, "
          f"torch threads {args.threads}")  # fmt: skip
    print(
        f"pure forward {f:.2f} s (min of {args.repeats}), predict_fragment {p:.2f} s: ratio {p / f:.3f}"
    )


def memory(args: argparse.Namespace) -> None:
    h, w, c = args.height, args.width, args.slices
    print(f"disk before: {shutil.disk_usage(args.tmp).free / 1e9:.1f} GB free in {args.tmp}")
    tmp = Path(tempfile.mkdtemp(dir=args.tmp, prefix="bench_predict_"))
    try:
        start = time.perf_counter()
        frag = write_fragment(tmp, h, w, c)
        print(
            f"wrote {c} slices of {h}x{w} ({h * w * c * 2 / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s"
        )
        config = bench_config(c, [*MEMORY_MODEL, *args.set])
        run = tmp / "run"
        (run / "checkpoints").mkdir(parents=True)
        save_config(config, run / "config.yaml")
        torch.manual_seed(0)
        state = {"config": config_to_dict(config), "model": build_model(config).state_dict()}
        save_checkpoint(run / "checkpoints" / "best.pt", state)
        cmd = [sys.executable, "-m", "kit", "predict", "--data", str(frag.parent), "--runs", str(run),
               "--out", str(tmp / "pred"), "--device", "cpu", "--no-progress"]  # fmt: skip
        timer = shutil.which("time") and Path("/usr/bin/time").exists()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        if timer:
            res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env,
                                 cwd=Path(__file__).resolve().parents[1])  # fmt: skip
            line = next(x for x in res.stderr.splitlines() if "Maximum resident set size" in x)
            peak_gb = int(line.split(":")[1]) * 1024 / 1e9
            how = "/usr/bin/time -v"
        else:
            res = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=env,
                cwd=Path(__file__).resolve().parents[1],
            )
            peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
            how = "getrusage(RUSAGE_CHILDREN)"
        wall = time.perf_counter() - start
        if res.returncode != 0:
            print(res.stdout[-2000:], res.stderr[-4000:])
            raise SystemExit(f"predict failed with exit {res.returncode}")
        pred = cv2.imread(str(tmp / "pred" / "frag.png"), cv2.IMREAD_UNCHANGED)
        assert pred.shape == (h, w), pred.shape
        n_tiles = plan_tiles(config, Fragment(frag)).n_tiles
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    everything = h * w * c * (2 + 4) / 1e9
    print(f"predict: {n_tiles} tiles (tile {config.data.tile}, stride "
          f"{config.infer.stride or config.data.stride}), {wall:.0f} s wall, torch threads {args.threads}")  # fmt: skip
    print(f"peak RSS of predict ({how}): {peak_gb:.2f} GB")
    print(f"load-everything reader (computed, not run: > this machine's RAM): {c} slices x {h}x{w} "
          f"as uint16 + float32 = {everything:.1f} GB ({h * w * c * 2 / 1e9:.1f} GB uint16 alone)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["ratio", "memory"])
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--slices", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the fragment is written")
    p.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. data.tile=128")
    args = p.parse_args()
    defaults = {"ratio": (1536, 2048, 16), "memory": (14830, 9506, 30)}[args.what]
    args.height = args.height or defaults[0]
    args.width = args.width or defaults[1]
    args.slices = args.slices or defaults[2]
    (ratio if args.what == "ratio" else memory)(args)


if __name__ == "__main__":
    main()
