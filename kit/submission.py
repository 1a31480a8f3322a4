"""submission.csv: `Id,Predicted`, one row per test fragment, Predicted = RLE of the ink map.

`validate_submission` checks a file against the test fragments the way the competition scores
it (ids, header, run validity, bounds from each fragment's size) and raises SubmissionError with
the reason and the id. `write_submission` writes atomically, in sample_submission.csv's id order.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from kit import rle
from kit.errors import KitError
from kit.io import read_csv, write_csv

HEADER = ["Id", "Predicted"]
# Real RLE strings run to tens of MB; csv's default 128 kB field limit would reject them.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class SubmissionError(KitError, ValueError):
    """A submission that the competition would reject; the message names the file and the id."""


def read_submission(path: str | os.PathLike) -> dict[str, str]:
    """{id: rle} in file order; checks the header, empty and duplicate ids, row lengths."""
    path = Path(path)
    rows: dict[str, str] = {}
    for line, row in read_csv(path, HEADER, SubmissionError, missing=""):
        if len(row) != 2:
            raise SubmissionError(f"{path} line {line}: expected 2 values (Id,Predicted)")
        fid, text = row[0].strip(), row[1]
        if not fid:
            raise SubmissionError(f"{path} line {line}: empty Id")
        if fid in rows:
            raise SubmissionError(f"{path} line {line}: id {fid} appears twice")
        rows[fid] = text
    return rows


def fragment_shapes(test_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{fragment id: (H, W)} of the test fragments of test_dir (`kit.data.layout.find_fragments`)."""
    from kit.data.fragment import Fragment
    from kit.data.layout import find_fragments

    return {p.name: Fragment(p).shape for p in find_fragments(test_dir, "test")}


def validate_submission(csv_path: str | os.PathLike, test_dir: str | os.PathLike) -> dict[str, int]:
    """Check a submission against the fragments under test_dir; returns {id: ink pixels}.

    Rejects: a header other than Id,Predicted; ids missing, extra or repeated; runs that are
    odd-length, non-positive, unsorted, overlapping or past the fragment's last pixel.
    """
    rows = read_submission(csv_path)
    shapes = fragment_shapes(test_dir)
    missing = sorted(set(shapes) - set(rows))
    extra = sorted(set(rows) - set(shapes))
    if missing or extra:
        raise SubmissionError(
            f"{csv_path}: ids differ from the test fragments in {test_dir}: "
            f"missing {missing}, unexpected {extra}"
        )
    ink = {}
    for fid, text in rows.items():
        h, w = shapes[fid]
        try:
            _, lengths = rle.parse(text, h * w)
        except rle.RLEError as exc:
            raise SubmissionError(f"{csv_path}: id {fid} ({h}×{w}): {exc}") from exc
        ink[fid] = int(lengths.sum())
    return ink


def write_submission(
    rows: Mapping[str, str] | Iterable[tuple[str, str]],
    path: str | os.PathLike,
    *,
    sample: str | os.PathLike | None = None,
) -> Path:
    """Write {id: rle} as submission.csv atomically.

    Rows follow the id order of `sample` (a sample_submission.csv) when it exists, else sorted
    ids; ids absent from the sample are an error, as the competition would reject them.
    """
    rows = dict(rows)
    order = sorted(rows)
    if sample is not None and Path(sample).is_file():
        sample_ids = list(read_submission(sample))
        unknown = sorted(set(rows) - set(sample_ids))
        if unknown:
            raise SubmissionError(
                f"ids {unknown} are not in {sample}, and the competition rejects ids it does not "
                "list: pass the sample_submission.csv of this test set (or take those fragments "
                "out of the test directory)"
            )
        absent = [i for i in sample_ids if i not in rows]
        if absent:  # the competition scores every id of the sample: never drop one silently
            raise SubmissionError(
                f"{sample} lists ids {absent} that have no prediction: put those fragments in "
                "the test directory (or pass the sample_submission.csv of this test set)"
            )
        order = sample_ids
    path = Path(path)
    write_csv(path, HEADER, ((i, rows[i]) for i in order))
    return path
