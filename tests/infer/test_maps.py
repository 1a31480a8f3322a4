"""Probability maps of any size: the tiled BigTIFF pyramid, `predict --format`, readers that take
either file, and the ensemble mean by bands."""

import tracemalloc

import cv2
import numpy as np
import pytest
import tifffile
from infer_helpers import make_run, tiny_sam_config, write_fragment

import kit.infer.ensemble as ensemble
import kit.run
from kit.cli import main
from kit.data.fragment import Fragment
from kit.infer.ensemble import load_members, mean_maps, predict_ensemble, resolve_members
from kit.io import pyramid_shapes, scratch_array, write_tiled_tiff
from kit.run import PredictionDir, RunDir, map_suffixes


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
    """Brute-force level: mean of each f×f square (the part inside the map), rounded half up."""
    h, w = image.shape
    out = np.zeros((-(-h // f), -(-w // f)), np.uint8)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = image[i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.int64)
            out[i, j] = (block.sum() + block.size // 2) // block.size
    return out


def test_tiled_tiff_is_readable_at_every_level_and_level_0_is_the_png(tmp_path):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 233), dtype=np.uint8), (0, 0), 2)
    write_tiled_tiff(tmp_path / "m.tif", image, tile=32)
    cv2.imwrite(str(tmp_path / "m.png"), image)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE  # zlib
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == pyramid_shapes(image.shape, 32)
        assert [lv.shape for lv in levels][-1] == (19, 15)  # halved until it fits one tile
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), _block_mean(image, 1 << k))
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "m.tif"), cv2.imread(str(tmp_path / "m.png"), 0)
    )


def test_tiff_writer_holds_one_band_not_the_map(tmp_path):
    peaks = {}
    for height in (4096, 16384):
        image = scratch_array((height, 1024), np.uint8)  # memory-mapped, like a huge map
        image[::7] = 200
        tracemalloc.start()
        write_tiled_tiff(tmp_path / f"{height}.tif", image)
        peaks[height] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    band = 256 * 1024
    assert peaks[16384] < 32 * band < 16384 * 1024  # a few bands; the map is 64 bands
    assert peaks[16384] < 1.5 * peaks[4096]  # four times the rows, not four times the memory
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "16384.tif"), image)


def test_map_suffixes_follow_format_size_and_layout(monkeypatch):
    assert map_suffixes((100, 100), "png", layout="segments") == [".png"]
    assert map_suffixes((100, 100), "tiff", layout="segments") == [".tif"]
    assert map_suffixes((100, 100), "tiff", layout="competition") == [".png", ".tif"]
    assert map_suffixes((8192, 8192), "auto") == [".png"]  # 2**26 pixels: not above
    assert map_suffixes((8192, 8193), "auto", layout="zarr") == [".tif"]
    assert map_suffixes((14830, 9506), "auto", layout="competition") == [".png", ".tif"]
    with pytest.raises(Exception, match=r"map format 'jpeg' is not one of"):
        map_suffixes((1, 1), "jpeg")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """test/c (competition) and test/s (a segment: the same files renamed), and one run."""
    root = tmp_path_factory.mktemp("maps")
    write_fragment(root / "data" / "test", "c", shape=(70, 53))
    seg = write_fragment(root / "data" / "test", "s", shape=(70, 53))
    (seg / "surface_volume").rename(seg / "layers")
    (seg / "mask.png").rename(seg / "s_mask.png")
    (root / "data" / "sample_submission.csv").write_text("Id,Predicted\nc,1 1\ns,1 1\n")
    run = make_run(root / "runs", "tiny", tiny_sam_config(), seed=1)
    return root, root / "data" / "test", run


def _predict(test, run, out, *extra) -> int:
    return main(["predict", "--no-progress", "--data", str(test), "--runs", str(run),
                 "--out", str(out), *extra])  # fmt: skip


def _files(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix != ".json")


def test_predict_format_writes_tiff_and_keeps_the_competition_png(mixed, monkeypatch):
    root, test, run = mixed
    out = root / "pred"
    assert _predict(test, run, out, "--format", "png") == 0
    assert _files(out) == ["c.png", "s.png"]
    png = {fid: cv2.imread(str(out / f"{fid}.png"), 0) for fid in "cs"}
    assert main(["submit", "--pred", str(out), "--data", str(test), "--threshold", "0.5",
                 "--out", str(root / "png.csv")]) == 0  # fmt: skip

    assert _predict(test, run, out, "--format", "tiff") == 0  # a new format: redone
    assert _files(out) == ["c.png", "c.tif", "s.tif"]  # the segment's stale PNG is gone
    for fid in "cs":
        np.testing.assert_array_equal(tifffile.imread(out / f"{fid}.tif"), png[fid])
    assert PredictionDir(out).map("s").name == "s.tif" and PredictionDir(out).map_ids() == [
        "c",
        "s",
    ]
    assert main(["submit", "--pred", str(out), "--data", str(test), "--threshold", "0.5",
                 "--out", str(root / "tif.csv")]) == 0  # fmt: skip
    assert (root / "tif.csv").read_text() == (root / "png.csv").read_text()

    monkeypatch.setattr(kit.run, "TIFF_PIXELS", 70 * 53 - 1)  # "auto" with these as huge maps
    assert _predict(test, run, root / "auto") == 0
    assert _files(root / "auto") == ["c.png", "c.tif", "s.tif"]
    monkeypatch.setattr(kit.run, "TIFF_PIXELS", 70 * 53)
    assert _predict(test, run, root / "auto", "--overwrite") == 0
    assert _files(root / "auto") == ["c.png", "s.png"]


def test_oof_maps_of_huge_fragments_are_tiff_and_read_back(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    prob = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    monkeypatch.setattr(kit.run, "TIFF_PIXELS", 100)
    run.write_oof("s", prob)
    assert run.oof_map("s").name == "s.tif" and not (run.oof / "s.png").exists()
    np.testing.assert_array_equal(run.read_oof("s", (40, 30), tmp_path), prob)
    monkeypatch.setattr(kit.run, "TIFF_PIXELS", 2**26)
    run.write_oof("s", prob)  # a later, smaller-threshold run writes the PNG: no stale TIFF
    assert sorted(p.name for p in run.oof.iterdir()) == ["s.png"]
    with pytest.raises(Exception, match=r"s\.png is 40×30 but fragment"):
        run.read_oof("s", (41, 30), tmp_path)


def test_mean_maps_by_bands_equals_the_one_pass_mean(monkeypatch):
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 256, (37, 29), dtype=np.uint8) for _ in range(3)]
    weights = [0.2, 1.3, 0.5]
    one_pass = np.zeros((37, 29), np.float32)
    for m, w in zip(maps, weights, strict=True):
        one_pass += m * np.float32(w / sum(weights))
    want = np.clip(np.rint(one_pass), 0, 255).astype(np.uint8)
    monkeypatch.setattr(ensemble, "BAND_PIXELS", 100)  # bands of 3 rows
    np.testing.assert_array_equal(mean_maps(maps, weights), want)
    kept = [scratch_array(m.shape, np.uint8) for m in maps]
    for k, m in zip(kept, maps, strict=True):
        k[:] = m
    np.testing.assert_array_equal(mean_maps(kept, weights), want)
    flat = [m.ravel() for m in maps]  # the weight search's held-out samples
    np.testing.assert_array_equal(mean_maps(flat, weights), want.ravel())


def test_ensemble_of_two_holds_no_float_map(tmp_path, monkeypatch):
    monkeypatch.setattr(ensemble, "BAND_PIXELS", 30_000)  # 16 MB bands would hold this map whole
    h, w = 4000, 300  # papyrus in a few rows only: few tiles, but every map is (H, W)
    mask = np.zeros((h, w), bool)
    mask[100:180] = True
    test = tmp_path / "test"
    write_fragment(test, "t", shape=(h, w), n_slices=6, mask=mask)
    runs = [make_run(tmp_path / "runs", f"m{i}", tiny_sam_config(), seed=i) for i in (1, 2)]
    loaded = load_members(resolve_members([str(r) for r in runs]))
    fragment = Fragment(test / "t")
    fragment.mask()
    alone = [predict_ensemble([lm], fragment, progress=False) for lm in loaded]
    tracemalloc.start()
    mean = predict_ensemble(loaded, fragment, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(mean, mean_maps(alone, [1, 1]))
    assert peak < 4 * h * w, f"{peak / (h * w):.1f} bytes per pixel"  # a float32 map alone is 4


def test_map_files_keep_ids_with_dots(tmp_path, monkeypatch):
    pred = PredictionDir(tmp_path / "pred")
    prob = np.full((20, 30), 9, np.uint8)
    assert pred.write_map("20230702.v2", prob, [".tif"]) == [tmp_path / "pred" / "20230702.v2.tif"]
    (tmp_path / "pred" / ".20230702.v2.123.tmp.png").write_bytes(b"")  # a killed writer's
    assert pred.map_ids() == ["20230702.v2"]
    np.testing.assert_array_equal(pred.read_map("20230702.v2"), prob)
    monkeypatch.setattr(kit.run, "TIFF_PIXELS", 10)
    run = RunDir(tmp_path / "run")
    run.write_oof("s.1", prob)
    assert run.oof_map("s.1").name == "s.1.tif"
