"""Lazy reader for one fragment directory; where its files are comes from `kit.data.layout`.

Opening a fragment reads only headers (TIFF, PNG, JPEG, zarr metadata) and the fragment's row of
segments.csv. `read()` returns the requested slices × rows × columns as uint16 and touches
nothing else; nothing here ever loads a whole volume (real fragment 2 is ~18 GB on disk):

- TIFF layers: uncompressed contiguous ones are memory-mapped, striped or tiled (possibly
  compressed) ones decode only the strips/tiles that overlap the window;
- JPEG/PNG layers cannot be decoded by rows: each is decoded once, on its first read, into an
  unlinked scratch file (`$INKKIT_SCRATCH`, default the temp dir) that is memory-mapped, so
  memory holds one decoded layer at a time, however many layers a band reads;
- a zarr volume (z, y, x) reads only the chunks a window overlaps, keeping the last block of
  chunk rows for the next band (bands overlap and advance by less than a chunk).

Layers may be 8-bit or 16-bit; 8-bit values are scaled by 257 to the 16-bit range the kit
normalises (255 -> 65535), so one normalisation serves both. A volume of mixed bit depths is
refused: its layers would not be on one intensity scale.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from kit.data.layout import SEGMENT_COLUMNS, FragmentError, FragmentFiles, fragment_files
from kit.io import read_csv, release_rows, scratch_array

# Real masks and labels are up to 14830×9506 pixels; PIL's decompression-bomb guard is for web
# images, not for scientific scans.
Image.MAX_IMAGE_PIXELS = None

_TIFF = (".tif", ".tiff")
_BITS = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}
_PIL_BITS = {"L": 8, "I;16": 16, "I;16L": 16, "I;16B": 16, "I": 16}


@dataclass(frozen=True)
class LayerWindow:
    """A fragment's row of segments.csv: its layer window [z_start, z_end) and order."""

    z_start: int
    z_end: int
    reverse: bool


class Fragment:
    """One fragment directory in any registered layout. `id` is its name ("1", "2", "a", ...)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.id = self.path.name
        if not self.path.is_dir():
            raise FragmentError(f"fragment directory {self.path} does not exist")
        self.files: FragmentFiles = fragment_files(self.path)
        if self.files.volume is not None:
            self._volume: _Volume = _ZarrVolume(self.files.volume)
        else:
            self._volume = _LayerStack(self.files.slices)
        self.shape: tuple[int, int] = self._volume.shape[1:]
        for png in (self.files.mask, self.files.labels, self.files.ir, self.files.ignore):
            if png is not None and png.exists():
                self._check_png_shape(png)
        if not self.files.mask.exists():
            raise FragmentError(f"{self.files.mask} is missing: every fragment needs a mask")
        self.window: LayerWindow | None = _table_row(self.files, self.n_slices)
        self._mask: np.ndarray | None = None
        self._ignore: np.ndarray | None = None
        # a first-stage probability map, uint8 (H, W), for members that need one (with_prior)
        self.prior: np.ndarray | None = None

    def __repr__(self) -> str:
        h, w = self.shape
        return f"Fragment({self.id!r}, {h}×{w}, {self.n_slices} slices)"

    @property
    def n_slices(self) -> int:
        return self._volume.shape[0]

    @property
    def layout(self) -> str:
        return self.files.layout

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

    def ignore(self) -> np.ndarray:
        """Pixels that count in no loss and no metric, bool (H, W); all False without an ignore
        mask. Cached, like the mask."""
        if self._ignore is None:
            has = self.files.has_ignore
            self._ignore = _read_png(self.files.ignore) > 0 if has else np.zeros(self.shape, bool)
        return self._ignore

    def scored(self) -> np.ndarray:
        """The pixels a metric counts, bool (H, W): papyrus outside the ignore mask."""
        return self.mask() & ~self.ignore() if self.files.has_ignore else self.mask()

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
                f"slices {z_start}..{z_end - 1} requested from {self._volume.where}, which has "
                f"slices 0..{self.n_slices - 1}; set data.z_start/z_end inside that range"
            )
        h, w = self.shape
        r0, r1, _ = rows.indices(h)
        c0, c1, _ = cols.indices(w)
        return self._volume.read(z_start, z_end, r0, max(r1, r0), c0, max(c1, c0))

    def with_prior(self, prior: np.ndarray | None) -> Fragment:
        """This fragment with a first-stage probability map attached, uint8 (H, W) (None: none),
        a new object sharing the files and caches: `kit.data.preprocess.read_window` then reads
        it as one more channel. Members without a prior keep reading the plain fragment."""
        if prior is not None and prior.shape != self.shape:
            raise FragmentError(
                f"the prior of fragment {self.id} is {prior.shape[0]}×{prior.shape[1]}, the "
                f"fragment ({self.path}) is {self.shape[0]}×{self.shape[1]}"
            )
        other = copy.copy(self)
        other.prior = prior
        return other

    def _check_png_shape(self, png: Path) -> None:
        try:
            with Image.open(png) as im:
                w, h = im.size
        except Exception as exc:
            raise FragmentError(f"{png} is not a readable PNG ({exc}); re-copy the file") from exc
        if (h, w) != self.shape:
            raise FragmentError(
                f"{png} is {h}×{w}, slices in {self._volume.where} are "
                f"{self.shape[0]}×{self.shape[1]}: they must be the same size"
            )

    def __getstate__(self) -> dict:
        # Pickled into DataLoader workers: ship paths, not handles or the cached masks.
        state = self.__dict__.copy()
        state["_mask"] = state["_ignore"] = None
        return state


def _table_row(files: FragmentFiles, n_slices: int) -> LayerWindow | None:
    """This fragment's row of its segments.csv, checked against its slices; None without one."""
    if files.table is None:
        return None
    rows = read_csv(files.table, SEGMENT_COLUMNS, FragmentError, missing="")
    found = [(line, row) for line, row in rows if row[0].strip() == files.id]
    if not found:
        return None
    if len(found) > 1:
        lines = ", ".join(str(line) for line, _ in found)
        raise FragmentError(f"{files.table} has rows for {files.id!r} on lines {lines}: keep one")
    line, row = found[0]
    where = f"{files.table} line {line}"
    if len(row) != len(SEGMENT_COLUMNS):
        raise FragmentError(f"{where}: expected {','.join(SEGMENT_COLUMNS)}, got {row}")
    try:
        z_start, z_end = int(row[1]), int(row[2])
    except ValueError:
        raise FragmentError(
            f"{where}: z_start and z_end must be integers, got {row[1:3]}"
        ) from None
    reverse = {"0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}.get(
        row[3].strip().lower()
    )
    if reverse is None:
        raise FragmentError(f"{where}: reverse must be 0 or 1 (true/false), got {row[3]!r}")
    if not 0 <= z_start < z_end <= n_slices:
        raise FragmentError(
            f"{where}: layers {z_start}..{z_end - 1} are not inside {files.root}'s "
            f"0..{n_slices - 1}; z_end is exclusive"
        )
    return LayerWindow(z_start, z_end, reverse)


class _Volume:
    """What Fragment reads slices from: `shape` (n, H, W), `where` (for messages), `read`."""

    shape: tuple[int, int, int]
    where: Path

    def read(self, z0: int, z1: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """uint16 (z1 - z0, r1 - r0, c1 - c0), 8-bit data scaled by 257."""
        raise NotImplementedError


def _to_uint16(window: np.ndarray, out: np.ndarray) -> None:
    """`window` (uint8 or uint16) into uint16 `out`; 8-bit values × 257 (255 -> 65535)."""
    out[...] = window
    if window.dtype == np.uint8:
        out *= 257


class _LayerStack(_Volume):
    """One image file per slice: TIFF, JPEG or PNG, all of one size and bit depth."""

    def __init__(self, paths: tuple[Path, ...]):
        self.paths, self.where = list(paths), paths[0].parent
        heads = [_layer_header(p) for p in self.paths]
        (h, w, bits), first = heads[0], self.paths[0].name
        for p, (ph, pw, pbits) in zip(self.paths[1:], heads[1:], strict=True):
            if (ph, pw) != (h, w):
                raise FragmentError(
                    f"slice {p} is {ph}×{pw}, but {first} is {h}×{w}: all slices of a fragment "
                    "must match"
                )
            if pbits != bits:
                raise FragmentError(
                    f"slice {p} is {pbits}-bit, but {first} is {bits}-bit: all layers of a "
                    "fragment must have one bit depth; re-export them alike"
                )
        self.shape = (len(self.paths), h, w)
        self._layers: dict[int, _TiffLayer | _DecodedLayer] = {}
        self._pid = os.getpid()

    def read(self, z0: int, z1: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((z1 - z0, r1 - r0, c1 - c0), dtype=np.uint16)
        for i, z in enumerate(range(z0, z1)):
            _to_uint16(self.layer(z).read(r0, r1, c0, c1), out[i])
        return out

    def layer(self, z: int) -> _TiffLayer | _DecodedLayer:
        # Readers hold file handles and memory maps; a forked DataLoader worker opens its own.
        if self._pid != os.getpid():
            self._layers, self._pid = {}, os.getpid()
        if z not in self._layers:
            path = self.paths[z]
            self._layers[z] = (_TiffLayer if path.suffix.lower() in _TIFF else _DecodedLayer)(path)
        return self._layers[z]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_layers": {}}


def _layer_header(path: Path) -> tuple[int, int, int]:
    """(height, width, bits) of one layer file from its header; FragmentError naming it."""
    if path.suffix.lower() in _TIFF:
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                shape, dtype, samples = (
                    (page.imagelength, page.imagewidth),
                    page.dtype,
                    page.samplesperpixel,
                )
        except Exception as exc:
            raise FragmentError(f"{path} is not a readable TIFF ({exc}); re-copy the file") from exc
        if dtype not in _BITS or samples != 1:
            raise FragmentError(
                f"{path} holds {dtype} with {samples} sample(s) per pixel; slices must be "
                "single-channel uint8 or uint16"
            )
        return int(shape[0]), int(shape[1]), _BITS[dtype]
    try:
        with Image.open(path) as im:
            (w, h), mode = im.size, im.mode
    except Exception as exc:
        raise FragmentError(f"{path} is not a readable image ({exc}); re-copy the file") from exc
    if mode not in _PIL_BITS:
        raise FragmentError(
            f"{path} is a {mode} image; layers must be single-channel (grayscale) 8- or 16-bit"
        )
    return h, w, _PIL_BITS[mode]


class _TiffLayer:
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
        size = path.stat().st_size
        end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
        if end > size:
            raise FragmentError(
                f"{path} is truncated: its header points to byte {end} but the file has {size} "
                "bytes; re-copy the file"
            )
        self._memmap: np.memmap | None = None
        if page.is_contiguous and page.compression == 1:
            self._memmap = np.memmap(
                path, dtype=page.dtype.newbyteorder(self._tif.byteorder), mode="r",
                offset=page.dataoffsets[0], shape=self.shape,
            )  # fmt: skip

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self._memmap is not None:
            window = np.array(self._memmap[r0:r1, c0:c1], dtype=self.page.dtype)
            release_rows(self._memmap, r0, r1)
            return window
        page = self.page
        tile_h = int(page.tilelength or page.rowsperstrip or self.shape[0])
        tile_w = int(page.tilewidth or self.shape[1])
        tiles_across = -(-self.shape[1] // tile_w)
        out = np.empty((r1 - r0, c1 - c0), dtype=page.dtype)
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


class _DecodedLayer:
    """A JPEG or PNG layer, decoded once into a memory-mapped scratch file (module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FragmentError(f"{path} could not be decoded; re-copy the file")
        if image.ndim != 2 or image.dtype not in _BITS:
            raise FragmentError(
                f"{path} decodes to {image.dtype} {image.shape}; layers must be single-channel "
                "8- or 16-bit"
            )
        self._memmap = scratch_array(image.shape, image.dtype)
        for r in range(0, len(image), 1024):  # rows written through the map leave RSS as they go
            self._memmap[r : r + 1024] = image[r : r + 1024]
            release_rows(self._memmap, r, r + 1024)
        del image

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        window = np.array(self._memmap[r0:r1, c0:c1])
        release_rows(self._memmap, r0, r1)
        return window


class _ZarrVolume(_Volume):
    """A zarr array (z, y, x), or level 0 of an OME-Zarr 0.4/0.5 multiscale group."""

    CACHE_BYTES = 256 << 20  # largest block of chunk rows kept for the next band

    def __init__(self, path: Path):
        self.where = path
        array = self._open()
        if array.ndim != 3:
            raise FragmentError(
                f"{self._name} is {array.ndim}-D {tuple(array.shape)}; the kit reads (z, y, x) "
                "volumes: export one channel and time point as a 3-D array"
            )
        if np.dtype(array.dtype) not in _BITS:
            raise FragmentError(
                f"{self._name} holds {array.dtype}; volumes must be uint8 or uint16"
            )
        self.shape = tuple(int(s) for s in array.shape)
        self.chunk_rows = int(array.chunks[1])
        self._array, self._pid = array, os.getpid()
        self._block: tuple | None = None  # (z0, z1, c0, c1, row0, data) of the last read
        self._lock = threading.Lock()

    def _open(self):
        import zarr

        try:
            node = zarr.open(store=str(self.where), mode="r")
        except Exception as exc:
            raise FragmentError(f"{self.where} is not a readable zarr ({exc}); re-copy it") from exc
        self._name = str(self.where)
        if isinstance(node, zarr.Array):
            return node
        attrs = node.attrs.asdict()
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise FragmentError(
                f"{self.where} is a zarr group without OME-Zarr multiscales metadata: point the "
                "fragment at one (z, y, x) array or an OME-Zarr image"
            )
        level0 = multiscales[0]["datasets"][0]["path"]
        self._name = f"{self.where}/{level0} (OME-Zarr level 0)"
        try:
            return node[level0]
        except KeyError:
            raise FragmentError(f"{self._name} is missing; re-copy the volume") from None

    def read(self, z0: int, z1: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        with self._lock:
            if self._pid != os.getpid():  # a forked worker opens its own
                self._array, self._block, self._pid = self._open(), None, os.getpid()
            block = self._block
            if not (block and block[:4] == (z0, z1, c0, c1) and block[4] <= r0
                    and r1 <= block[4] + block[5].shape[1]):  # fmt: skip
                block = self._read_block(z0, z1, r0, r1, c0, c1)
            out = np.empty((z1 - z0, r1 - r0, c1 - c0), dtype=np.uint16)
            _to_uint16(block[5][:, r0 - block[4] : r1 - block[4]], out)
            return out

    def _read_block(self, z0, z1, r0, r1, c0, c1) -> tuple:
        """Rows r0..r1 widened to whole chunk rows (kept for the next band) when that is small,
        else exactly r0..r1."""
        ch = self.chunk_rows
        a, b = r0 // ch * ch, min(-(-r1 // ch) * ch, self.shape[1])
        itemsize = np.dtype(self._array.dtype).itemsize
        if (z1 - z0) * (b - a) * (c1 - c0) * itemsize > self.CACHE_BYTES:
            a, b = r0, r1
        try:
            data = np.asarray(self._array[z0:z1, a:b, c0:c1])
        except Exception as exc:
            raise FragmentError(f"{self._name}: rows {a}..{b} could not be read ({exc})") from exc
        self._block = (z0, z1, c0, c1, a, data)
        return self._block

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None, "_block": None, "_lock": None, "_pid": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def _read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise FragmentError(f"{path} could not be read as an image; re-copy the file")
    return image
