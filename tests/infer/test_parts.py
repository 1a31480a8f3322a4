"""A prediction shared out (--part K/N, torchrun ranks) writes the bytes one process writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from infer_helpers import make_run, small_config, tiny_sam_config, write_fragment

from kit.cli import main
from kit.errors import KitError
from kit.infer.parts import Part
from kit.run import PredictionDir

ROOT = Path(__file__).resolve().parents[2]


def test_parts_cut_the_rows_into_contiguous_bands():
    assert Part.parse(None) == Part(0, 1) and Part.parse("2/3") == Part(1, 3)
    assert Part.of(Part.parse("2/3"), rank=1, world=2) == Part(3, 6)  # machine 2, its rank 1
    bands = [Part(k, 3).rows(100) for k in range(3)]
    assert bands == [(0, 33), (33, 66), (66, 100)]
    for bad in ("3/2", "0/2", "2", "a/b"):
        with pytest.raises(KitError, match="--part"):
            Part.parse(bad)


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "test"
    for i, name in enumerate("ab"):
        write_fragment(data, name, shape=(61 + 17 * i, 47), seed=i)
    unet = small_config()
    unet.name = "unet"
    runs = [make_run(tmp_path / "runs", "sam", tiny_sam_config(), seed=1),
            make_run(tmp_path / "runs", "unet", unet, seed=2)]  # fmt: skip
    return data, [str(r) for r in runs]


def _maps(pred: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pred.glob("*.png"))}


def test_parts_on_several_machines_equal_one_process(setup, tmp_path, capsys):
    data, runs = setup
    base = ["predict", "--data", str(data), "--runs", *runs, "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    shared = tmp_path / "shared"
    assert main([*base, "--out", str(shared), "--part", "2/3"]) == 0
    assert main([*base, "--out", str(shared), "--part", "1/3"]) == 0
    assert _maps(shared) == {}  # part 3 still to come: no map yet
    assert main([*base, "--out", str(shared), "--part", "3/3"]) == 0  # the last one assembles
    assert _maps(shared) == _maps(tmp_path / "one") and len(_maps(shared)) == 2
    assert not list((shared / ".parts").glob("*.npy"))
    one, parts = PredictionDir(tmp_path / "one").record(), PredictionDir(shared).record()
    assert parts["fragments"] == one["fragments"]
    capsys.readouterr()
    assert main([*base, "--out", str(shared), "--part", "1/3"]) == 0  # done: nothing to do
    assert capsys.readouterr().out.count("skipped") == 2


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_process(setup, tmp_path):
    data, runs = setup
    base = ["-m", "kit", "predict", "--data", str(data), "--runs", *runs, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    two = subprocess.run([*torchrun, *base, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "part 2/2" in two.stdout
    assert _maps(tmp_path / "two") == _maps(tmp_path / "one") and len(_maps(tmp_path / "one")) == 2
