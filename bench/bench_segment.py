"""Peak memory of `kit predict` on a scroll segment of fragment 2's size (issue 12).

    python bench/bench_segment.py [--height 14830 --width 9506 --layers 8] [--kind jpg zarr]

Generates one segment of H×W pixels twice: as 8-bit JPEG layers (`<id>/layers/NN.jpg`, each
decoded once into a scratch file by the reader) and as an OME-Zarr 0.4 volume (`<id>/<id>.zarr`,
uint8, chunks 1×256×256, read by chunks). Each layer is generated band by band into one H×W
uint8 array and written before the next (the benchmark never holds the volume either). A
from-scratch `cpu-demo-unet` checkpoint reading exactly those layers (tile 256 as in
bench_predict.py's memory figure, stride 256: a quarter of stride 128's compute on the shared
CPU, and the same band and accumulator sizes; batch 8) predicts each segment in a child process: `/usr/bin/time -v python -m kit predict --format auto`, whose "Maximum resident set
size" is the figure (target <= 2.0 GB each). The map (141 M pixels, above 2**26) is written as a
tiled BigTIFF with a pyramid; the script checks every level is readable. Everything is written
into a temporary directory (--tmp) and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
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
from kit.infer.stitch import plan_tiles
from kit.io import write_png, write_zarr
from kit.models import build_model

ROOT = Path(__file__).resolve().parents[1]
BAND = 1024  # rows generated at a time


def layer(z: int, height: int, width: int) -> np.ndarray:
    """uint8 (H, W): smooth fibre-like waves plus noise, different per layer, made by bands."""
    rng = np.random.default_rng([12, z])
    out = np.empty((height, width), np.uint8)
    x = np.arange(width, dtype=np.float32)[None, :]
    for y0 in range(0, height, BAND):
        y = np.arange(y0, min(y0 + BAND, height), dtype=np.float32)[:, None]
        v = 128 + 50 * np.sin(x / 40 + y / 60 + z) + 20 * np.sin(x / 7 - y / 11)
        v += rng.standard_normal((len(y), width), dtype=np.float32) * 6
        out[y0 : y0 + len(y)] = np.clip(v, 0, 255)
    return out


def write_pngs(path: Path, height: int, width: int) -> None:
    """<id>_mask.png: an ellipse (~78 % papyrus), built by bands."""
    mask = np.zeros((height, width), np.uint8)
    xx = ((np.arange(width) - width / 2) / (width / 2)) ** 2
    for y0 in range(0, height, BAND):
        yy = ((np.arange(y0, min(y0 + BAND, height)) - height / 2) / (height / 2)) ** 2
        mask[y0 : y0 + len(yy)] = (yy[:, None] + xx[None, :] <= 1) * 255
    write_png(path / f"{path.name}_mask.png", mask)


def write_segment(root: Path, kind: str, height: int, width: int, layers: int) -> Path:
    path = root / kind / "test" / "seg"
    path.mkdir(parents=True)
    if kind == "jpg":
        for z in range(layers):
            write_png(path / "layers" / f"{z:02d}.jpg", layer(z, height, width),
                      [cv2.IMWRITE_JPEG_QUALITY, 95])  # fmt: skip
    else:
        write_zarr(path / "seg.zarr", (layer(z, height, width) for z in range(layers)),
                   shape=(layers, height, width), dtype=np.uint8, chunks=(1, 256, 256),
                   ome="0.4")  # fmt: skip
    write_pngs(path, height, width)
    return path


def make_run(root: Path, layers: int, overrides: list[str]) -> tuple[Path, object]:
    config = load_config(
        "cpu-demo-unet",
        ["data.z_start=0", f"data.z_end={layers}", "data.reverse=false", "data.flatten=false", "data.tile=256",
         "data.stride=256", "infer.batch_size=8", *overrides],
    )  # fmt: skip
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(config, run / "config.yaml")
    torch.manual_seed(0)
    state = {"config": config_to_dict(config), "model": build_model(config).state_dict()}
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    return run, config


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def measure(seg: Path, run: Path, out: Path, args) -> tuple[float, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "kit", "predict", "--data",
           str(seg.parent), "--runs", str(run), "--out", str(out), "--device", "cpu",
           "--no-progress", "--format", "auto"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "INKKIT_SCRATCH": str(args.tmp)}
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-4000:])
        raise SystemExit(f"predict failed with exit {res.returncode}")
    line = next(x for x in res.stderr.splitlines() if "Maximum resident set size" in x)
    return int(line.split(":")[1]) * 1024 / 1e9, wall


def check_map(pred: Path, shape: tuple[int, int]) -> str:
    """The map file and its pyramid levels (each decoded once), checked to be of `shape`."""
    if not (pred / "seg.tif").is_file():  # small enough for a PNG (--format auto)
        assert cv2.imread(str(pred / "seg.png"), 0).shape == shape
        return "seg.png"
    with tifffile.TiffFile(pred / "seg.tif") as tif:
        levels = tif.series[0].levels
        assert tif.is_bigtiff and levels[0].shape == shape, (levels[0].shape, shape)
        for level in levels[1:]:
            level.asarray()  # every level decodes
        return f"seg.tif, pyramid levels {[lv.shape for lv in levels]}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--height", type=int, default=14830)
    p.add_argument("--width", type=int, default=9506)
    p.add_argument("--layers", type=int, default=8, help="layers written = slices the model reads")
    p.add_argument("--kind", nargs="+", choices=["jpg", "zarr"], default=["jpg", "zarr"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the segments are written")
    p.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. data.tile=128")
    args = p.parse_args()
    h, w, n = args.height, args.width, args.layers
    tmp = Path(tempfile.mkdtemp(dir=args.tmp, prefix="bench_segment_"))
    args.tmp = tmp
    try:
        run, config = make_run(tmp, n, args.set)
        for kind in args.kind:
            start = time.perf_counter()
            seg = write_segment(tmp, kind, h, w, n)
            written = time.perf_counter() - start
            print(f"{kind}: wrote {n} layers of {h}x{w} ({du(seg):.2f} GB on disk, "
                  f"{n * h * w / 1e9:.2f} GB as uint8) in {written:.0f} s")  # fmt: skip
            tiles = plan_tiles(config, Fragment(seg)).n_tiles
            peak, wall = measure(seg, run, tmp / f"pred_{kind}", args)
            found = check_map(tmp / f"pred_{kind}", (h, w))
            print(f"{kind}: predict {tiles} tiles (tile {config.data.tile}, stride "
                  f"{config.data.stride}, batch {config.infer.batch_size}), {wall:.0f} s wall, "
                  f"torch threads {args.threads}: peak RSS {peak:.2f} GB")  # fmt: skip
            print(f"{kind}: wrote {found} ({du(tmp / f'pred_{kind}'):.3f} GB with the preview)")
            shutil.rmtree(seg.parent.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
