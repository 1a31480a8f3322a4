"""Scroll segments and zarr volumes: each layout read, 8-bit layers, segments.csv windows and
reversal, ignore masks, provenance, and a dataset mixing the three layouts end to end."""

import shutil
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import zarr

from kit.cli import main
from kit.config import DataConfig
from kit.data.demo import make_demo_data, style_from
from kit.data.fragment import Fragment
from kit.data.layout import FragmentError, find_fragments, layout_of
from kit.data.preprocess import layer_window, read_window
from kit.data.probe import probe_fragments
from kit.io import write_zarr
from kit.provenance import fragment_identity

SCALE = 1 / 48
H, W, Z = 20, 24, 8


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, Path]:
    """The demo dataset (seed 0) in every layout: competition, segments (tif, png, jpg), zarr."""
    root = tmp_path_factory.mktemp("layouts")
    kinds = {"competition": ("competition", "tif"), "segments": ("segments", "tif"),
             "png": ("segments", "png"), "jpg": ("segments", "jpg"), "zarr": ("zarr", "tif")}  # fmt: skip
    return {
        name: make_demo_data(root / name, scale=SCALE, layout=layout, layers=layers)
        for name, (layout, layers) in kinds.items()
    }


def test_demo_layouts_hold_the_same_fragments(demos):
    ref = {p.name: Fragment(p) for p in find_fragments(demos["competition"], "train")}
    window = (slice(20, 90), slice(10, 120))
    for name in ("segments", "png", "jpg", "zarr"):
        for path in find_fragments(demos[name], "train") + find_fragments(demos[name], "test"):
            assert layout_of(path).name == ("zarr" if name == "zarr" else "segments")
        fragments = {p.name: Fragment(p) for p in find_fragments(demos[name], "train")}
        assert sorted(fragments) == ["1", "2", "3"]
        for fid, f in fragments.items():
            assert (f.shape, f.n_slices, f.has_labels, f.has_ir) == (
                ref[fid].shape,
                65,
                True,
                False,
            )
            np.testing.assert_array_equal(f.mask(), ref[fid].mask())
            np.testing.assert_array_equal(f.labels(), ref[fid].labels())
            got = f.read(20, 40, *window).astype(np.int32)
            want = ref[fid].read(20, 40, *window).astype(np.int32)
            # tif and zarr are the same uint16; 8-bit layers are round(v / 257) * 257
            tolerance = {"png": 128, "jpg": 16 * 257}.get(name, 0)
            assert np.abs(got - want).max() <= tolerance, (name, fid)
            if name == "jpg":  # lossy, but close on average
                assert np.abs(got - want).mean() < 3 * 257


def _segment(path: Path, layers: np.ndarray, suffix: str = ".tif") -> Path:
    """A segment directory: layers/NN<suffix>, <id>_mask.png (all papyrus)."""
    (path / "layers").mkdir(parents=True)
    for z, layer in enumerate(layers):
        name = path / "layers" / f"{z:02d}{suffix}"
        if suffix == ".tif":
            tifffile.imwrite(name, layer)
        else:
            assert cv2.imwrite(str(name), layer)
    cv2.imwrite(str(path / f"{path.name}_mask.png"), np.full(layers.shape[1:], 255, np.uint8))
    return path


def _numbered(dtype=np.uint16) -> np.ndarray:
    """Layer z holds z·1000 + row (uint16), or z·20 + row (uint8): each slice is recognisable."""
    step = 1000 if dtype == np.uint16 else 20
    rows = np.arange(H)[None, :, None]
    return (np.arange(Z)[:, None, None] * step + rows + np.zeros((1, 1, W))).astype(dtype)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
def test_8_bit_layers_read_scaled_to_16_bit(tmp_path, suffix):
    layers = _numbered(np.uint8)
    f = Fragment(_segment(tmp_path / "s", layers, suffix))
    got = f.read(0, Z, slice(3, 9), slice(2, 7))
    assert got.dtype == np.uint16
    want = layers[:, 3:9, 2:7].astype(np.int32) * 257
    tolerance = 3 * 257 if suffix == ".jpg" else 0
    assert np.abs(got.astype(np.int32) - want).max() <= tolerance
    if suffix != ".jpg":
        assert (
            Fragment(_segment(tmp_path / "full", np.full((2, 4, 4), 255, np.uint8)))
            .read(0, 2)
            .min()
            == 65535
        )


def test_16_bit_png_layers_and_decoding_once(tmp_path, monkeypatch):
    layers = _numbered()
    f = Fragment(_segment(tmp_path / "s", layers, ".png"))
    decoded = []
    original = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda *a: decoded.append(a[0]) or original(*a))
    for y in range(0, H - 4, 2):  # bands, as predict reads them
        np.testing.assert_array_equal(f.read(2, 6, slice(y, y + 4)), layers[2:6, y : y + 4])
    assert sorted(Path(p).name for p in decoded) == ["02.png", "03.png", "04.png", "05.png"]


def test_jpeg_layers_decode_into_the_scratch_folder(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("INKKIT_SCRATCH", str(scratch))
    f = Fragment(_segment(tmp_path / "s", _numbered(np.uint8), ".jpg"))
    assert f.read(0, 2).shape == (2, H, W)
    assert not list(scratch.iterdir())  # unlinked at once: nothing left, even after a kill
    monkeypatch.setenv("INKKIT_SCRATCH", str(tmp_path / "nope"))
    with pytest.raises(Exception, match=r"INKKIT_SCRATCH=.*nope is not a directory"):
        Fragment(tmp_path / "s").read(2, 3)


@pytest.mark.parametrize("ome", [None, "0.4", "0.5"])
def test_zarr_volumes_plain_and_ome(tmp_path, ome):
    layers = _numbered()
    seg = tmp_path / "z7"
    seg.mkdir()
    write_zarr(seg / "scan.zarr", iter(layers), shape=layers.shape, dtype=np.uint16,
               chunks=(1, 8, 8), ome=ome)  # fmt: skip
    cv2.imwrite(str(seg / "z7_mask.png"), np.full((H, W), 255, np.uint8))
    labels = np.zeros((H, W), np.uint8)
    labels[4:6] = 255
    cv2.imwrite(str(seg / "z7_inklabels.png"), labels)
    assert layout_of(seg).name == "zarr"
    f = Fragment(seg)
    assert (f.id, f.shape, f.n_slices, f.labels().sum()) == ("z7", (H, W), Z, 2 * W)
    for rows in (slice(0, 5), slice(3, 11), slice(9, 20), slice(17, 20)):  # across chunk rows
        np.testing.assert_array_equal(f.read(1, 7, rows, slice(5, 22)), layers[1:7, rows, 5:22])


def test_zarr_reads_only_the_chunks_of_a_window(tmp_path):
    """A (4, 20000, 20000) uint16 volume is 3.2 GB: a 256×256 window allocates about that
    window's chunks, not a layer (800 MB) and not the volume."""
    seg = tmp_path / "big"
    seg.mkdir()
    zarr.create_array(str(seg / "big.zarr"), shape=(4, 20000, 20000), chunks=(1, 256, 256),
                      dtype=np.uint16, fill_value=7)  # fmt: skip
    mask = np.zeros((20000, 20000), np.uint8)
    mask[::1000, ::1000] = 255
    cv2.imwrite(str(seg / "big_mask.png"), mask)
    del mask
    f = Fragment(seg)
    tracemalloc.start()
    window = f.read(0, 4, slice(7000, 7256), slice(4000, 4256))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert window.shape == (4, 256, 256) and (window == 7).all()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB for a 2 MB window"


def test_mixed_bit_depth_is_refused(tmp_path):
    seg = _segment(tmp_path / "s", _numbered())
    (seg / "layers" / "03.tif").unlink()
    cv2.imwrite(str(seg / "layers" / "03.png"), np.zeros((H, W), np.uint8))
    with pytest.raises(FragmentError, match=r"03\.png is 8-bit, but 00\.tif is 16-bit"):
        Fragment(seg)


def test_ignore_mask_is_read_and_scored_excludes_it(tmp_path):
    seg = _segment(tmp_path / "s", _numbered())
    f = Fragment(seg)
    assert f.ignore().shape == (H, W) and not f.ignore().any()
    np.testing.assert_array_equal(f.scored(), f.mask())
    ignore = np.zeros((H, W), np.uint8)
    ignore[2:5, 3:9] = 255
    cv2.imwrite(str(seg / "s_ignore.png"), ignore)
    f = Fragment(seg)
    assert f.ignore().sum() == 18 and f.scored().sum() == H * W - 18
    cv2.imwrite(str(seg / "s_ignore.png"), np.zeros((H + 1, W), np.uint8))
    with pytest.raises(FragmentError, match=r"s_ignore\.png is 21×24"):
        Fragment(seg)


def _data(**window) -> DataConfig:
    return DataConfig(**{"z_start": 2, "z_end": 6, "reverse": False, **window})


def test_segments_csv_sets_the_window_and_order_of_its_ids(tmp_path):
    layers = _numbered()
    for fid in ("s1", "s2", "s3"):
        _segment(tmp_path / "train" / fid, layers)
    (tmp_path / "segments.csv").write_text(
        "id,z_start,z_end,reverse\ns1,3,7,1\ns2,0,8,0\n"  # s2's window is wider than the model's
    )
    s1, s2, s3 = (Fragment(tmp_path / "train" / fid) for fid in ("s1", "s2", "s3"))
    data = _data()
    assert [layer_window(f, data) for f in (s1, s2, s3)] == [
        (3, 7, True),
        (2, 6, False),
        (2, 6, False),
    ]
    first_row = [read_window(f, data, 0, 0, 1, 1)[:, 0, 0].tolist() for f in (s1, s2, s3)]
    assert first_row == [
        [6000, 5000, 4000, 3000],
        [2000, 3000, 4000, 5000],
        [2000, 3000, 4000, 5000],
    ]
    # a window at the volume's end is shifted inside it; the model's width always wins
    (tmp_path / "segments.csv").write_text("id,z_start,z_end,reverse\ns1,7,8,0\n")
    assert layer_window(Fragment(tmp_path / "train" / "s1"), _data(z_start=0, z_end=3)) == (
        5,
        8,
        False,
    )
    # the table is found from a folder of fragments too, and from a split beside it
    assert Fragment(tmp_path / "train" / "s1").window is not None
    for bad, message in [
        ("id,start,end\n", r"header must be exactly id,z_start,z_end,reverse"),
        ("id,z_start,z_end,reverse\ns1,a,3,0\n", r"line 2: z_start and z_end must be integers"),
        ("id,z_start,z_end,reverse\ns1,0,3,0\ns1,1,3,0\n", r"rows for 's1' on lines 2, 3"),
    ]:
        (tmp_path / "segments.csv").write_text(bad)
        with pytest.raises(FragmentError, match=message):
            Fragment(tmp_path / "train" / "s1")


def test_reversed_segment_read_through_segments_csv_equals_scan_order(tmp_path):
    normal = make_demo_data(tmp_path / "normal", scale=SCALE, layout="segments")
    flipped = make_demo_data(tmp_path / "flipped", scale=SCALE, layout="segments",
                             style=style_from("demo", {"reverse": True}))  # fmt: skip
    data = _data(z_start=26, z_end=34)
    # file i of the flipped dataset is scan slice 64 - i: scan 26..33 are its files 31..38
    (flipped / "segments.csv").write_text("id,z_start,z_end,reverse\n2,31,39,1\n")
    a, b = Fragment(normal / "train" / "2"), Fragment(flipped / "train" / "2")
    np.testing.assert_array_equal(
        read_window(b, data, 5, 7, 40, 50), read_window(a, data, 5, 7, 40, 50)
    )
    # the probe pools only the fragments segments.csv does not fix: 1 and 3 are reversed, so
    # the dataset is; fragment 2 (read in its own order) is no "other way round" fragment
    fragments = [Fragment(p) for p in find_fragments(flipped, "train")]
    probe = probe_fragments(fragments, [f.labels() for f in fragments])
    assert probe.reverse and not any("differs" in n for n in probe.notes)
    assert [p.fixed for p in probe.fragments] == [False, True, False]


def test_identity_covers_every_file_of_segments_and_zarr(demos, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(demos["jpg"] / "train" / "1", data / "train" / "1")
    shutil.copytree(demos["zarr"] / "train" / "2", data / "train" / "2")
    seg, vol = Fragment(data / "train" / "1"), Fragment(data / "train" / "2")
    names = set(fragment_identity(seg)["files"])
    assert names == {*(f"layers/{z:02d}.jpg" for z in range(65)), "1_mask.png", "1_inklabels.png"}
    assert set(fragment_identity(vol)["files"]) == {"2.zarr", "2_mask.png", "2_inklabels.png"}
    before = [fragment_identity(f) for f in (seg, vol)]
    cv2.imwrite(str(data / "train" / "1" / "1_ignore.png"), np.zeros(seg.shape, np.uint8))
    chunk = next(
        p
        for p in (data / "train" / "2" / "2.zarr").rglob("*")
        if p.is_file() and p.stat().st_size > 100
    )
    chunk.write_bytes(chunk.read_bytes())  # rewritten: a new mtime
    (data / "segments.csv").write_text("id,z_start,z_end,reverse\n2,20,36,0\n")
    after = [fragment_identity(Fragment(data / "train" / fid)) for fid in ("1", "2")]
    assert "1_ignore.png" in after[0]["files"] and after[0] != before[0]
    assert after[1]["files"]["2.zarr"] != before[1]["files"]["2.zarr"]
    assert after[1]["window"] == [20, 36, False] and "window" not in before[1]


TINY = ["--config", "cpu-demo-unet", "--max-steps", "2", "--set", "data.tile=32",
        "--set", "data.stride=32", "--set", "data.z_start=26", "--set", "data.z_end=30",
        "--set", "train.batch_size=4", "--set", "train.num_workers=0",
        "--set", "train.steps_per_epoch=2", "--set", "train.epochs=1",
        "--set", "infer.batch_size=64"]  # fmt: skip


def test_a_dataset_mixing_layouts_trains_evaluates_predicts_and_submits(demos, tmp_path):
    """train/1 competition, 2 jpg segment, 3 zarr; test/a tif segment, b zarr; an ignore mask
    on 2 and a segments.csv row for b: every command reads each of them."""
    mixed = tmp_path / "mixed"
    for split, fid, source in [("train", "1", "competition"), ("train", "2", "jpg"),
                               ("train", "3", "zarr"), ("test", "a", "segments"),
                               ("test", "b", "zarr")]:  # fmt: skip
        shutil.copytree(demos[source] / split / fid, mixed / split / fid)
    shutil.copy(demos["competition"] / "sample_submission.csv", mixed)
    ignore = np.zeros(Fragment(mixed / "train" / "2").shape, np.uint8)
    ignore[:40] = 255
    cv2.imwrite(str(mixed / "train" / "2" / "2_ignore.png"), ignore)
    (mixed / "segments.csv").write_text("id,z_start,z_end,reverse\nb,27,31,0\n")
    assert [layout_of(p).name for p in find_fragments(mixed, "train")] == [
        "competition",
        "segments",
        "zarr",
    ]
    folds, run, pred = demos["competition"] / "folds.csv", tmp_path / "run", tmp_path / "pred"
    assert main(["train", "--data", str(mixed), "--folds", str(folds), "--fold", "1",
                 "--out", str(run), *TINY]) == 0  # fmt: skip
    assert main(["evaluate", "--runs", str(run), "--out", str(tmp_path / "ev"), "--no-progress",
                 "--no-pictures"]) == 0  # fmt: skip
    assert main(["predict", "--data", str(mixed / "test"), "--runs", str(run), "--out", str(pred),
                 "--no-progress"]) == 0  # fmt: skip
    assert sorted(p.name for p in pred.glob("*.png")) == ["a.png", "b.png"]
    assert main(["submit", "--pred", str(pred), "--data", str(mixed / "test"),
                 "--out", str(tmp_path / "submission.csv")]) == 0  # fmt: skip
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["Id", "a", "b"]
