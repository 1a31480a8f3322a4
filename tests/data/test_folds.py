import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.cli import main
from kit.data.folds import (
    STANDARD_FOLDS,
    FoldsError,
    Region,
    folds_of,
    ink_rows_of,
    load_folds,
    make_folds,
    rows_mask,
    training_regions,
    training_row_ranges,
    validation_regions,
    validation_row_ranges,
    write_folds,
)

ROOT = Path(__file__).resolve().parents[2]


def test_repo_folds_csv_is_the_standard_split():
    regions = load_folds(ROOT / "folds.csv")
    assert regions == STANDARD_FOLDS
    assert folds_of(regions) == [0, 1, 2, 3]
    # Fragment 2 of the real data (14830 rows) is cut at row 9456.
    assert [r.rows(14830) for r in regions if r.fragment == "2"] == [(0, 9456), (9456, 14830)]


def test_train_and_validation_regions():
    assert validation_regions(STANDARD_FOLDS, 1) == [Region("2", 1, 0.0, 0.637626)]
    assert {r.fragment for r in training_regions(STANDARD_FOLDS, 1)} == {"1", "2", "3"}
    assert training_row_ranges(STANDARD_FOLDS, 1, "2", 927) == [(591, 927)]
    assert validation_row_ranges(STANDARD_FOLDS, 1, "2", 927) == [(0, 591)]
    assert training_row_ranges(STANDARD_FOLDS, 0, "1", 511) == []
    assert training_row_ranges(STANDARD_FOLDS, 1, "1", 511) == [(0, 511)]
    assert training_row_ranges(STANDARD_FOLDS, 1, "9", 100) == []  # not in the file: unused
    np.testing.assert_array_equal(rows_mask([(1, 3)], 5), [False, True, True, False, False])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.01, 0.99), min_size=1, max_size=5, unique=True),
    st.integers(1, 20000),
    st.integers(0, 5),
)
def test_training_and_validation_rows_never_overlap(cuts, height, fold):
    bounds = [0.0, *sorted(round(c, 6) for c in cuts), 1.0]
    regions = [
        Region("x", i % 3, a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds)) if a < b
    ]
    train = rows_mask(training_row_ranges(regions, fold, "x", height), height)
    val = rows_mask(validation_row_ranges(regions, fold, "x", height), height)
    assert not (train & val).any()
    assert (train | val).all()


def test_write_load_roundtrip(tmp_path):
    regions = [
        Region("1", 0, 0.0, 0.333333),
        Region("1", 1, 0.333333, 1.0),
        Region("b", 2, 0.0, 1.0),
    ]
    assert load_folds(write_folds(regions, tmp_path / "f.csv")) == regions


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("frag,fold,row_start,row_end\n1,0,0,1\n", "header"),
        ("fragment,fold,row_start,row_end\n", "no regions"),
        ("fragment,fold,row_start,row_end\n1,0,0.5,0.2\n", "line 2: rows"),
        ("fragment,fold,row_start,row_end\n1,0,0,1.5\n", "line 2: rows"),
        ("fragment,fold,row_start,row_end\n1,x,0,1\n", "line 2"),
        ("fragment,fold,row_start,row_end\n1,-2,0,1\n", "fold >= 0"),
        ("fragment,fold,row_start,row_end\n1,0,0,0.6\n1,1,0.5,1\n", "overlap"),
    ],
)
def test_load_rejects_bad_files(tmp_path, text, reason):
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(FoldsError, match=reason):
        load_folds(path)
    with pytest.raises(FoldsError, match="does not exist"):
        load_folds(tmp_path / "missing.csv")


def test_make_folds_on_demo_matches_the_standard_split(demo_dir):
    ink_rows = ink_rows_of(demo_dir)
    assert sorted(ink_rows) == ["1", "2", "3"]  # test fragments (no labels) are skipped
    regions = make_folds(ink_rows, 4)
    assert [(r.fragment, r.fold) for r in regions] == [("1", 0), ("2", 1), ("2", 2), ("3", 3)]
    cut = regions[1].row_end
    assert abs(cut - STANDARD_FOLDS[1].row_end) < 0.05


def test_make_folds_balances_ink():
    rng = np.random.default_rng(0)
    ink_rows = {
        "1": rng.integers(0, 50, 300),
        "2": rng.integers(0, 50, 900),
        "3": rng.integers(0, 50, 200),
    }
    for k in (1, 2, 3, 4, 6):
        regions = make_folds(ink_rows, k)
        assert folds_of(regions) == list(range(k))
        per_fold = np.zeros(k)
        for r in regions:
            r0, r1 = r.rows(len(ink_rows[r.fragment]))
            per_fold[r.fold] += ink_rows[r.fragment][r0:r1].sum()
        total = sum(v.sum() for v in ink_rows.values())
        assert per_fold.sum() == total  # every labelled row is in exactly one fold
        assert per_fold.max() <= 1.6 * total / k
    # A single fragment is cut into k bands of equal ink.
    regions = make_folds({"2": np.ones(1000, int)}, 4)
    assert [r.rows(1000) for r in regions] == [(0, 250), (250, 500), (500, 750), (750, 1000)]


def test_make_folds_errors():
    with pytest.raises(FoldsError, match="no labelled"):
        make_folds({}, 4)
    with pytest.raises(FoldsError, match="cannot make 3 folds"):
        make_folds({"1": np.array([0, 0, 5, 0])}, 3)


def test_cli_folds(demo_dir, tmp_path, capsys):
    out = tmp_path / "folds.csv"
    assert main(["folds", "--data", str(demo_dir), "--k", "3", "--out", str(out)]) == 0
    assert folds_of(load_folds(out)) == [0, 1, 2]
    assert "fold 2" in capsys.readouterr().out
    assert main(["folds", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2


def test_train_only_regions_are_trained_by_every_fold_and_held_out_by_none(tmp_path):
    from kit.data.folds import TRAIN_ONLY, folds_of, training_row_ranges, validation_row_ranges

    regions = [Region("1", 0, 0.0, 1.0), Region("2", 1, 0.0, 1.0),
               Region("p", TRAIN_ONLY, 0.0, 1.0)]  # fmt: skip
    assert load_folds(write_folds(regions, tmp_path / "f.csv")) == regions
    assert folds_of(regions) == [0, 1]
    for fold in (0, 1):
        assert training_row_ranges(regions, fold, "p", 100) == [(0, 100)]
        assert validation_row_ranges(regions, fold, "p", 100) == []
