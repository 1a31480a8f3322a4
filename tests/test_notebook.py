"""submission/inference.ipynb: valid nbformat-4 JSON whose code cells are exactly the commands of
submission/README.md's notebook step (the block submission/check_offline.sh runs offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

SUBMISSION = Path(__file__).resolve().parents[1] / "submission"
NOTEBOOK = SUBMISSION / "inference.ipynb"


def _readme_block(tag: str) -> list[str]:
    text = (SUBMISSION / "README.md").read_text()
    (block,) = re.findall(rf"^```\w* {tag}\n(.*?)^```$", text, re.M | re.S)
    return block.splitlines()


def _code_lines(notebook: dict) -> list[str]:
    lines = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            lines += "".join(cell["source"]).splitlines()
    return lines


def test_notebook_is_nbformat_4_json():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 4
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_validates_against_the_nbformat_schema():
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(NOTEBOOK, as_version=4))


def test_notebook_cells_are_the_readme_recipe():
    notebook = json.loads(NOTEBOOK.read_text())
    assert _code_lines(notebook) == _readme_block("offline-notebook")


def test_recipe_cells_are_jupyter_commands_and_the_build_never_fetches_dependencies():
    """Shell lines in a notebook need `!`, installs into the kernel `%pip`; every download or
    wheel build names --no-deps (no torch, no CUDA wheels)."""
    for line in _readme_block("offline-notebook"):
        assert line.startswith(("%pip ", "!")), line
        if "pip" in line:
            assert "--no-index" in line
    build = _readme_block("offline-build")
    fetches = [line for line in build if re.search(r"\bpip (wheel|download)\b", line)]
    assert len(fetches) == 2 and all("--no-deps" in line for line in fetches)
    assert build[0].startswith("mkdir -p "), "the folders exist before anything is written"
