"""Shared fixtures: a tiny demo dataset in the competition layout, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEMO_SCALE = 1 / 48  # fragment 1 is 170×132, fragment 2 is 309×198; ~1 s to generate


def pytest_addoption(parser):
    parser.addoption(
        "--faults",
        choices=("quick", "full"),
        default=os.environ.get("INKKIT_FAULTS", "quick"),
        help="tests/test_bad_inputs.py kill points: one of each kind (quick) or all (full); "
        "default: $INKKIT_FAULTS, else quick",
    )


def pytest_collection_modifyitems(items):
    """Slow tests first (the rest in collection order): with one worker per core (pyproject's
    addopts), which hands out the first tests one at a time in turn, the long end-to-end tests
    start at once on alternate workers instead of last, when one worker would be left alone
    with them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A demo dataset (seed 0, scale 1/48): train/1,2,3, test/a,b, sample_submission.csv,
    folds.csv, solution.csv. Session-scoped and shared: tests must not modify it."""
    from kit.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=0, scale=DEMO_SCALE)
