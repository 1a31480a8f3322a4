"""`kit report`: one page from a pipeline's outputs, checked by parsing its HTML; a run that does
not exist is an error."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from kit.cli import main
from kit.config import Config
from kit.data.folds import Region
from kit.rle import encode
from kit.run import RunDir


class _Page(HTMLParser):
    """Tables (rows of cell texts), figure captions, image sources and headings of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables, self.captions, self.images, self.headings = [], [], [], []
        self._cell = self._tag = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        self._tag = tag

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        self._tag = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._tag == "figcaption":
            self.captions.append(data)
        elif self._tag == "h2":
            self.headings.append(data)


def test_report_of_a_missing_run_fails_and_writes_nothing(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--runs", str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


SAM, UNET = "cpu-demo (sam vit_b)", "cpu-demo-unet (unet resnet34)"


@pytest.fixture
def pipeline(tmp_path):
    """OUT_DIR of a 2-member × 2-fold pipeline: runs (run.json with training time, metrics.csv,
    config.yaml), evaluation.json with tuned weights, a test map and its submission row."""
    runs = []
    for name, family, variant, lr in (("cpu-demo", "sam", "vit_b", 1e-4),
                                      ("cpu-demo-unet", "unet", "resnet34", 3e-4)):  # fmt: skip
        for fold in (0, 1):
            config = Config(name=name)
            config.model.family, config.model.variant, config.train.lr = family, variant, lr
            run = RunDir(tmp_path / "runs" / name / f"fold{fold}")
            run.start(config, {"fold": fold}, [Region(str(fold + 1), fold, 0.0, 1.0)])
            run.update_record(trained={"steps": 20, "best_f05": 0.5, "threshold": 0.4,
                                       "seconds": 90.0})  # fmt: skip
            run.metrics_csv.write_text(
                "epoch,step,loss,lr,f05,threshold,tiles_per_s,seconds,loss_focal\n"
                f"1,10,0.9,{lr},0.2,0.3,50,4.0,0\n2,20,0.5,{lr / 2},0.4,0.35,55,4.1,0\n"
            )
            runs.append(str(run.path))
    folds = {str(f): {"f05": 0.6 + f / 10, "best_threshold": 0.4, "best_f05": 0.7,
                      "members": {SAM: 0.3, UNET: 0.5}} for f in (0, 1)}  # fmt: skip
    evaluation = {
        "threshold": 0.45, "f05": 0.6543, "folds": folds,
        "members": {SAM: {"threshold": 0.3, "f05": 0.35, "folds": [0, 1]},
                    UNET: {"threshold": 0.5, "f05": 0.55, "folds": [0, 1]}},
        "weights": {"tuned": {SAM: 0.25, UNET: 0.75}, "f05": 0.6543, "equal_f05": 0.61,
                    "nested_f05": 0.6012, "nested_members": {SAM: 0.33, UNET: 0.52},
                    "step": 0.05},
    }  # fmt: skip
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "evaluation.json").write_text(json.dumps(evaluation))
    overlay = np.zeros((8, 8, 3), np.uint8)
    for fold in (0, 1):
        cv2.imwrite(str(tmp_path / "evaluation" / f"fold{fold}_{fold + 1}_overlay.png"), overlay)
    prob = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (20, 1))
    (tmp_path / "predictions").mkdir()
    cv2.imwrite(str(tmp_path / "predictions" / "a.png"), prob)
    (tmp_path / "submission.csv").write_text(f"Id,Predicted\na,{encode(prob >= 128)}\n")
    return tmp_path, runs


def _report(out, runs, *extra) -> _Page:
    assert main(["report", "--out", str(out), "--runs", *runs, *extra]) == 0
    return _Page((out / "report" / "index.html").read_text())


def test_report_tables_hold_folds_members_nested_estimate_weights_and_runs(pipeline):
    page = _report(*pipeline)
    scores, weights, runs = page.tables[0], page.tables[1], page.tables[-2]
    assert scores[0] == ["", "ensemble", SAM, UNET]
    assert scores[1] == ["fold 0", "0.6000", "0.3000", "0.5000"]
    assert scores[3] == ["pooled", "0.6543", "0.3500", "0.5500"]
    assert scores[4] == ["threshold", "0.450", "0.300", "0.500"]
    assert scores[5] == ["nested", "0.6012", "0.3300", "0.5200"]
    assert weights[1:] == [[SAM, "0.25"], [UNET, "0.75"]]
    assert runs[1][:5] == [f"{SAM} fold 0", "20", "0.5000", "0.400", "1.5 min"]


def test_report_pictures_have_captions_a_legend_and_the_submitted_mask(pipeline):
    out, runs = pipeline
    page = _report(out, runs)
    text = (out / "report" / "index.html").read_text()
    assert "true positive" in text and "false negative" in text and "swatch" in text
    assert not any(c.endswith(".png") for c in page.captions), "captions say what, not files"
    assert "fold 1, fragment 2: held-out rows, ensemble at threshold 0.450" in page.captions
    assert "fragment a (20×32): ensemble probability and the mask submitted" in page.captions
    assert all((out / "report" / src).is_file() for src in page.images)
    assert "test_a.png" in page.images


def test_report_draws_one_curve_figure_per_quantity_and_no_bookkeeping(pipeline):
    out, runs = pipeline
    page = _report(out, runs)
    curves = sorted(src for src in page.images if src.startswith("curve_"))
    # seconds, tiles_per_s, epoch, step are bookkeeping; loss_focal never changes
    assert curves == ["curve_f05.png", "curve_loss.png", "curve_lr.png", "curve_threshold.png"]
    assert any("one line per run" in c for c in page.captions)


def test_report_shows_the_config_once_and_what_differs_per_run(pipeline):
    out, runs = pipeline
    page = _report(out, runs)
    differ = {row[0]: row[1:] for row in page.tables[-1][1:]}
    assert set(differ) == {"name", "model.family", "model.variant", "train.lr"}
    assert differ["train.lr"] == ["0.0001", "0.0001", "0.0003", "0.0003"]
    html = (out / "report" / "index.html").read_text()
    assert html.count("<pre>") == 1 and "settings every run shares" in html


def test_report_time_is_the_runs_training_time_not_only_the_reruns(pipeline, capsys):
    out, runs = pipeline
    capsys.readouterr()
    page = _report(out, runs, "--seconds", "12")
    printed = capsys.readouterr().out
    assert "training 6.0 min summed over the runs (as each recorded it)" in printed  # 4 runs × 90 s
    assert "this invocation 0.2 min" in printed
    assert page.headings[:2] == ["Out-of-fold F0.5", "Out-of-fold pictures"]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(pipeline, tmp_path):
    """The page as a browser draws it: a screenshot that shows the tables and pictures."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    out, runs = pipeline
    _report(out, runs)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1200,2400", f"--screenshot={shot}",
         (out / "report" / "index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2400, 1200)
    drawn = (image < 200).any(axis=2)  # text, table borders and pictures; the page is white
    rows = np.flatnonzero(drawn.any(axis=1))
    assert drawn.mean() > 0.02 and rows[-1] - rows[0] > 1200, "tables and figures fill the page"
    colour = np.ptp(image.astype(int), axis=2) > 60  # the legend, the maps and the curves
    assert colour.sum() > 1000
