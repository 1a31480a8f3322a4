"""`submit`: decodes back to the thresholded, cleaned, masked map; threshold sources; order."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from infer_helpers import make_run, tiny_sam_config, write_fragment

from kit.cli import main
from kit.data.fragment import Fragment
from kit.postprocess import percentile_threshold, postprocess, remove_small_components
from kit.rle import decode


@pytest.fixture
def pred_setup(tmp_path):
    data = tmp_path / "data"
    for name, shape in [("a", (40, 30)), ("b", (25, 50))]:
        write_fragment(data / "test", name, shape=shape, n_slices=2)
    pd.DataFrame({"Id": ["b", "a"], "Predicted": ["", ""]}).to_csv(
        data / "sample_submission.csv", index=False
    )
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in [("a", (40, 30)), ("b", (25, 50))]:
        prob = cv2.GaussianBlur(rng.random(shape), (0, 0), 1.5)
        prob = (prob - prob.min()) / (prob.max() - prob.min())
        cv2.imwrite(str(pred / f"{name}.png"), np.rint(prob * 255).astype(np.uint8))
    return data, pred


def _decoded(csv, data):
    df = pd.read_csv(csv, keep_default_na=False)
    return list(df.Id), {
        r.Id: decode(r.Predicted, Fragment(data / "test" / r.Id).shape) for r in df.itertuples()
    }


def _submit(pred, data, out, *extra) -> int:
    return main(
        ["submit", "--pred", str(pred), "--data", str(data / "test"), "--out", str(out), *extra]
    )


def test_submit_decodes_to_thresholded_map(pred_setup, tmp_path):
    data, pred = pred_setup
    out = tmp_path / "submission.csv"
    assert _submit(pred, data, out, "--threshold", "0.55", "--min-area", "4") == 0
    ids, maps = _decoded(out, data)
    assert ids == ["b", "a"]  # sample_submission.csv order
    for fid, ink in maps.items():
        prob = cv2.imread(str(pred / f"{fid}.png"), 0)
        mask = Fragment(data / "test" / fid).mask()
        expected = remove_small_components((prob >= np.ceil(0.55 * 255)) & mask, 4)
        np.testing.assert_array_equal(ink.astype(bool), expected)
        assert 0 < expected.sum() < expected.size and not ink[~mask].any()


def test_threshold_from_evaluation_json_and_percentile(pred_setup, tmp_path, capsys):
    data, pred = pred_setup
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "evaluation.json").write_text(json.dumps({"threshold": 0.7}))
    out = tmp_path / "s.csv"
    assert _submit(pred, data, out) == 0
    assert "evaluation.json" in capsys.readouterr().out
    _, maps = _decoded(out, data)
    prob = cv2.imread(str(pred / "a.png"), 0)
    mask = Fragment(data / "test" / "a").mask()
    np.testing.assert_array_equal(maps["a"].astype(bool), postprocess(prob, mask, threshold=0.7))
    assert _submit(pred, data, out, "--percentile", "5") == 0
    _, maps = _decoded(out, data)
    assert 0 < maps["a"][mask].mean() <= 0.05
    t = percentile_threshold(prob, mask, 5)
    assert (prob[mask] >= round(t * 255)).mean() <= 0.05 < (prob[mask] >= round(t * 255) - 1).mean()


def test_bad_inputs(pred_setup, tmp_path, capsys):
    data, pred = pred_setup
    (pred / "b.png").unlink()
    assert _submit(pred, data, tmp_path / "x.csv", "--threshold", "0.5") == 2
    assert "b.png is missing" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    assert main(["submit", "--pred", str(tmp_path / "none"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_then_submit_end_to_end(tmp_path):
    test = tmp_path / "data" / "test"
    write_fragment(test, "a", shape=(50, 45))
    run = make_run(tmp_path / "runs", "fold0", tiny_sam_config(), seed=0)
    pred, out = tmp_path / "pred", tmp_path / "submission.csv"
    assert (
        main(
            [
                "predict",
                "--no-progress",
                "--data",
                str(test),
                "--runs",
                str(run),
                "--out",
                str(pred),
            ]
        )
        == 0
    )
    # --data defaults to the test directory recorded by predict
    assert main(["submit", "--pred", str(pred), "--out", str(out), "--threshold", "0.5"]) == 0
    _, maps = _decoded(out, tmp_path / "data")
    prob = cv2.imread(str(pred / "a.png"), 0)
    np.testing.assert_array_equal(
        maps["a"].astype(bool), (prob >= 128) & Fragment(test / "a").mask()
    )


def test_a_predict_rerun_and_submit_answer_without_importing_torch(tmp_path):
    """predict.json records each member's post: section, so submit reads no checkpoint, and a
    predict that finds every map made decides so from files: neither pays torch's start-up."""
    test = tmp_path / "data" / "test"
    write_fragment(test, "a", shape=(50, 45))
    config = tiny_sam_config()
    config.post.threshold, config.post.min_component_area = 0.35, 3
    run = make_run(tmp_path / "runs", "fold0", config, seed=0)
    pred, out = tmp_path / "pred", tmp_path / "submission.csv"
    predict = ["predict", "--no-progress", "--data", str(test), "--runs", str(run), "--out",
               str(pred)]  # fmt: skip
    assert main(predict) == 0
    record = json.loads((pred / "predict.json").read_text())
    assert record["posts"] == [{"threshold": 0.35, "percentile": 0.0, "min_component_area": 3}]
    code = (
        "import sys\nfrom kit.cli import main\n"
        f"assert main({predict!r}) == 0\n"
        f"assert main(['submit', '--pred', {str(pred)!r}, '--out', {str(out)!r}]) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exists (same members, checkpoints and data): skipped" in done.stdout
    assert "threshold 0.3500 from the post: section" in done.stdout
    _, maps = _decoded(out, tmp_path / "data")
    prob = cv2.imread(str(pred / "a.png"), 0)
    expected = remove_small_components(
        (prob >= np.ceil(0.35 * 255)) & Fragment(test / "a").mask(), 3
    )
    np.testing.assert_array_equal(maps["a"].astype(bool), expected)


def test_offline_submission_script(tmp_path):
    """submission/predict.py: a folder of runs + test data -> validated CSV, evaluation.json found."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "submission" / "predict.py"
    spec = importlib.util.spec_from_file_location("offline_predict", script)
    offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline)
    test = tmp_path / "data" / "test"
    write_fragment(test, "a", shape=(50, 45))
    runs = tmp_path / "inkkit-runs"
    make_run(runs, "fold0", tiny_sam_config(), seed=0)
    make_run(runs, "fold1", tiny_sam_config(), seed=1)
    (runs / "evaluation.json").write_text(json.dumps({"threshold": 0.45}))
    out = tmp_path / "submission.csv"
    argv = [
        "--runs",
        str(runs),
        "--data",
        str(test),
        "--out",
        str(out),
        "--work",
        str(tmp_path / "w"),
    ]
    assert offline.main([*argv, "--tta", "identity,hflip"]) == 0
    _, maps = _decoded(out, tmp_path / "data")
    prob = cv2.imread(str(tmp_path / "w" / "a.png"), 0)
    expected = postprocess(prob, Fragment(test / "a").mask(), threshold=0.45)
    np.testing.assert_array_equal(maps["a"].astype(bool), expected)
    record = json.loads((tmp_path / "w" / "predict.json").read_text())
    assert len(record["members"]) == 2 and record["overrides"] == ["infer.tta=[identity,hflip]"]
    # tuned weights in that evaluation.json reach the members (matched by member name)
    tuned = {"threshold": 0.45, "weights": {"tuned": {"tiny (sam vit_tiny)": 0.3}}}
    (runs / "evaluation.json").write_text(json.dumps(tuned))
    assert offline.main([*argv[:-1], str(tmp_path / "w2")]) == 0
    record = json.loads((tmp_path / "w2" / "predict.json").read_text())
    assert [m["weight"] for m in record["members"]] == [0.3, 0.3]


def test_submit_refuses_maps_the_recorded_prediction_did_not_make(pred_setup, tmp_path, capsys):
    from kit.data.fragment import Fragment
    from kit.provenance import fragment_identity

    data, pred = pred_setup
    made = {f: fragment_identity(Fragment(data / "test" / f)) for f in ("a", "b")}
    out = tmp_path / "s.csv"
    # map b is left from before an interrupted predict: predict.json does not list it
    (pred / "predict.json").write_text(json.dumps({"members": [], "fragments": {"a": made["a"]}}))
    assert _submit(pred, data, out, "--threshold", "0.5") == 2
    assert "was not written by the prediction" in capsys.readouterr().err
    # the test data changed after predict: its maps are stale
    (pred / "predict.json").write_text(json.dumps({"members": [], "fragments": made}))
    assert _submit(pred, data, out, "--threshold", "0.5") == 0
    cv2.imwrite(str(data / "test" / "a" / "mask.png"), np.full((40, 30), 255, np.uint8))
    assert _submit(pred, data, out, "--threshold", "0.5") == 2
    assert "changed since" in capsys.readouterr().err
