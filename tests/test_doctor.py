"""`kit doctor`: environment and data checks, a clear line per check, exit 1 on a problem."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from kit import doctor
from kit.cli import main


def test_version_bounds_are_compared_numerically():
    assert doctor.satisfies("2.14.1+cpu", ">=2.3")
    assert not doctor.satisfies("2.2.0", ">=2.3")
    assert doctor.satisfies("0.17.6", "==0.17.6") and not doctor.satisfies("0.17.7", "==0.17.6")
    assert not doctor.satisfies("3.0", ">=2.0,<3")
    assert doctor.satisfies("1.0", "")


def test_requirements_are_pyprojects():
    required = doctor.requirements()
    assert required["python"] == ">=3.11" and required["torch"] == ">=2.3"
    assert "pytest" not in required  # an extra, not a runtime requirement


def test_this_environment_passes_and_a_missing_or_old_package_is_a_problem(monkeypatch, capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "environment (inkkit" in out and "torch " in out and out.rstrip().endswith(")")
    real = doctor.metadata.version

    def fake(name):
        if name == "timm":
            raise doctor.metadata.PackageNotFoundError(name)
        return "2.0.0" if name == "torch" else real(name)

    monkeypatch.setattr(doctor.metadata, "version", fake)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  torch 2.0.0" in out and "needs >=2.3: pip install 'torch>=2.3'" in out
    assert "timm" in out and "not installed (needs >=1.0)" in out
    assert out.splitlines()[-1].startswith("2 problem(s): ")


def test_demo_data_passes_with_a_line_per_fragment(demo_dir, capsys):
    assert main(["doctor", "--data", str(demo_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    fragments = [line.split()[1] for line in lines[lines.index(f"data {demo_dir}") + 1 : -1]]
    assert fragments == ["train/1", "train/2", "train/3", "test/a", "test/b"]
    assert any("65 slices uint16" in line and "ink labels" in line for line in lines)


@pytest.fixture
def broken(demo_dir, tmp_path):
    """A copy of two train fragments: 1 with a truncated slice, 2 with an empty mask."""
    root = tmp_path / "data"
    for fid in ("1", "2"):
        shutil.copytree(demo_dir / "train" / fid, root / "train" / fid)
    slice_7 = root / "train" / "1" / "surface_volume" / "07.tif"
    slice_7.write_bytes(slice_7.read_bytes()[:-100])
    mask = cv2.imread(str(root / "train" / "2" / "mask.png"), 0)
    cv2.imwrite(str(root / "train" / "2" / "mask.png"), np.zeros_like(mask))
    return root


def test_a_broken_dataset_names_each_file_and_exits_1(broken, capsys):
    assert main(["doctor", "--data", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "07.tif is truncated" in out
    assert "mask.png is empty" in out
    assert out.splitlines()[-1] == "2 problem(s): train/1; train/2"


def test_a_directory_without_fragments_is_a_problem(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["doctor", "--data", str(tmp_path / "empty")]) == 1
    assert "holds no fragment" in capsys.readouterr().out


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_bf16_line_says_what_train_amp_bf16_does_here(monkeypatch, native):
    import kit.precision

    monkeypatch.setattr(kit.precision, "cpu_has_native_bf16", lambda: native)
    (check,) = [c for c in doctor.environment_checks() if c.what == "CPU bf16"]
    assert (check.status, "float32" in check.detail) == (
        ("ok", False) if native else ("note", True)
    )
