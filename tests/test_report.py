"""`kit report`: the page from a pipeline's outputs; a run that does not exist is an error."""

from kit.cli import main
from kit.config import Config
from kit.data.folds import Region
from kit.run import RunDir


def test_report_of_a_missing_run_fails_and_writes_nothing(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--runs", str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_report_names_members_and_draws_their_curves(tmp_path, capsys):
    run = RunDir(tmp_path / "runs" / "cpu-demo" / "fold0")
    run.start(Config(name="cpu-demo"), {"fold": 0}, [Region("1", 0, 0.0, 1.0)])
    run.metrics_csv.write_text("epoch,step,loss,f05\n1,10,0.9,0.2\n2,20,0.5,0.4\n")
    assert main(["report", "--out", str(tmp_path), "--runs", str(run.path)]) == 0
    printed = capsys.readouterr().out
    assert "ensemble members: cpu-demo (sam vit_b) (1 runs)" in printed
    page = (tmp_path / "report" / "index.html").read_text()
    assert "curves_cpu-demo_fold0.png" in page
    assert (tmp_path / "report" / "curves_cpu-demo_fold0.png").stat().st_size > 0
