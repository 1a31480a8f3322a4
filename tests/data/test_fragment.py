import resource
import shutil

import cv2
import numpy as np
import pytest
import tifffile

from kit.data.fragment import Fragment, FragmentError

H, W, Z = 40, 30, 6


def _make(root, n=Z, shape=(H, W), labels=None, **tif_kwargs):
    rng = np.random.default_rng(0)
    vol = root / "surface_volume"
    vol.mkdir(parents=True)
    data = rng.integers(0, 65535, (n, *shape), dtype=np.uint16)
    for z in range(n):
        tifffile.imwrite(vol / f"{z:02d}.tif", data[z], photometric="minisblack", **tif_kwargs)
    mask = np.zeros(shape, np.uint8)
    mask[2:-2, 3:-3] = 255
    cv2.imwrite(str(root / "mask.png"), mask)
    if labels is not None:
        cv2.imwrite(str(root / "inklabels.png"), labels)
    return data


def test_reads_windows_labels_and_mask(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[5:9, 4:20] = 255
    data = _make(tmp_path / "7", labels=labels)
    frag = Fragment(tmp_path / "7")
    assert (frag.id, frag.shape, frag.n_slices) == ("7", (H, W), Z)
    np.testing.assert_array_equal(
        frag.read(1, 4, slice(3, 17), slice(5, 25)), data[1:4, 3:17, 5:25]
    )
    assert frag.read(0, Z).dtype == np.uint16
    assert frag.labels().max() == 1 and frag.labels().sum() == 4 * 16
    assert frag.mask().dtype == bool and frag.mask().sum() == (H - 4) * (W - 6)
    with pytest.raises(FragmentError, match=r"slices 0\.\.6 requested"):
        frag.read(0, Z + 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "zlib", "rowsperstrip": 7},
        {"compression": "lzw", "rowsperstrip": 16},
        {"tile": (16, 16)},
        {"tile": (16, 16), "compression": "zlib"},
        {"rowsperstrip": 5},
    ],
)
def test_strip_and_tile_reads_equal_memmap_reads(tmp_path, kwargs):
    plain = _make(tmp_path / "plain")
    other = _make(tmp_path / "other", **kwargs)
    np.testing.assert_array_equal(plain, other)  # same seed, same data
    a, b = Fragment(tmp_path / "plain"), Fragment(tmp_path / "other")
    assert a._volume.layer(0)._memmap is not None
    for rows, cols in [
        (slice(0, H), slice(0, W)),
        (slice(3, 21), slice(7, 29)),
        (slice(33, 40), slice(0, 1)),
    ]:
        np.testing.assert_array_equal(a.read(0, Z, rows, cols), b.read(0, Z, rows, cols))


def test_missing_and_misnumbered_slices(tmp_path):
    _make(tmp_path / "f")
    (tmp_path / "f" / "surface_volume" / "03.tif").unlink()
    with pytest.raises(FragmentError, match=r"missing slice\(s\) \[3\]"):
        Fragment(tmp_path / "f")
    (tmp_path / "f" / "surface_volume" / "02.tif").rename(
        tmp_path / "f" / "surface_volume" / "3.tif"
    )
    (tmp_path / "f" / "surface_volume" / "01.tif").rename(
        tmp_path / "f" / "surface_volume" / "2.tif"
    )
    (tmp_path / "f" / "surface_volume" / "04.tif").rename(
        tmp_path / "f" / "surface_volume" / "02.tif"
    )
    with pytest.raises(FragmentError, match="two files for slice 2"):
        Fragment(tmp_path / "f")
    shutil.rmtree(tmp_path / "f" / "surface_volume")
    with pytest.raises(FragmentError, match="surface_volume is missing"):
        Fragment(tmp_path / "f")
    with pytest.raises(FragmentError, match="does not exist"):
        Fragment(tmp_path / "nope")


def test_slices_of_different_sizes(tmp_path):
    _make(tmp_path / "f")
    tifffile.imwrite(tmp_path / "f" / "surface_volume" / "04.tif", np.zeros((H, W + 1), np.uint16))
    with pytest.raises(FragmentError, match=f"04.tif is {H}×{W + 1}.*all slices"):
        Fragment(tmp_path / "f")


def test_mask_size_mismatch_and_missing_mask(tmp_path):
    _make(tmp_path / "f")
    cv2.imwrite(str(tmp_path / "f" / "mask.png"), np.full((H + 1, W), 255, np.uint8))
    with pytest.raises(FragmentError, match=f"mask.png is {H + 1}×{W}"):
        Fragment(tmp_path / "f")
    (tmp_path / "f" / "mask.png").unlink()
    with pytest.raises(FragmentError, match=r"mask.png is missing"):
        Fragment(tmp_path / "f")


def test_unreadable_and_truncated_tiff(tmp_path):
    _make(tmp_path / "f")
    path = tmp_path / "f" / "surface_volume" / "02.tif"
    path.write_bytes(b"not a tiff at all")
    with pytest.raises(FragmentError, match=r"02.tif is not a readable TIFF"):
        Fragment(tmp_path / "f")
    _make(tmp_path / "g")
    path = tmp_path / "g" / "surface_volume" / "03.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    frag = Fragment(tmp_path / "g")  # headers are fine; the data is cut short
    with pytest.raises(FragmentError, match=r"03.tif is truncated"):
        frag.read(0, Z)


def test_wrong_dtype_slice(tmp_path):
    _make(tmp_path / "f")
    tifffile.imwrite(tmp_path / "f" / "surface_volume" / "01.tif", np.zeros((H, W), np.float32))
    with pytest.raises(FragmentError, match="single-channel uint8 or uint16"):
        Fragment(tmp_path / "f").read(0, Z)


def test_empty_mask(tmp_path):
    _make(tmp_path / "f")
    cv2.imwrite(str(tmp_path / "f" / "mask.png"), np.zeros((H, W), np.uint8))
    with pytest.raises(FragmentError, match=r"mask.png is empty"):
        Fragment(tmp_path / "f").mask()


@pytest.mark.parametrize("values", [(0, 1), (0, 255)])
def test_binary_labels_accepted(tmp_path, values):
    labels = np.full((H, W), values[0], np.uint8)
    labels[:3] = values[1]
    _make(tmp_path / "f", labels=labels)
    assert Fragment(tmp_path / "f").labels().sum() == 3 * W


@pytest.mark.parametrize("values", [(0, 128), (0, 1, 255), (3,)])
def test_labels_outside_binary_rejected(tmp_path, values):
    labels = np.array(values, np.uint8)[np.arange(H * W) % len(values)].reshape(H, W)
    _make(tmp_path / "f", labels=labels)
    with pytest.raises(FragmentError, match=r"inklabels.png has values .*binary"):
        Fragment(tmp_path / "f").labels()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_window_read_touches_only_the_window_rows(tmp_path):
    """30 sparse slices of real fragment 2's size (14830×9506, 282 MB each): a 256×256 window over
    all 30 must fault in about 30×256 rows (~150 MB would be one full slice), not whole slices."""
    h, w, n = 14830, 9506, 30
    vol = tmp_path / "2" / "surface_volume"
    vol.mkdir(parents=True)
    for z in range(n):
        # Creates the file without writing its data: sparse on disk, zeros when read.
        tifffile.memmap(
            vol / f"{z:02d}.tif", shape=(h, w), dtype=np.uint16, photometric="minisblack"
        ).flush()
    mask = np.zeros((h, w), np.uint8)
    mask[::97, ::89] = 255  # compresses to a few kB
    cv2.imwrite(str(tmp_path / "2" / "mask.png"), mask)
    del mask
    frag = Fragment(tmp_path / "2")
    frag.read(0, n, slice(0, 1), slice(0, 1))  # open every slice's memory map first
    page = resource.getpagesize()
    before = _minor_faults()
    window = frag.read(0, n, slice(7000, 7256), slice(4000, 4256))
    touched = (_minor_faults() - before) * page
    assert window.shape == (n, 256, 256) and not window.any()
    one_slice = h * w * 2
    # Each window row is 512 bytes inside a 19 kB image row: at most 256 pages per slice, plus the
    # output array (30×256×256×2 = 3.9 MB).
    budget = n * 256 * page + window.nbytes + 8 * 2**20
    print(
        f"window read touched {touched / 2**20:.1f} MB; one full slice is {one_slice / 2**20:.0f} MB"
    )
    assert touched < budget < one_slice / 4
