"""Pseudo-labels: the confidence bands, and `kit pseudo-label` writing a dataset `kit train` reads."""

import json

import numpy as np
import pytest

from kit.cli import main
from kit.data.folds import TRAIN_ONLY, load_folds
from kit.data.fragment import Fragment
from kit.data.layout import find_fragments, labelled_fragments
from kit.errors import KitError
from kit.post.pseudo import PseudoStats, pseudo_labels
from kit.provenance import fragment_identity
from kit.run import PredictionDir


def test_bands_split_the_papyrus_into_ink_papyrus_and_ignored():
    prob = np.array([[0, 25, 26, 128, 229, 230, 255, 255]], np.uint8)
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0]], bool)
    labels, ignore = pseudo_labels(prob, mask, ink=0.9, background=0.1)
    # 0.1 -> level 25 (papyrus at or below), 0.9 -> level 230 (ink at or above)
    assert labels.astype(int).tolist() == [[0, 0, 0, 0, 0, 1, 1, 0]]
    assert ignore.astype(int).tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]
    assert not (labels & ignore).any()
    stats = PseudoStats.of(labels, ignore, mask)
    assert stats.ink == pytest.approx(2 / 7) and stats.ignored == pytest.approx(3 / 7)


@pytest.mark.parametrize(
    ("ink", "background", "message"),
    [(0.5, 0.5, "must be below --ink"), (1.2, 0.1, "--ink must be a probability"),
     (0.9, -0.1, "--background must be a probability")],
)  # fmt: skip
def test_bands_out_of_order_or_range_are_refused(ink, background, message):
    with pytest.raises(KitError, match=message):
        pseudo_labels(np.zeros((2, 2), np.uint8), np.ones((2, 2), bool), ink=ink,
                      background=background)  # fmt: skip


def _predict(pred, fragments: list, seed: int = 0) -> dict[str, np.ndarray]:
    """A prediction directory as `kit predict` leaves it: a map per fragment, predict.json."""
    rng = np.random.default_rng(seed)
    out, maps = PredictionDir(pred), {}
    for f in fragments:
        maps[f.id] = rng.integers(0, 256, f.shape, dtype=np.uint8)
        out.write_map(f.id, maps[f.id], [".png"])
    out.write_record({"fragments": {f.id: fragment_identity(f) for f in fragments}})
    return maps


@pytest.mark.parametrize("layout", ["competition", "segments"])
def test_pseudo_label_writes_a_dataset_that_trains_on_the_unlabelled_fragments(tmp_path, layout):
    from kit.data.demo import make_demo_data
    from kit.train.loop import load_fold_data

    data = make_demo_data(tmp_path / "data", seed=0, scale=1 / 48, layout=layout)
    tests = [Fragment(p) for p in find_fragments(data, "test")]
    maps = _predict(tmp_path / "pred", [*tests, Fragment(data / "train" / "1")])
    out = tmp_path / "self"
    args = ["pseudo-label", "--pred", str(tmp_path / "pred"), "--data", str(data),
            "--out", str(out), "--ink", "0.8", "--background", "0.2"]  # fmt: skip
    assert main(args) == 0

    # labelled fragments keep their own labels (a map of one changes nothing), tests gain some
    assert sorted(p.name for p in labelled_fragments(out)) == ["1", "2", "3", "a", "b"]
    assert np.array_equal(
        Fragment(out / "train" / "1").labels(), Fragment(data / "train" / "1").labels()
    )
    for f in tests:
        made = Fragment(out / "train" / f.id)
        prob, mask = maps[f.id], f.mask()
        assert np.array_equal(made.labels(), (prob >= 204) & mask)
        assert np.array_equal(made.ignore(), mask & (prob > 51) & (prob < 204))
        assert np.array_equal(made.read(0, 4, slice(0, 5)), f.read(0, 4, slice(0, 5)))  # linked
    regions = load_folds(out / "folds.csv")
    assert {r.fragment for r in regions if r.fold == TRAIN_ONLY} == {"a", "b"}
    record = json.loads((out / "pseudo.json").read_text())
    assert set(record["fragments"]) == {"a", "b"} and record["ink"] == 0.8

    # a rerun on the same maps keeps the label files (their mtimes are the runs' provenance)
    stamps = {f.id: Fragment(out / "train" / f.id).files.labels.stat().st_mtime_ns for f in tests}
    assert main(args) == 0
    assert stamps == {f.id: Fragment(out / "train" / f.id).files.labels.stat().st_mtime_ns
                      for f in tests}  # fmt: skip

    # every fold trains on them, none holds them out
    fold = load_fold_data(out, 0, out / "folds.csv", progress=False)
    assert {"a", "b"} <= {f.id for f in fold.train}
    for f, ignore in zip(fold.train, fold.train_ignore, strict=True):
        assert (ignore is not None) == (f.id in "ab")
    assert {f.id for f in fold.val} == {"1"}


def test_pseudo_label_refuses_maps_of_changed_fragments(tmp_path, capsys):
    from kit.data.demo import make_demo_data

    data = make_demo_data(tmp_path / "data", seed=0, scale=1 / 48)
    _predict(tmp_path / "pred", [Fragment(p) for p in find_fragments(data, "test")])
    mask = data / "test" / "a" / "mask.png"
    mask.write_bytes(mask.read_bytes())  # a new file: the map is not of it
    args = ["pseudo-label", "--pred", str(tmp_path / "pred"), "--data", str(data),
            "--out", str(tmp_path / "self")]  # fmt: skip
    assert main(args) == 2
    assert "a changed since" in capsys.readouterr().err
    assert not (tmp_path / "self" / "folds.csv").exists()
