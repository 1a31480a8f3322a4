from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from kit.cli import main
from kit.data import layout
from kit.data.folds import Region, write_folds
from kit.data.fragment import Fragment
from kit.data.layout import (
    CompetitionLayout,
    FragmentError,
    FragmentFiles,
    Layout,
    find_fragments,
    fragment_path,
    labelled_fragments,
    layout_of,
    numbered_slices,
    register,
)

H, W, Z = 12, 10, 3


def _images(folder: Path, names: list[str], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 65535, (len(names), H, W), dtype=np.uint16)
    folder.mkdir(parents=True)
    for name, image in zip(names, data, strict=True):
        tifffile.imwrite(folder / name, image, photometric="minisblack")
    return data


def _png(path: Path, rows: slice = slice(2, -2)) -> None:
    image = np.zeros((H, W), np.uint8)
    image[rows] = 255
    cv2.imwrite(str(path), image)


def _competition(path: Path, *, labels: bool = True, n: int = Z) -> np.ndarray:
    data = _images(path / "surface_volume", [f"{z:02d}.tif" for z in range(n)])
    _png(path / "mask.png")
    if labels:
        _png(path / "inklabels.png", slice(4, 6))
    return data


@pytest.fixture
def dataset(tmp_path) -> Path:
    """train/{1, 10, 2} (2 unlabelled), test/a, a stray sample_submission.csv."""
    for fid in ("1", "10"):
        _competition(tmp_path / "train" / fid)
    _competition(tmp_path / "train" / "2", labels=False)
    _competition(tmp_path / "test" / "a", labels=False)
    (tmp_path / "sample_submission.csv").write_text("Id,Predicted\na,1 1\n")
    return tmp_path


def _names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_find_fragments_in_a_root_a_split_folder_and_one_fragment(dataset):
    # sorted by path as every command sorted them before: "10" before "2"
    assert _names(find_fragments(dataset, "train")) == ["1", "10", "2"]
    assert _names(find_fragments(dataset, "test")) == ["a"]
    assert _names(find_fragments(dataset / "train", "test")) == ["1", "10", "2"]
    assert find_fragments(dataset / "test", "test") == [dataset / "test" / "a"]
    assert find_fragments(dataset / "train" / "10", "test") == [dataset / "train" / "10"]
    (dataset / "test" / ".ipynb_checkpoints").mkdir()
    assert _names(find_fragments(str(dataset), "test")) == ["a"]


def test_find_fragments_errors_name_the_directory_and_the_fix(dataset, tmp_path):
    with pytest.raises(FragmentError, match=r"nope does not exist: pass a dataset directory"):
        find_fragments(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FragmentError, match=r"empty holds no fragment .*surface_volume/00.tif"):
        find_fragments(tmp_path / "empty", "test")
    # a directory beside real fragments that is none is named, not skipped
    (dataset / "test" / "b").mkdir()
    _png(dataset / "test" / "b" / "mask.png")
    with pytest.raises(FragmentError, match=r"test/b/surface_volume is missing"):
        find_fragments(dataset, "test")
    only_train = tmp_path / "only_train"
    _competition(only_train / "train" / "1")
    with pytest.raises(FragmentError, match=r"only_train/test does not exist: .* without test"):
        find_fragments(only_train, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        find_fragments(dataset, "val")


def test_fragment_path_looks_in_the_split_then_the_folder(dataset):
    assert fragment_path(dataset, "10") == dataset / "train" / "10"
    assert fragment_path(dataset / "train", "10") == dataset / "train" / "10"
    assert fragment_path(dataset / "train" / "10", "10") == dataset / "train" / "10"
    assert fragment_path(dataset, "a", "test") == dataset / "test" / "a"
    with pytest.raises(FragmentError) as err:
        fragment_path(dataset, "7", fix="train on folds of this dataset")
    message = str(err.value)
    assert f"fragment '7' not found under {dataset}" in message
    assert str(dataset / "train" / "7") in message and str(dataset / "7") in message
    assert message.endswith("; train on folds of this dataset")
    (dataset / "train" / "7").mkdir()
    with pytest.raises(FragmentError, match=r"train/7/surface_volume is missing"):
        fragment_path(dataset, "7")


def test_labelled_fragments_skip_unlabelled_ones(dataset, tmp_path):
    assert _names(labelled_fragments(dataset)) == ["1", "10"]
    with pytest.raises(FragmentError, match=r"test/a/inklabels.png is missing"):
        labelled_fragments(dataset / "test")


def test_competition_files_in_z_order(tmp_path):
    _competition(tmp_path / "5", n=12)
    files = CompetitionLayout().files(tmp_path / "5")
    assert files == FragmentFiles(
        id="5", root=tmp_path / "5",
        slices=tuple(tmp_path / "5" / "surface_volume" / f"{z:02d}.tif" for z in range(12)),
        mask=tmp_path / "5" / "mask.png", labels=tmp_path / "5" / "inklabels.png",
        ir=tmp_path / "5" / "ir.png", ignore=tmp_path / "5" / "ignore.png",
    )  # fmt: skip
    assert layout_of(tmp_path / "5").name == "competition"
    fragment = Fragment(tmp_path / "5")
    assert fragment.files == replace(files, layout="competition")
    assert not fragment.has_ir and fragment.has_labels


def test_numbered_slices_with_other_suffixes(tmp_path):
    _images(tmp_path / "layers", ["1.png", "00.jpg", "02.tif"])
    found = numbered_slices(tmp_path / "layers", (".jpg", ".png", ".tif"))
    assert [p.name for p in found] == ["00.jpg", "1.png", "02.tif"]
    with pytest.raises(FragmentError, match=r"missing slice\(s\) \[0, 1\]"):
        numbered_slices(tmp_path / "layers")
    (tmp_path / "layers" / "02.tif").unlink()
    with pytest.raises(FragmentError, match=r"layers has no slices named 00.tif, 01.tif"):
        numbered_slices(tmp_path / "layers")
    with pytest.raises(FragmentError, match=r"nope is missing: a fragment needs nope/00.tif"):
        numbered_slices(tmp_path / "nope")


class _Planes(Layout):
    """A toy layout: planes/NN.tif, <id>_mask.png, <id>_inklabels.png."""

    name = "planes"
    needs = "planes/00.tif, ... and <id>_mask.png"

    def why_not(self, path):
        return None if (path / "planes").is_dir() else f"{path / 'planes'} is missing"

    def files(self, path):
        return FragmentFiles(
            id=path.name, root=path, slices=numbered_slices(path / "planes"),
            mask=path / f"{path.name}_mask.png", labels=path / f"{path.name}_inklabels.png",
        )  # fmt: skip


def _planes(path: Path) -> np.ndarray:
    data = _images(path / "planes", [f"{z:02d}.tif" for z in range(5)], seed=1)
    _png(path / f"{path.name}_mask.png")
    _png(path / f"{path.name}_inklabels.png", slice(3, 4))
    return data


def test_a_new_layout_is_one_registered_class(dataset, monkeypatch):
    seg = dataset / "train" / "20230101"
    data = _planes(seg)
    with pytest.raises(FragmentError, match=r"20230101/surface_volume is missing"):
        find_fragments(dataset, "train")  # unknown until registered

    monkeypatch.setattr(layout, "LAYOUTS", list(layout.LAYOUTS))
    assert register(_Planes) is _Planes
    assert _names(find_fragments(dataset, "train")) == ["1", "10", "2", "20230101"]
    assert _names(labelled_fragments(dataset)) == ["1", "10", "20230101"]
    assert fragment_path(dataset, "20230101") == seg
    fragment = Fragment(seg)
    assert (fragment.id, fragment.shape, fragment.n_slices) == ("20230101", (H, W), 5)
    np.testing.assert_array_equal(fragment.read(1, 4, slice(2, 9), slice(0, 7)), data[1:4, 2:9, :7])
    assert fragment.labels().sum() == W and fragment.mask().sum() == (H - 4) * W
    assert fragment.ir() is None and not fragment.has_ir
    (seg / "20230101_mask.png").unlink()
    with pytest.raises(FragmentError, match=r"20230101_mask.png is missing"):
        Fragment(seg)
    with pytest.raises(
        FragmentError,
        match=r"surface_volume is missing: .*\(competition layout\); or .*layers is missing: a "
        r"segment needs .*\(segments layout\); or .*holds no <name>.zarr volume \(zarr layout\); "
        r"or .*planes is missing \(planes layout",
    ):
        layout_of(dataset / "test")


def test_fold_data_names_the_folds_file_and_the_fix(dataset, tmp_path):
    from kit.errors import KitError
    from kit.train.loop import load_fold_data

    folds = tmp_path / "folds.csv"
    write_folds([Region("1", 0, 0.0, 1.0), Region("9", 1, 0.0, 1.0)], folds)
    with pytest.raises(KitError) as err:
        load_fold_data(dataset, 0, folds, progress=False)
    assert "fragment '9' not found" in str(err.value)
    assert f"{folds} names it; write a split for this dataset: python -m kit folds --data" in str(
        err.value
    )
    write_folds([Region("1", 0, 0.0, 1.0), Region("2", 1, 0.0, 1.0)], folds)
    with pytest.raises(KitError, match=r"train/2/inklabels.png is missing: cannot train"):
        load_fold_data(dataset, 0, folds, progress=False)
    with pytest.raises(KitError, match=r"train/2/inklabels.png is missing: fold 1 holds out rows"):
        load_fold_data(dataset / "train", 1, folds, progress=False)  # checked before training
    write_folds([Region("1", 0, 0.0, 1.0), Region("10", 1, 0.0, 1.0)], folds)
    data = load_fold_data(dataset / "train", 1, folds, progress=False)
    assert [f.path for f in data.train] == [dataset / "train" / "1"]


def test_cli_lists_fragments(dataset, capsys):
    assert main(["fragments", "--data", str(dataset)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:4] for line in lines] == [
        ["1", "competition", "3 slices", "labels"],
        ["10", "competition", "3 slices", "labels"],
        ["2", "competition", "3 slices", "no labels"],
    ]
    assert main(["fragments", "--data", str(dataset / "nope"), "--split", "test"]) == 2
    assert "nope does not exist" in capsys.readouterr().err
