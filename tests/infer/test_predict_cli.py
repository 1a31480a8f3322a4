"""`python -m kit predict`: ensemble = weighted mean of members, reruns skip, clear errors."""

import json
import shutil

import cv2
import numpy as np
import pytest
from infer_helpers import make_run, tiny_sam_config, write_fragment

from kit.cli import main
from kit.infer.ensemble import mean_maps, parse_spec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    test = root / "test"
    write_fragment(test, "a", shape=(70, 53))
    write_fragment(test, "b", shape=(41, 66), seed=1)
    run1 = make_run(root / "runs", "sam-fold0", tiny_sam_config(), seed=1)
    run2 = make_run(root / "runs", "sam-fold1", tiny_sam_config(), seed=2)
    return root, test, run1, run2


@pytest.fixture(scope="module")
def singles(setup):
    """Each run's maps alone, in ROOT/p1 and ROOT/p2 (the references the ensembles are checked
    against; made here so that no test depends on another having run first)."""
    root, test, run1, run2 = setup
    for run, name in ((run1, "p1"), (run2, "p2")):
        assert _predict(["--data", str(test), "--runs", str(run), "--out", str(root / name)]) == 0
    return root / "p1", root / "p2"


def _predict(argv) -> int:
    return main(["predict", "--no-progress", *argv])


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_two_model_ensemble_is_the_mean(setup, singles):
    root, test, run1, run2 = setup
    out = root / "pred"
    assert _predict(["--data", str(test), "--runs", str(run1), str(run2), "--out", str(out)]) == 0
    for frag in ("a", "b"):
        p1, p2, ens = (
            _read(root / "p1" / f"{frag}.png"),
            _read(root / "p2" / f"{frag}.png"),
            _read(out / f"{frag}.png"),
        )
        assert ens.dtype == np.uint8 and ens.shape == p1.shape
        assert not np.array_equal(p1, p2)
        np.testing.assert_array_equal(ens, mean_maps([p1, p2], [1, 1]))
        assert np.abs(ens - (p1.astype(float) + p2) / 2).max() <= 0.5
        assert (out / "preview" / f"{frag}.png").exists()
    weighted = root / "pw"
    assert (
        _predict(
            ["--data", str(test / "a"), "--runs", f"{run1}:3", f"{run2}:1", "--out", str(weighted)]
        )
        == 0
    )
    p1, p2 = _read(root / "p1" / "a.png"), _read(root / "p2" / "a.png")
    np.testing.assert_array_equal(_read(weighted / "a.png"), mean_maps([p1, p2], [3, 1]))
    assert not (weighted / "b.png").exists()  # a single fragment directory predicts only it
    record = json.loads((weighted / "predict.json").read_text())
    assert [m["weight"] for m in record["members"]] == [3.0, 1.0]


def test_directory_of_runs_and_skip_and_overwrite(setup, singles, capsys):
    root, test, run1, _ = setup
    out = root / "pall"
    assert _predict(["--data", str(test), "--runs", str(run1.parent), "--out", str(out)]) == 0
    assert len(json.loads((out / "predict.json").read_text())["members"]) == 2
    stamp = (out / "a.png").stat().st_mtime_ns
    capsys.readouterr()
    assert _predict(["--data", str(test), "--runs", str(run1.parent), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (out / "a.png").stat().st_mtime_ns == stamp
    assert (
        _predict(
            ["--data", str(test), "--runs", str(run1.parent), "--out", str(out), "--overwrite"]
        )
        == 0
    )
    assert (out / "a.png").stat().st_mtime_ns != stamp
    # other members: the old maps are stale and redone without --overwrite
    assert _predict(["--data", str(test), "--runs", str(run1), "--out", str(out)]) == 0
    np.testing.assert_array_equal(_read(out / "a.png"), _read(root / "p1" / "a.png"))


def test_parse_spec():
    assert parse_spec("runs/fold0:0.5") == ("runs/fold0", 0.5)
    assert parse_spec("runs/fold0") == ("runs/fold0", None)
    assert parse_spec("c:/x") == ("c:/x", None)


def _error(capsys, argv) -> str:
    assert _predict(argv) == 2
    return capsys.readouterr().err


def test_missing_run_dir(setup, capsys, tmp_path):
    _, test, _, _ = setup
    err = _error(
        capsys,
        ["--data", str(test), "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
    )
    assert "nope does not exist" in err


def test_run_without_best_checkpoint(setup, capsys, tmp_path):
    _, test, run1, _ = setup
    run = tmp_path / "unfinished"
    run.mkdir()
    shutil.copy(run1 / "config.yaml", run / "config.yaml")
    err = _error(capsys, ["--data", str(test), "--runs", str(run), "--out", str(tmp_path / "o")])
    assert "checkpoints/best.pt" in err and "--resume" in err


def test_checkpoint_of_another_config(setup, capsys, tmp_path):
    _, test, run1, _ = setup
    other = tiny_sam_config()
    other.data.z_start, other.data.z_end = 0, 6
    run = make_run(tmp_path, "other", other, seed=0)
    shutil.copy(run1 / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    err = _error(capsys, ["--data", str(test), "--runs", str(run), "--out", str(tmp_path / "o")])
    assert "another config" in err and "data.z_start" in err


def test_weights_that_do_not_fit_the_config(setup, capsys, tmp_path):
    import torch

    _, test, run1, _ = setup
    state = torch.load(run1 / "checkpoints" / "best.pt", weights_only=False)
    state["config"]["model"]["variant"] = "vit_b"
    torch.save(state, tmp_path / "wrong.pt")
    err = _error(
        capsys,
        ["--data", str(test), "--runs", str(tmp_path / "wrong.pt"), "--out", str(tmp_path / "o")],
    )
    assert "wrong.pt" in err and "do not fit" in err


def test_unreadable_checkpoint(setup, capsys, tmp_path):
    _, test, _, _ = setup
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    err = _error(
        capsys,
        ["--data", str(test), "--runs", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "o")],
    )
    assert "broken.pt" in err


def test_fragment_without_mask(setup, capsys, tmp_path):
    _, _, run1, _ = setup
    write_fragment(tmp_path / "test", "c", with_mask=False)
    err = _error(
        capsys,
        ["--data", str(tmp_path / "test"), "--runs", str(run1), "--out", str(tmp_path / "o")],
    )
    assert "mask.png is missing" in err


def test_fragment_with_too_few_slices(setup, capsys, tmp_path):
    _, _, run1, _ = setup
    write_fragment(tmp_path / "test", "d", n_slices=3)
    err = _error(
        capsys,
        ["--data", str(tmp_path / "test"), "--runs", str(run1), "--out", str(tmp_path / "o")],
    )
    assert "slices 1..4" in err and "has 3" in err


def test_only_infer_overrides(setup, capsys, tmp_path):
    _, test, run1, _ = setup
    argv = [
        "--data",
        str(test),
        "--runs",
        str(run1),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "data.tile=64",
    ]
    assert "infer.*" in _error(capsys, argv)


def test_rerun_redoes_what_a_retrained_checkpoint_or_a_changed_fragment_made(
    setup, singles, tmp_path, capsys
):
    root, test, run1, run2 = setup
    data, run = tmp_path / "test", tmp_path / "run"
    shutil.copytree(test, data)
    shutil.copytree(run1, run)
    out = tmp_path / "pred"
    argv = ["--data", str(data), "--runs", str(run), "--out", str(out)]
    assert _predict(argv) == 0
    stamps = {f: (out / f"{f}.png").stat().st_mtime_ns for f in ("a", "b")}
    # the run was retrained (same path, new weights): every map is redone, none skipped
    shutil.copyfile(run2 / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    capsys.readouterr()
    assert _predict(argv) == 0
    assert "skipped" not in capsys.readouterr().out
    np.testing.assert_array_equal(_read(out / "a.png"), _read(root / "p2" / "a.png"))
    assert all((out / f"{f}.png").stat().st_mtime_ns != stamps[f] for f in ("a", "b"))
    # one fragment's mask replaced: only that fragment is redone
    stamps = {f: (out / f"{f}.png").stat().st_mtime_ns for f in ("a", "b")}
    mask = _read(data / "b" / "mask.png")
    mask[:5] = 0
    cv2.imwrite(str(data / "b" / "mask.png"), mask)
    assert _predict(argv) == 0
    assert (out / "a.png").stat().st_mtime_ns == stamps["a"]
    assert (out / "b.png").stat().st_mtime_ns != stamps["b"]
    # predict.json lists a fragment only once its map is written: a map left by other members
    # (a kill before it was redone) is not in the record, so the next run redoes it
    record = json.loads((out / "predict.json").read_text())
    assert set(record["fragments"]) == {"a", "b"}
    assert len(record["members"][0]["sha256"]) == 64
    del record["fragments"]["a"]
    (out / "predict.json").write_text(json.dumps(record))
    stamps = {f: (out / f"{f}.png").stat().st_mtime_ns for f in ("a", "b")}
    assert _predict(argv) == 0
    assert (out / "a.png").stat().st_mtime_ns != stamps["a"]
    assert (out / "b.png").stat().st_mtime_ns == stamps["b"]


def test_repeated_set_options_all_apply():
    from kit.cli import build_parser

    args = build_parser().parse_args(
        [
            "predict",
            "--data",
            "d",
            "--runs",
            "r",
            "--out",
            "o",
            "--set",
            "infer.tta=[hflip]",
            "--set",
            "infer.batch_size=2",
        ]
    )
    assert args.set == ["infer.tta=[hflip]", "infer.batch_size=2"]  # nargs="*" kept only the last
