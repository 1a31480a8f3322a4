"""Fixtures for the inference tests (helpers live in infer_helpers.py: a unique module name)."""

from pathlib import Path

import pytest
from infer_helpers import write_fragment


@pytest.fixture
def fragment_dir(tmp_path: Path) -> Path:
    return write_fragment(tmp_path / "test", "a")
