"""Atomic file writes: a crash at any moment leaves the old file or the new one, never half.

Every output other stages read back (checkpoints, folds, OOF and prediction maps,
evaluation.json, submission.csv) is written through `atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kit.errors import KitError


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
    finally:
        tmp.unlink(missing_ok=True)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """cv2.imwrite, atomically, with an error that says why it failed."""
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise KitError(f"could not write {path}; is the disk full or the directory read-only?")
