"""Where a fragment's files are, and where a dataset's fragments are: one rule for every command.

A *layout* is one on-disk arrangement of a fragment directory; the competition's is

    <id>/surface_volume/00.tif .. 64.tif   uint16 slices, H×W each
    <id>/mask.png                          papyrus outline (non-zero = papyrus)
    <id>/inklabels.png                     ink labels (train only)
    <id>/ir.png                            infrared photograph (train only)
    <id>/ignore.png                        optional, the kit's: pixels no loss or metric counts

Scroll segments (the layout of the Vesuvius Challenge's segment downloads) and zarr volumes:

    <id>/layers/00.tif .. NN.tif           uint16 or uint8 layers (or .jpg / .png), H×W each
    <id>/<id>_mask.png, <id>_inklabels.png  the outline and the ink labels (train only)
    <id>/<id>_ignore.png                   optional: non-zero pixels count in no loss or metric

    <id>/<name>.zarr                       one zarr array (z, y, x), or an OME-Zarr 0.4/0.5
                                           group whose level 0 is read; same <id>_*.png files

A new arrangement is one `Layout` subclass under `@register`: `why_not` recognises its fragment
directories, `files` names their files. Reading those files stays in `kit.data.fragment`; this
module only looks at names, never at pixels. A dataset may mix layouts. Beside the fragments
(`DATA/segments.csv`, or in the folder of fragments) an optional table fixes the layer window
and order of some fragments (`segment_table`; read by kit.data.fragment, applied by
kit.data.preprocess.layer_window).

A dataset is searched the same way everywhere (`find_fragments`): a directory that is itself a
fragment; a dataset root holding train/ and test/ (the split that was asked for is read); or a
folder of fragment directories. A fragment's id is its directory name: the folds CSV, the
predictions (<id>.png) and the submission rows all key on it, and fragments come sorted by path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

from kit.errors import KitError

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


class FragmentError(KitError, ValueError):
    """Input data that does not match its layout; the message names the file."""


@dataclass(frozen=True)
class FragmentFiles:
    """The files of one fragment as its layout places them.

    `labels` and `ir` are where those files are or would be: test fragments have neither, so
    the reader checks that they exist. None means the layout has no such file at all.
    """

    id: str
    root: Path
    slices: tuple[Path, ...]  # slice z is slices[z]; () when the volume is one zarr array
    mask: Path
    labels: Path | None = None
    ir: Path | None = None
    ignore: Path | None = None  # optional pixels left out of every loss and metric
    volume: Path | None = None  # a zarr array or OME-Zarr group holding all slices
    table: Path | None = None  # the segments.csv that may fix this fragment's layer window
    layout: str = ""  # the name of the layout that found these files

    @property
    def has_labels(self) -> bool:
        return self.labels is not None and self.labels.exists()

    @property
    def has_ir(self) -> bool:
        return self.ir is not None and self.ir.exists()

    @property
    def has_ignore(self) -> bool:
        return self.ignore is not None and self.ignore.exists()


class Layout:
    """One on-disk arrangement of a fragment directory. Subclass it and decorate with `@register`."""

    name: ClassVar[str]
    needs: ClassVar[str]  # what its fragment directory holds, for "no fragment here" errors

    def why_not(self, path: Path) -> str | None:
        """None when `path` is one of this layout's fragments, else why not (names the file)."""
        raise NotImplementedError

    def files(self, path: Path) -> FragmentFiles:
        """The files of fragment directory `path`; FragmentError naming a missing slice file."""
        raise NotImplementedError

    def split_folders(self, root: Path, split: Split) -> list[Path]:
        """Where the `split` fragments of a dataset root may be (they need not exist)."""
        return [root / split]

    def matches(self, path: Path) -> bool:
        return self.why_not(path) is None


LAYOUTS: list[Layout] = []  # tried in order; the first that matches a directory reads it


def register(cls: type[Layout]) -> type[Layout]:
    """Class decorator: make a layout known to `find_fragments` and `Fragment`."""
    LAYOUTS.append(cls())
    return cls


@register
class CompetitionLayout(Layout):
    """The Vesuvius Challenge ink-detection layout (module docstring)."""

    name = "competition"
    needs = "surface_volume/00.tif, 01.tif, ... and mask.png"
    slice_dir = "surface_volume"
    mask_name = "mask.png"
    labels_name = "inklabels.png"
    ir_name = "ir.png"
    ignore_name = "ignore.png"

    def why_not(self, path: Path) -> str | None:
        if (path / self.slice_dir).is_dir():
            return None
        return f"{path / self.slice_dir} is missing: a fragment needs surface_volume/00.tif, 01.tif, ..."

    def files(self, path: Path) -> FragmentFiles:
        return FragmentFiles(
            id=path.name, root=path, slices=numbered_slices(path / self.slice_dir),
            mask=path / self.mask_name, labels=path / self.labels_name, ir=path / self.ir_name,
            ignore=path / self.ignore_name,
        )  # fmt: skip


@register
class SegmentLayout(Layout):
    """A scroll segment: layers/NN.{tif,jpg,png} and <id>_mask.png, ... (module docstring)."""

    name = "segments"
    needs = "layers/00.tif (or .jpg, .png), 01, ... and <id>_mask.png"
    layer_dir = "layers"
    suffixes = (".tif", ".tiff", ".jpg", ".jpeg", ".png")

    def why_not(self, path: Path) -> str | None:
        if (path / self.layer_dir).is_dir():
            return None
        return f"{path / self.layer_dir} is missing: a segment needs layers/00.tif (or .jpg, .png), ..."

    def files(self, path: Path) -> FragmentFiles:
        return FragmentFiles(
            id=path.name, root=path, slices=numbered_slices(path / self.layer_dir, self.suffixes),
            **segment_pngs(path),
        )  # fmt: skip


@register
class ZarrLayout(Layout):
    """A zarr volume: <id>/<name>.zarr (z, y, x) and <id>_mask.png, ... (module docstring)."""

    name = "zarr"
    needs = "one <name>.zarr volume and <id>_mask.png"

    def why_not(self, path: Path) -> str | None:
        found = _zarr_dirs(path)
        if len(found) == 1:
            return None
        if found:
            names = ", ".join(p.name for p in found)
            return f"{path} holds several zarr volumes ({names}): a fragment has one"
        return f"{path} holds no <name>.zarr volume"

    def files(self, path: Path) -> FragmentFiles:
        (volume,) = _zarr_dirs(path)
        return FragmentFiles(
            id=path.name, root=path, slices=(), volume=volume, **segment_pngs(path)
        )


def segment_pngs(path: Path) -> dict[str, Path]:
    """A segment's <id>_mask.png, <id>_inklabels.png and <id>_ignore.png (FragmentFiles fields)."""
    return {
        "mask": path / f"{path.name}_mask.png",
        "labels": path / f"{path.name}_inklabels.png",
        "ignore": path / f"{path.name}_ignore.png",
    }


def _zarr_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.zarr") if p.is_dir())


SEGMENT_TABLE = "segments.csv"
SEGMENT_COLUMNS = ["id", "z_start", "z_end", "reverse"]


def segment_table(path: Path) -> Path | None:
    """The segments.csv for fragment directory `path`: in the folder holding it (a folder of
    fragments) or the one above (a dataset root holding train/ and test/); None when neither."""
    for folder in (path.parent, path.parent.parent):
        if (folder / SEGMENT_TABLE).is_file():
            return folder / SEGMENT_TABLE
    return None


def numbered_slices(
    folder: Path, suffixes: tuple[str, ...] = (".tif", ".tiff")
) -> tuple[Path, ...]:
    """Files 00<suffix> .. NN<suffix> of `folder` in z order; FragmentError on gaps or doubles."""
    if not folder.is_dir():
        raise FragmentError(
            f"{folder} is missing: a fragment needs {folder.name}/00{suffixes[0]}, "
            f"01{suffixes[0]}, ..."
        )
    pattern = re.compile(r"^(\d+)(" + "|".join(map(re.escape, suffixes)) + ")$")
    numbered: dict[int, Path] = {}
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m:
            z = int(m.group(1))
            if z in numbered:
                raise FragmentError(
                    f"{folder} has two files for slice {z}: {numbered[z].name}, {p.name}"
                )
            numbered[z] = p
    if not numbered:
        raise FragmentError(f"{folder} has no slices named 00{suffixes[0]}, 01{suffixes[0]}, ...")
    missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
    if missing:
        raise FragmentError(
            f"{folder} is missing slice(s) {missing[:10]}{'...' if len(missing) > 10 else ''}: "
            f"slices must be numbered 00..{max(numbered):02d} without gaps"
        )
    return tuple(numbered[z] for z in range(len(numbered)))


def layout_of(path: Path) -> Layout:
    """The registered layout that `path` is a fragment of; FragmentError saying what it lacks."""
    reasons = []
    for layout in LAYOUTS:
        reason = layout.why_not(path)
        if reason is None:
            return layout
        reasons.append(reason if len(LAYOUTS) == 1 else f"{reason} ({layout.name} layout)")
    raise FragmentError("; or ".join(reasons))


def fragment_files(path: Path) -> FragmentFiles:
    """The files of fragment directory `path`, in whichever registered layout it is."""
    layout = layout_of(path)
    return replace(layout.files(path), table=segment_table(path), layout=layout.name)


def find_fragments(path: str | Path, split: Split) -> list[Path]:
    """The fragment directories `path` stands for, sorted by path.

    `path` is one fragment; or a dataset root (it holds train/ or test/ folders), whose `split`
    fragments are returned; or a folder of fragment directories. In a folder, hidden directories
    are skipped and any other directory that is no fragment is an error that names what it lacks.
    """
    path = Path(path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not path.is_dir():
        raise FragmentError(f"{path} does not exist: {_PASS}")
    if _is_fragment(path):
        return [path]
    folders = [path]
    if _is_dataset_root(path):
        folders = _split_folders(path, split)
        if not folders:
            raise FragmentError(
                f"{path / split} does not exist: {path} is a dataset directory without {split} "
                f"fragments; {_PASS}"
            )
    found = sorted(
        sub
        for folder in folders
        for sub in folder.iterdir()
        if sub.is_dir() and not sub.name.startswith(".")
    )
    if not any(_is_fragment(sub) for sub in found):
        needs = " or ".join(layout.needs for layout in LAYOUTS)
        raise FragmentError(
            f"{' and '.join(map(str, folders))} holds no fragment (a directory with {needs}); "
            f"{_PASS}"
        )
    for sub in found:
        layout_of(sub)  # a broken fragment is named here, not skipped
    return found


def fragment_path(
    data: str | Path,
    fragment_id: str,
    split: Split = "train",
    *,
    fix: str = "pass the dataset directory that holds it with --data",
) -> Path:
    """The directory of fragment `fragment_id` in `data` (searched as `find_fragments` does)."""
    data = Path(data)
    candidates = [folder / fragment_id for folder in _split_folders(data, split)]
    candidates.append(data / fragment_id)
    if data.name == fragment_id:
        candidates.append(data)
    looked, why = list(dict.fromkeys(candidates)), []
    for candidate in looked:
        if candidate.is_dir():
            try:
                layout_of(candidate)
                return candidate
            except FragmentError as exc:
                why.append(str(exc))
    raise FragmentError(
        f"fragment {fragment_id!r} not found under {data} (looked in "
        f"{' and '.join(map(str, looked))}{': ' + '; '.join(why) if why else ''}); {fix}"
    )


def labelled_fragments(data: str | Path) -> list[Path]:
    """The train fragments of `data` (as `find_fragments`) that have ink labels, sorted by path."""
    files = [fragment_files(p) for p in find_fragments(data, "train")]
    labelled = [f.root for f in files if f.has_labels]
    if not labelled:
        raise FragmentError(
            f"no fragment under {data} has ink labels ({files[0].labels} is missing, and the "
            "same for the others); pass a dataset whose train/ fragments are labelled"
        )
    return labelled


_PASS = "pass a dataset directory (with train/ and test/), a folder of fragments or one fragment"


def _is_fragment(path: Path) -> bool:
    return any(layout.matches(path) for layout in LAYOUTS)


def _split_folders(root: Path, split: Split) -> list[Path]:
    folders = (f for layout in LAYOUTS for f in layout.split_folders(root, split))
    return [f for f in dict.fromkeys(folders) if f.is_dir() and not _is_fragment(f)]


def _is_dataset_root(path: Path) -> bool:
    return any(_split_folders(path, split) for split in SPLITS)
