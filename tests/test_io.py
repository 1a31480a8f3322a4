import numpy as np
import pytest

from kit.io import atomic_path, write_png


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "evaluation.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]


def test_write_png_round_trips(tmp_path):
    import cv2

    image = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    write_png(tmp_path / "sub" / "a.png", image)
    assert np.array_equal(cv2.imread(str(tmp_path / "sub" / "a.png"), cv2.IMREAD_GRAYSCALE), image)
