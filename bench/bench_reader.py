"""Window reads from a fragment of real fragment 2's size: memory touched and time per window.

    PYTHONPATH=. python bench/bench_reader.py [--slices 30] [--windows 20] [--flatten]

Builds sparse uncompressed TIFFs (14830×9506, no data written: zeros on read, a few kB on disk),
then reads random 256×256 windows over all slices through `Fragment.read`. Memory touched is the
minor page faults of the reads × page size; a reader that loads whole slices would touch
slices × 282 MB.

--flatten also measures reading along the surface (data.flatten, kit/data/surface.py) on the
same geometry: the one-off surface map of the fragment (all slices of MAX_BANDS bands of rows:
seconds and peak RSS), then the same windows read through `read_flat` with shifts spanning
±6 slices around a 10-slice window (time and memory touched, against the plain read of the
slices that spans).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

from kit.data.fragment import Fragment

H, W, TILE = 14830, 9506, 256


def make_sparse_fragment(root: Path, slices: int) -> Fragment:
    volume = root / "2" / "surface_volume"
    volume.mkdir(parents=True)
    for z in range(slices):
        tifffile.memmap(volume / f"{z:02d}.tif", shape=(H, W), dtype=np.uint16,
                        photometric="minisblack").flush()  # fmt: skip
    mask = np.zeros((H, W), np.uint8)
    mask[::97, ::89] = 255
    cv2.imwrite(str(root / "2" / "mask.png"), mask)
    return Fragment(root / "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--flatten", action="store_true", help="also time reads along a surface")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        fragment = make_sparse_fragment(Path(tmp), args.slices)
        fragment.read(0, args.slices, slice(0, 1), slice(0, 1))  # open the memory maps
        faults, seconds = [], []
        for _ in range(args.windows):
            y, x = int(rng.integers(0, H - TILE)), int(rng.integers(0, W - TILE))
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            fragment.read(0, args.slices, slice(y, y + TILE), slice(x, x + TILE))
            seconds.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        touched = np.median(faults) * resource.getpagesize() / 2**20
        whole = args.slices * H * W * 2 / 2**20
        print(f"{TILE}×{TILE} window over {args.slices} slices of {H}×{W}: "
              f"median {touched:.1f} MB touched (whole slices: {whole:.0f} MB), "
              f"median {np.median(seconds) * 1e3:.1f} ms per window")  # fmt: skip
        if args.flatten:
            flatten(fragment, args, rng)


def flatten(fragment: Fragment, args: argparse.Namespace, rng: np.random.Generator) -> None:
    from kit.data.surface import read_flat, surface_map

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    start = time.perf_counter()
    surface_map(fragment, reverse=False)
    print(f"surface map of {H}×{W} × {args.slices} slices: {time.perf_counter() - start:.1f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MB "
          f"(before: {rss:.0f} MB)")  # fmt: skip
    z0 = args.slices // 2 - 5
    yy, xx = np.mgrid[:TILE, :TILE]
    results = {"flat": ([], []), "plain": ([], [])}
    for _ in range(args.windows):
        y, x = int(rng.integers(0, H - TILE)), int(rng.integers(0, W - TILE))
        shift = np.rint(6 * np.sin((y + yy) / 400 + (x + xx) / 300)).astype(np.int64)
        for name in results:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            rows, cols = slice(y, y + TILE), slice(x, x + TILE)
            if name == "flat":
                read_flat(fragment, z0, z0 + 10, rows, cols, shift)
            else:
                fragment.read(z0 + shift.min(), z0 + 10 + shift.max(), rows, cols)
            results[name][0].append(time.perf_counter() - start)
            results[name][1].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    for name, (seconds, faults) in results.items():
        touched = np.median(faults) * resource.getpagesize() / 2**20
        print(f"{name:5s} 10-slice window (shifts up to ±6): median {touched:.1f} MB touched, "
              f"{np.median(seconds) * 1e3:.1f} ms per window")  # fmt: skip


if __name__ == "__main__":
    main()
