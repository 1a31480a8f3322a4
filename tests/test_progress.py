"""Progress bars: tqdm on a terminal, one summary line elsewhere, nothing with --no-progress."""

from __future__ import annotations

import pytest

from kit import progress
from kit.cli import main


@pytest.fixture
def terminal(monkeypatch):
    def set_terminal(value: bool) -> None:
        monkeypatch.setattr(progress, "_terminal", lambda: value)

    return set_terminal


def test_off_a_terminal_a_bar_is_one_summary_line(terminal, capsys):
    terminal(False)
    bar = progress.progress_bar(total=5, desc="fragment a", unit="tile")
    for _ in range(5):
        bar.update(1)
        bar.set_postfix(loss="0.31")
    bar.close()
    bar.close()  # closing twice prints once
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("fragment a: 5/5 tile in ") and err[0].endswith(", loss 0.31")
    assert "\r" not in err[0]


def test_iterating_counts_and_a_transient_or_disabled_bar_prints_nothing(terminal, capsys):
    terminal(False)
    assert list(progress.progress_bar([1, 2, 3], desc="probe")) == [1, 2, 3]
    assert capsys.readouterr().err.startswith("probe: 3/3 it in ")
    list(progress.progress_bar([1, 2], desc="labels", leave=False))
    list(progress.progress_bar([1, 2], desc="evaluate", enabled=False))
    assert capsys.readouterr().err == ""


def test_on_a_terminal_it_is_tqdm(terminal):
    from tqdm import tqdm

    terminal(True)
    bar = progress.progress_bar(total=2, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()
    terminal(True)
    assert isinstance(progress.progress_bar(total=2, desc="x", enabled=False), progress.SummaryBar)


def test_demo_data_logs_one_line_per_fragment_and_none_with_no_progress(tmp_path, terminal,
                                                                       capfd):  # fmt: skip
    terminal(False)
    assert main(["demo-data", str(tmp_path / "d"), "--scale", "0.02"]) == 0
    lines = capfd.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"fragment {f}" for f in "123ab"]
    assert all(" 65/65 slice in " in line for line in lines)
    assert main(["demo-data", str(tmp_path / "e"), "--scale", "0.02", "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
