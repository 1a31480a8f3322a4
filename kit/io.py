"""File writes, all atomic: a crash at any moment leaves the old file or the new one, never half.

Every file the kit writes goes through here (`atomic_path` and the writers below), so every
output another stage reads back (checkpoints, folds, run.json, config.yaml, metrics.csv, OOF and
prediction maps, predict.json, evaluation.json, submission.csv) is whole or absent.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
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
        yield tmp
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise write_failed(path, exc.strerror) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


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


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """cv2.imwrite, atomically, with an error that says why it failed."""
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise write_failed(path, "cv2.imwrite failed: a full disk or a read-only directory?")


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
