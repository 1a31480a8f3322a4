"""kit.post.threshold: where a submission's threshold comes from, in which order, and the log."""

import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import kit.cli
from kit.checkpoint import save_checkpoint
from kit.cli import main
from kit.config import Config, PostConfig, config_to_dict
from kit.errors import KitError
from kit.post.threshold import (
    ThresholdPolicy,
    decide_threshold,
    evaluation_candidates,
    find_evaluation,
)
from kit.postprocess import percentile_threshold, postprocess
from kit.rle import decode

SHAPE = (30, 40)


def _checkpoint(run: Path, **post) -> Path:
    """RUN/checkpoints/best.pt carrying a config whose post: section is `post`."""
    config = Config()
    for key, value in post.items():
        setattr(config.post, key, value)
    path = run / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, {"config": config_to_dict(config), "model": {}})
    return path


def _pred(path: Path, checkpoints: list[Path]) -> Path:
    """A prediction directory: one random map a.png and the predict.json naming the members."""
    path.mkdir(parents=True)
    prob = cv2.GaussianBlur(np.random.default_rng(0).random(SHAPE), (0, 0), 1.5)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    cv2.imwrite(str(path / "a.png"), np.rint(prob * 255).astype(np.uint8))
    members = [
        {"checkpoint": str(c), "weight": 1.0, "name": c.parent.parent.name} for c in checkpoints
    ]
    (path / "predict.json").write_text(json.dumps({"members": members}))
    return path


@pytest.fixture
def layout(tmp_path):
    """run_all.sh's layout: OUT/runs/unet/fold{0,1}, OUT/predictions, OUT/evaluation/."""
    out = tmp_path / "out"
    checkpoints = [
        _checkpoint(out / "runs" / "unet" / f"fold{k}", threshold=0.3, min_component_area=5)
        for k in (0, 1)
    ]
    pred = _pred(out / "predictions", checkpoints)
    evaluation = out / "evaluation" / "evaluation.json"
    evaluation.parent.mkdir()
    evaluation.write_text(json.dumps({"threshold": 0.6}))
    return pred, evaluation


def test_order_of_sources(layout):
    pred, evaluation = layout
    p = decide_threshold(pred, threshold=0.45, percentile=None)
    assert (p.kind, p.value, p.source) == ("fixed", 0.45, "--threshold")
    p = decide_threshold(pred, percentile=5)
    assert (p.kind, p.value, p.source) == ("percentile", 5.0, "--percentile")
    p = decide_threshold(pred)  # no option: evaluation.json, found by the search
    assert (p.kind, p.value) == ("fixed", 0.6) and str(evaluation) in p.source
    other = pred.parent / "other.json"
    other.write_text(json.dumps({"threshold": 0.2}))
    assert decide_threshold(pred, evaluation=other).value == 0.2  # --evaluation beats the search
    evaluation.unlink()  # no evaluation.json anywhere: the members' own post: section
    p = decide_threshold(pred)
    assert (p.kind, p.value, p.min_area) == ("fixed", 0.3, 5)
    assert (
        "post: section of the members' configs" in p.source and "no evaluation.json in" in p.source
    )
    assert decide_threshold(pred, min_area=2).min_area == 2  # --min-area beats post:
    (pred / "predict.json").write_text(json.dumps({"members": []}))  # no members: defaults
    p = decide_threshold(pred)
    assert (p.value, p.min_area) == (PostConfig().threshold, PostConfig().min_component_area)
    assert p.source.startswith("PostConfig defaults") and "lists no members" in p.source


def test_min_area_comes_from_the_members_even_with_an_explicit_threshold(layout):
    pred, _ = layout
    p = decide_threshold(pred, threshold=0.5)
    assert p.min_area == 5 and "members' configs" in p.min_area_source
    assert decide_threshold(pred, threshold=0.5, min_area=0).min_area_source == "--min-area"


def test_members_post_percentile(tmp_path):
    checkpoints = [_checkpoint(tmp_path / "runs" / f"fold{k}", percentile=4.0) for k in (0, 1)]
    p = decide_threshold(_pred(tmp_path / "pred", checkpoints))
    assert (p.kind, p.value) == ("percentile", 4.0)
    prob = cv2.imread(str(tmp_path / "pred" / "a.png"), 0)
    mask = np.zeros(SHAPE, bool)
    mask[5:, 3:] = True
    assert p.threshold_for(prob, mask) == percentile_threshold(prob, mask, 4.0)
    assert p.threshold_for(prob, None) == percentile_threshold(prob, np.ones(SHAPE, bool), 4.0)


def test_members_that_disagree_are_an_error_naming_both(tmp_path):
    a = _checkpoint(tmp_path / "runs" / "sam" / "fold0", threshold=0.4)
    b = _checkpoint(tmp_path / "runs" / "unet" / "fold0", threshold=0.6)
    pred = _pred(tmp_path / "pred", [a, b])
    with pytest.raises(KitError, match="disagree on post") as err:
        decide_threshold(pred)
    assert str(a) in str(err.value) and str(b) in str(err.value) and "--threshold" in str(err.value)
    assert decide_threshold(pred, threshold=0.5).min_area == 0  # they agree on the area
    c = _checkpoint(tmp_path / "runs" / "x" / "fold0", threshold=0.4, min_component_area=9)
    with pytest.raises(KitError, match=r"min_component_area.*--min-area"):
        decide_threshold(_pred(tmp_path / "pred2", [a, c]), threshold=0.5)


def test_missing_member_checkpoint_falls_back_to_defaults_and_says_so(tmp_path):
    a = _checkpoint(tmp_path / "runs" / "fold0", threshold=0.3)
    pred = _pred(tmp_path / "pred", [a, tmp_path / "gone" / "checkpoints" / "best.pt"])
    p = decide_threshold(pred)
    assert p.value == PostConfig().threshold and "not found" in p.source and "gone" in p.source


def test_posts_recorded_in_predict_json_are_read_instead_of_the_checkpoints(layout):
    pred, _ = layout
    record = json.loads((pred / "predict.json").read_text())
    for member in record["members"]:  # the checkpoints say threshold 0.3, min area 5
        Path(member["checkpoint"]).unlink()
    record["posts"] = [{"threshold": 0.45, "percentile": 0.0, "min_component_area": 2}] * 2
    (pred / "predict.json").write_text(json.dumps(record))
    p = decide_threshold(pred)
    assert p.min_area == 2 and "members' configs" in p.min_area_source
    record["posts"] = record["posts"][:1]  # not one per member: not a record of these members
    (pred / "predict.json").write_text(json.dumps(record))
    assert "not found" in decide_threshold(pred).min_area_source
    record["posts"] = [{"threshold": 2.0}] * 2
    (pred / "predict.json").write_text(json.dumps(record))
    with pytest.raises(KitError, match=r"post\.threshold"):
        decide_threshold(pred)


def test_both_options_are_mutually_exclusive(layout):
    pred, _ = layout
    with pytest.raises(KitError, match="mutually exclusive"):
        decide_threshold(pred, threshold=0.5, percentile=5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, r"--threshold must be a probability in \[0, 1\], got 1.5"),
        ({"threshold": -0.1}, r"--threshold must be .* \[0, 1\]"),
        ({"threshold": math.nan}, r"--threshold must be .* \[0, 1\]"),
        ({"percentile": 150}, r"--percentile must be a percentage in \(0, 100\], got 150"),
        ({"percentile": 0}, r"--percentile must be .* \(0, 100\]"),
        ({"min_area": -1}, r"--min-area must be >= 0"),
    ],
)
def test_out_of_range_options(layout, options, message):
    with pytest.raises(KitError, match=message):
        decide_threshold(layout[0], **options)


def test_out_of_range_file_values(layout, tmp_path):
    pred, evaluation = layout
    evaluation.write_text(json.dumps({"threshold": 2.0}))
    with pytest.raises(KitError, match=r"'threshold' of .*evaluation.json must be .* \[0, 1\]"):
        decide_threshold(pred)
    evaluation.unlink()
    bad = _checkpoint(tmp_path / "bad" / "fold0", threshold=3.0)
    # the checkpoint's config is checked when it loads, naming the checkpoint and the key
    with pytest.raises(
        KitError, match=r"best\.pt carries a config .*post\.threshold=3\.0 is outside"
    ):
        decide_threshold(_pred(tmp_path / "pred2", [bad]))


def test_search_rule_order(tmp_path):
    """PRED, PRED/.., RUNS, RUNS/.. (RUNS: the folder holding the member runs), each with
    evaluation.json then evaluation/evaluation.json."""
    pred = tmp_path / "work" / "pred"
    runs = tmp_path / "data" / "inkkit-runs" / "unet"
    checkpoints = [runs / f"fold{k}" / "checkpoints" / "best.pt" for k in (0, 1)]
    bases = [pred, pred.parent, runs, runs.parent]
    expected = [b / n for b in bases for n in ("evaluation.json", "evaluation/evaluation.json")]
    assert evaluation_candidates(pred, checkpoints) == [p.resolve() for p in expected]
    assert find_evaluation(pred, checkpoints) is None
    for path in reversed(expected):  # each candidate, when it exists, beats every later one
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        assert find_evaluation(pred, checkpoints) == path.resolve()
    loose = [tmp_path / "pts" / "a.pt", tmp_path / "pts" / "b.pt"]  # loose .pt: their folder
    assert evaluation_candidates(None, loose)[0] == (tmp_path / "pts" / "evaluation.json").resolve()


def _submit(pred, out, *extra) -> int:
    return main(["submit", "--pred", str(pred), "--out", str(out), *extra])


def _ink(out: Path) -> np.ndarray:
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    return decode(row.Predicted, SHAPE).astype(bool)


def test_submit_log_names_the_real_source(layout, capsys):
    pred, evaluation = layout
    out = pred.parent / "s.csv"
    assert _submit(pred, out) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"threshold 0.6000 from {evaluation} (found" in last
    assert "min component area 5 from the post: section" in last
    prob = cv2.imread(str(pred / "a.png"), 0)
    np.testing.assert_array_equal(_ink(out), postprocess(prob, None, threshold=0.6, min_area=5))
    assert _submit(pred, out, "--percentile", "5") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "top 5 % of mask pixels from --percentile" in last and str(evaluation) not in last
    evaluation.unlink()
    assert _submit(pred, out, "--min-area", "0") == 0  # the members' post.threshold 0.3
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "threshold 0.3000 from the post: section" in last and "area 0 from --min-area" in last
    np.testing.assert_array_equal(_ink(out), postprocess(prob, None, threshold=0.3))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "0.5", "--percentile", "5"], "mutually exclusive"),
        (["--threshold", "1.5"], "--threshold must be a probability in [0, 1], got 1.5"),
        (["--percentile", "150"], "--percentile must be a percentage in (0, 100], got 150"),
    ],
)
def test_submit_rejects_bad_options_in_one_line(layout, capsys, extra, message):
    pred, _ = layout
    out = pred.parent / "x.csv"
    assert _submit(pred, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_policy_is_recordable_as_json(layout):
    p = decide_threshold(layout[0])
    assert ThresholdPolicy(**json.loads(json.dumps(p.to_dict()))) == p
    assert set(p.to_dict()) == {"kind", "value", "min_area", "source", "min_area_source"}


def test_offline_script_uses_the_same_search(tmp_path, monkeypatch):
    """submission/predict.py finds evaluation.json by find_evaluation and hands it to both
    predict (tuned weights) and submit; Kaggle layout: one config's runs below the dataset root."""
    script = Path(__file__).resolve().parents[2] / "submission" / "predict.py"
    spec = importlib.util.spec_from_file_location("offline_predict_search", script)
    offline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline)
    root = tmp_path / "inkkit-runs"
    checkpoints = [_checkpoint(root / "unet" / f"fold{k}") for k in (0, 1)]
    evaluation = root / "evaluation.json"
    evaluation.write_text(json.dumps({"threshold": 0.4, "weights": {"tuned": {}}}))
    calls = []
    monkeypatch.setattr(kit.cli, "main", lambda argv: calls.append(argv) or 0)
    work = tmp_path / "work"
    argv = ["--runs", str(root / "unet"), "--data", str(tmp_path), "--work", str(work)]
    assert offline.main(argv) == 0
    predict, submit = calls
    assert find_evaluation(work, checkpoints) == evaluation.resolve()
    assert predict[predict.index("--evaluation") + 1] == str(evaluation.resolve())
    assert submit[submit.index("--evaluation") + 1] == str(evaluation.resolve())
    # the rule's order, not a search of its own: beside the predictions beats beside the runs
    near = tmp_path / "evaluation.json"
    near.write_text(json.dumps({"threshold": 0.5}))
    calls.clear()
    assert offline.main(argv) == 0
    assert calls[1][calls[1].index("--evaluation") + 1] == str(near.resolve())
    assert "--evaluation" not in calls[0]  # it holds no tuned weights
    calls.clear()
    assert offline.main([*argv, "--threshold", "0.5", "--percentile", "5"]) == 2
    assert calls == []  # refused before predicting
