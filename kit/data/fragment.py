"""Lazy reader for one fragment directory; where its files are comes from `kit.data.layout`.

Opening a fragment reads only TIFF headers and the PNG headers. `read()` returns the requested
slices × rows × columns as uint16 and touches nothing else: uncompressed contiguous slices are
memory-mapped, striped or tiled (possibly compressed) slices decode only the strips/tiles that
overlap the window. Real fragment 2 is ~18 GB on disk; nothing here ever loads a whole volume.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from kit.data.layout import FragmentError, FragmentFiles, fragment_files

# Real masks and labels are up to 14830×9506 pixels; PIL's decompression-bomb guard is for web
# images, not for scientific scans.
Image.MAX_IMAGE_PIXELS = None


class Fragment:
    """One fragment directory in any registered layout. `id` is its name ("1", "2", "a", ...)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.id = self.path.name
        if not self.path.is_dir():
            raise FragmentError(f"fragment directory {self.path} does not exist")
        self.files: FragmentFiles = fragment_files(self.path)
        self.slice_paths = list(self.files.slices)
        self.shape = _slice_shape(self.slice_paths[0])
        for p in self.slice_paths[1:]:
            shape = _slice_shape(p)
            if shape != self.shape:
                raise FragmentError(
                    f"slice {p} is {shape[0]}×{shape[1]}, but {self.slice_paths[0].name} is "
                    f"{self.shape[0]}×{self.shape[1]}: all slices of a fragment must match"
                )
        for png in (self.files.mask, self.files.labels, self.files.ir):
            if png is not None and png.exists():
                self._check_png_shape(png)
        if not self.files.mask.exists():
            raise FragmentError(f"{self.files.mask} is missing: every fragment needs a mask")
        self._pages: dict[int, _SliceReader] = {}
        self._pid = os.getpid()
        self._mask: np.ndarray | None = None

    def __repr__(self) -> str:
        h, w = self.shape
        return f"Fragment({self.id!r}, {h}×{w}, {self.n_slices} slices)"

    @property
    def n_slices(self) -> int:
        return len(self.slice_paths)

    @property
    def has_labels(self) -> bool:
        return self.files.has_labels

    @property
    def has_ir(self) -> bool:
        return self.files.has_ir

    def mask(self) -> np.ndarray:
        """Papyrus outline, bool (H, W). Cached: it is needed by every tile decision."""
        if self._mask is None:
            mask = _read_png(self.files.mask) > 0
            if not mask.any():
                raise FragmentError(
                    f"{self.files.mask} is empty (all zero): no papyrus to read; fix or re-copy "
                    "the mask (a train fragment may instead be left out of the folds CSV; a test "
                    "fragment may not: the submission needs a row for every test id)"
                )
            self._mask = mask
        return self._mask

    def labels(self) -> np.ndarray | None:
        """Ink labels as uint8 {0, 1} (H, W), or None for test fragments."""
        if not self.has_labels:
            return None
        path = self.files.labels
        labels = _read_png(path)
        values = np.unique(labels)
        if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
            raise FragmentError(
                f"{path} has values {values[:8].tolist()}{'...' if len(values) > 8 else ''}; "
                "ink labels must be binary, {0, 255} or {0, 1}"
            )
        return (labels > 0).astype(np.uint8)

    def ir(self) -> np.ndarray | None:
        """Infrared photograph as uint8 (H, W), or None when the fragment has none."""
        return _read_png(self.files.ir) if self.has_ir else None

    def read(
        self,
        z_start: int,
        z_end: int,
        rows: slice = slice(None),
        cols: slice = slice(None),
    ) -> np.ndarray:
        """Slices z_start..z_end-1 over rows × cols, uint16 (C, h, w). Reads only that window."""
        if not 0 <= z_start < z_end <= self.n_slices:
            raise FragmentError(
                f"slices {z_start}..{z_end - 1} requested from {self.slice_paths[0].parent}, which has "
                f"slices 0..{self.n_slices - 1}; set data.z_start/z_end inside that range"
            )
        h, w = self.shape
        r0, r1, _ = rows.indices(h)
        c0, c1, _ = cols.indices(w)
        out = np.empty((z_end - z_start, max(r1 - r0, 0), max(c1 - c0, 0)), dtype=np.uint16)
        for i, z in enumerate(range(z_start, z_end)):
            out[i] = self._slice(z).read(r0, r1, c0, c1)
        return out

    def _slice(self, z: int) -> _SliceReader:
        # Readers hold file handles and memory maps; a forked DataLoader worker opens its own.
        if self._pid != os.getpid():
            self._pages, self._pid = {}, os.getpid()
        if z not in self._pages:
            self._pages[z] = _SliceReader(self.slice_paths[z])
        return self._pages[z]

    def _check_png_shape(self, png: Path) -> None:
        try:
            with Image.open(png) as im:
                w, h = im.size
        except Exception as exc:
            raise FragmentError(f"{png} is not a readable PNG ({exc}); re-copy the file") from exc
        if (h, w) != self.shape:
            raise FragmentError(
                f"{png} is {h}×{w}, slices in {self.slice_paths[0].parent} are "
                f"{self.shape[0]}×{self.shape[1]}: they must be the same size"
            )

    def __getstate__(self) -> dict:
        # Pickled into DataLoader workers: ship paths, not handles or the cached mask.
        state = self.__dict__.copy()
        state["_pages"], state["_mask"] = {}, None
        return state


class _SliceReader:
    """Window reads from one TIFF page: memory map when possible, else per-strip/tile decode."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            page = self._tif.pages.first
        except Exception as exc:
            raise FragmentError(f"{path} is not a readable TIFF ({exc}); re-copy the file") from exc
        self.page = page
        self.shape = (int(page.imagelength), int(page.imagewidth))
        if page.dtype != np.uint16 or page.samplesperpixel != 1:
            raise FragmentError(
                f"{path} holds {page.dtype} with {page.samplesperpixel} sample(s) per pixel; "
                "surface-volume slices must be single-channel uint16"
            )
        size = path.stat().st_size
        end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
        if end > size:
            raise FragmentError(
                f"{path} is truncated: its header points to byte {end} but the file has {size} "
                "bytes; re-copy the file"
            )
        self._memmap: np.ndarray | None = None
        if page.is_contiguous and page.compression == 1:
            offset = page.dataoffsets[0]
            self._memmap = np.memmap(
                path, dtype=page.dtype.newbyteorder(self._tif.byteorder), mode="r",
                offset=offset, shape=self.shape,
            )  # fmt: skip

    def _drop_pages(self, r0: int, r1: int) -> None:
        # Mapped pages that were read count in this process's RSS until unmapped, so streaming a
        # whole fragment through one map would look like loading it (8.5 GB for 30 slices of
        # fragment 2). Dropping them keeps them in the OS page cache (a re-read is a minor fault).
        mm = getattr(self._memmap, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        base = int(self.page.dataoffsets[0]) % mmap.ALLOCATIONGRANULARITY  # data start in the map
        # The kernel maps cached neighbours of each faulted page too ("fault-around", 64 KiB
        # blocks by default): widen the range to 1 MiB blocks so those are dropped as well.
        block = 1 << 20
        start = (base + r0 * self.shape[1] * 2) // block * block
        end = min(-(-(base + r1 * self.shape[1] * 2) // block) * block, len(mm))
        if end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self._memmap is not None:
            window = np.array(self._memmap[r0:r1, c0:c1], dtype=np.uint16)
            self._drop_pages(r0, r1)
            return window
        page = self.page
        tile_h = int(page.tilelength or page.rowsperstrip or self.shape[0])
        tile_w = int(page.tilewidth or self.shape[1])
        tiles_across = -(-self.shape[1] // tile_w)
        out = np.empty((r1 - r0, c1 - c0), dtype=np.uint16)
        fh = self._tif.filehandle
        for ty in range(r0 // tile_h, -(-r1 // tile_h)):
            for tx in range(c0 // tile_w, -(-c1 // tile_w)):
                index = ty * tiles_across + tx
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
                segment, _, shape = page.decode(data, index)
                if segment is None:
                    raise FragmentError(f"{self.path}: segment {index} could not be decoded")
                segment = segment.reshape(shape[-3], shape[-2])
                y, x = ty * tile_h, tx * tile_w
                ys, ye = max(r0, y), min(r1, y + segment.shape[0])
                xs, xe = max(c0, x), min(c1, x + segment.shape[1])
                out[ys - r0 : ye - r0, xs - c0 : xe - c0] = segment[
                    ys - y : ye - y, xs - x : xe - x
                ]
        return out


def _slice_shape(path: Path) -> tuple[int, int]:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return int(page.imagelength), int(page.imagewidth)
    except Exception as exc:
        raise FragmentError(f"{path} is not a readable TIFF ({exc}); re-copy the file") from exc


def _read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise FragmentError(f"{path} could not be read as an image; re-copy the file")
    return image
