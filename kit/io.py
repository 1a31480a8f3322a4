"""File writes, all atomic: a crash at any moment leaves the old file or the new one, never half.

Every file the kit writes goes through here (`atomic_path` and the writers below), so every
output another stage reads back (checkpoints, folds, run.json, config.yaml, metrics.csv, OOF and
prediction maps, predict.json, evaluation.json, submission.csv) is whole or absent.

Scratch files are here too (`scratch_array`): disk-backed working memory for what is too big to
hold (decoded JPEG/PNG layers, the maps an ensemble averages), unlinked from the start, so
nothing is left behind even by a kill. `$INKKIT_SCRATCH` says where (default: the temp dir).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from kit.errors import KitError

TEMPORARY = ".*.*.tmp*"  # what atomic_path names its temporaries (glob)
# A write that fails for want of room (a full disk, a quota, a file-size limit): a KitError
# naming the file, never a traceback.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_previous: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers pick the same format);
    it replaces `path` only when the block finishes without an exception. With `keep_previous`,
    the file it replaces is kept under that name (a kill between the two renames leaves the
    previous file there and no `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with _room_errors(path):
            yield tmp
            if keep_previous is not None and path.exists():
                os.replace(path, keep_previous)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _room_errors(path: Path) -> Iterator[None]:
    """A write that fails for want of room becomes write_failed(path): one line, no traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise write_failed(path, exc.strerror) from exc
        raise


def write_failed(path: str | os.PathLike, why: str) -> KitError:
    """The error for a write that did not happen: the file, why, and what to do."""
    return KitError(
        f"could not write {path} ({why}): free disk space or write to another directory, then rerun"
    )


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed writer left under `folder` (only call it where no other
    process is writing); returns what was removed."""
    removed = sorted(p for p in Path(folder).rglob(TEMPORARY) if p.is_file())
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def write_png(path: str | os.PathLike, image: np.ndarray, params: list[int] = ()) -> None:
    """cv2.imwrite, atomically, with an error that says why it failed (the suffix picks the
    format: a .jpg path with `params` [cv2.IMWRITE_JPEG_QUALITY, q] writes a JPEG)."""
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image, list(params)):
            raise write_failed(path, "cv2.imwrite failed: a full disk or a read-only directory?")


def write_png_if_changed(path: str | os.PathLike, image: np.ndarray) -> bool:
    """write_png unless `path` already holds exactly this PNG (its mtime then stays, so the
    provenance of what was made from it stays too); True when it wrote."""
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise write_failed(path, "cv2.imencode failed")
    data = encoded.tobytes()
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save, atomically (the path keeps its name: give it the .npy suffix)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, record: dict) -> None:
    """`record` as indented JSON, atomically."""
    write_text(path, json.dumps(record, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A small JSON record of the kit ({} when absent); a broken one is a KitError."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise KitError(f"{path} is not valid JSON ({exc}); delete it or fix it") from exc


def write_torch(path: str | os.PathLike, obj, *, keep_previous: Path | None = None) -> None:
    """torch.save, atomically and fsynced before the rename: after a power loss the new name
    must not point at unwritten data. `keep_previous`: see atomic_path."""
    import torch

    with atomic_path(path, keep_previous=keep_previous) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch's zip writer: "... file write failed" (a full disk)
            if "write failed" not in str(exc):
                raise
            raise write_failed(path, str(exc).splitlines()[0]) from exc
        f.flush()
        os.fsync(f.fileno())


def write_csv(path: str | os.PathLike, header: list[str], rows: Iterable) -> None:
    """A CSV with `header` and `rows` (iterables of values), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_figure(path: str | os.PathLike, fig, **savefig) -> None:
    """Save a matplotlib figure (format from the suffix) atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig)
    finally:
        plt.close(fig)


def write_tiff(path: str | os.PathLike, image: np.ndarray, **options) -> None:
    """tifffile.imwrite, atomically (options pass through, e.g. photometric)."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, **options)


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def link(target: str | os.PathLike, path: str | os.PathLike) -> None:
    """`path` becomes a symbolic link to `target` (absolute), replacing what `path` was, in one
    rename: a dataset that points at big inputs (slices, volumes) instead of copying them."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise KitError(f"{path} is a directory, not a link: remove it or write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(Path(target).resolve(), tmp)
    os.replace(tmp, path)


def read_csv(path: str | os.PathLike, header: list[str], error: type[KitError], *, missing: str):
    """[(line number, row)] of a CSV whose first line is exactly `header` (blank rows skipped);
    `error` (a KitError class) names the file: `missing` is the fix when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist{missing}")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        first = next(reader, None)
        if first is None or [h.strip() for h in first] != header:
            raise error(f"{path}: header must be exactly {','.join(header)}, got {first}")
        return [(line, row) for line, row in enumerate(reader, start=2) if row]


SCRATCH_ENV = "INKKIT_SCRATCH"  # where scratch_array's files go (default: the temp dir)


def scratch_array(shape: tuple[int, ...], dtype) -> np.memmap:
    """A zero-filled writable array backed by an unlinked file in $INKKIT_SCRATCH: its pages can
    leave RSS (`release_rows`) where an in-memory array's cannot. Freed when it is dropped."""
    folder = os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
    if not Path(folder).is_dir():
        raise KitError(f"${SCRATCH_ENV}={folder} is not a directory: create it or unset it")
    with tempfile.TemporaryFile(dir=folder, prefix="inkkit-scratch-") as fh:
        try:  # the map keeps the (unlinked) file alive once the handle is closed
            return np.memmap(fh, dtype=dtype, mode="w+", shape=tuple(shape))
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise write_failed(f"a scratch file in {folder}", exc.strerror) from exc
            raise


def release_rows(array: np.memmap, r0: int, r1: int) -> None:
    """Drop the pages of rows r0..r1 of a memory-mapped array from this process's RSS.

    Mapped pages that were read count in RSS until unmapped, so streaming a whole fragment
    through one map would look like loading it (8.5 GB for 30 slices of fragment 2). Dropping
    them keeps them in the OS page cache (a re-read is a minor fault); the dirty pages of a
    shared writable map are written back as usual.
    """
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise"):
        return
    base = int(array.offset) % mmap.ALLOCATIONGRANULARITY  # data start in the map
    row = int(array.strides[0])
    # The kernel maps cached neighbours of each faulted page too ("fault-around", 64 KiB blocks
    # by default): widen the range to 1 MiB blocks so those are dropped as well.
    block = 1 << 20
    start = (base + r0 * row) // block * block
    end = min(-(-(base + r1 * row) // block) * block, len(mm))
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)


def _tiles(level: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The tile×tile tiles of a 2-D band in row-major order, zero-padded at the edges."""
    for x in range(0, level.shape[1], tile):
        part = level[:, x : x + tile]
        if part.shape != (tile, tile):
            part = np.pad(part, ((0, tile - part.shape[0]), (0, tile - part.shape[1])))
        yield part


def pyramid_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """(H, W) of each level of a map's pyramid: halved (rounding up) until it fits one tile."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > tile:
        shapes.append(tuple(-(-s // 2) for s in shapes[-1]))
    return shapes


def pyramid_band(image: np.ndarray, level: int, r0: int, r1: int) -> np.ndarray:
    """Rows r0..r1 of pyramid level `level` of a uint8 map: the mean of each 2^level-pixel
    square (edge squares over the pixels they hold), rounded half up; reads 2^level·(r1-r0) map
    rows, holding integer sums of one band of the level."""
    f = 1 << level
    h, w = image.shape
    rows = image[r0 * f : min(r1 * f, h)]
    if f == 1:
        return np.ascontiguousarray(rows)
    total = np.uint32 if 255 * f * f < 2**32 else np.uint64
    starts = np.arange(0, w, f)
    sums = np.zeros((r1 - r0, len(starts)), total)
    heights = np.zeros((r1 - r0, 1), total)
    for dy in range(f):  # map rows dy, dy + f, ... of the band: each map row is read once
        part = rows[dy::f]
        sums[: len(part)] += np.add.reduceat(part, starts, axis=1, dtype=total)
        heights[: len(part)] += 1
    counts = heights * np.minimum(f, w - starts).astype(total)[None, :]
    return ((sums + counts // 2) // counts).astype(np.uint8)


def write_tiled_tiff(path: str | os.PathLike, image: np.ndarray, *, tile: int = 256) -> None:
    """A uint8 (H, W) map as a tiled, zlib-compressed BigTIFF with a pyramid in SubIFDs
    (halved per level, `pyramid_band`), atomically. Written band by band (`tile` rows of a level
    at a time), so memory beyond `image` (which may be memory-mapped) is one band."""
    import tifffile

    shapes = pyramid_shapes(image.shape, tile)

    def tiles(level: int):
        for r0 in range(0, shapes[level][0], tile):
            band = pyramid_band(image, level, r0, min(r0 + tile, shapes[level][0]))
            yield from _tiles(band, tile)
            release_rows(image, r0 << level, (r0 + tile) << level)

    options = {"dtype": np.uint8, "tile": (tile, tile), "compression": "zlib",
               "photometric": "minisblack", "metadata": None}  # fmt: skip
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(tiles(0), shape=shapes[0], subifds=len(shapes) - 1, **options)
        for level in range(1, len(shapes)):
            tif.write(tiles(level), shape=shapes[level], subfiletype=1, **options)


def read_map(path: str | os.PathLike) -> np.ndarray | None:
    """A uint8 (H, W) probability map written as PNG or (level 0 of) TIFF; None if unreadable."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            image = tifffile.imread(path, level=0)
        except Exception:
            return None
    else:
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8 or image.ndim != 2:
        return None
    return image


def write_zarr(
    path: str | os.PathLike,
    layers: Iterable[np.ndarray],
    *,
    shape: tuple[int, int, int],
    dtype,
    chunks: tuple[int, int, int],
    ome: str | None = None,
) -> None:
    """A (z, y, x) volume from its layers in z order (one in memory at a time): a plain zarr v3
    array, or with `ome` "0.4" (zarr v2) / "0.5" (zarr v3) an OME-Zarr image whose level 0 is
    the volume. Written beside `path` and renamed into place when whole."""
    import zarr

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.zarr")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _room_errors(path):
            if ome is None:
                array = zarr.create_array(str(tmp), shape=shape, chunks=chunks, dtype=dtype)
            else:
                group = zarr.open_group(str(tmp), mode="w", zarr_format=2 if ome == "0.4" else 3)
                array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype)
                axes = [{"name": a, "type": "space"} for a in "zyx"]
                scale = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
                image = {"version": ome, "axes": axes,
                         "datasets": [{"path": "0", "coordinateTransformations": scale}]}  # fmt: skip
                if ome == "0.4":
                    group.attrs["multiscales"] = [image]
                else:
                    del image["version"]
                    group.attrs["ome"] = {"version": ome, "multiscales": [image]}
            for z, layer in enumerate(layers):
                array[z] = layer
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
