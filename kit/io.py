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
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from kit.errors import KitError

# A write that fails for want of room (a full disk, a quota, a file-size limit): a KitError
# naming the file, never a traceback.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# atomic_path's temporary name: .<stem>.<pid>.tmp<suffix>
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp(\.[^.]*)?$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers pick the same format);
    it replaces `path` only when the block finishes without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
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


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of `atomic_path` in `folder` whose writer is gone (a SIGKILL
    mid-write leaves one); returns them. Those of live processes are left alone."""
    folder = Path(folder)
    stale = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


def write_torch(path: str | os.PathLike, obj) -> None:
    """torch.save, atomically and fsynced before the rename: after a power loss the new name
    must not point at unwritten data."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (a full disk) so
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
