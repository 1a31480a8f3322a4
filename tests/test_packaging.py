"""Packaging: pyproject.toml, the requirements files and CI agree, and the wheel installs a
working `inkkit` command (built and installed offline into a fresh virtualenv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import kit

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(path: Path) -> dict[str, Requirement]:
    """name -> Requirement of a requirements file (`-r` lines and comments skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            found[req.name] = req
    return found


def _extra(name: str) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][name]]
    return {r.name: r for r in reqs}


def test_pyproject_declares_build_system_dependencies_and_the_console_script():
    project = PYPROJECT["project"]
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert project["scripts"] == {"inkkit": "kit.cli:main"}
    module, _, attr = project["scripts"]["inkkit"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[attr]), attr))
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kit.__version__"}
    names = {Requirement(r).name for r in project["dependencies"]}
    assert {"torch", "segment-anything", "timm", "numpy", "tifffile"} <= names
    assert not names & {"pytest", "hypothesis", "ruff"}, "test tools are extras, not runtime"
    assert {"pytest", "hypothesis"} <= set(_extra("test"))


def test_requirements_pin_what_pyproject_asks_for():
    """requirements.txt: the runtime dependencies, each pin inside pyproject's bounds;
    requirements-dev.txt: those plus the [test] and [dev] extras (with ruff's exact pin)."""
    runtime = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    pins = _requirements(ROOT / "requirements.txt")
    assert set(pins) == set(runtime)
    for name, pin in pins.items():
        exact = [s.version for s in pin.specifier if s.operator == "=="]
        for version in exact:
            assert runtime[name].specifier.contains(version), (
                f"{name}=={version} vs {runtime[name]}"
            )
    assert str(pins["torch"].specifier) == "==2.14.1"  # the build on CI's disk
    dev_text = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev_text
    dev = _requirements(ROOT / "requirements-dev.txt")
    extras = {**_extra("test"), **{k: v for k, v in _extra("dev").items() if k != "inkkit"}}
    assert {n: str(r.specifier) for n, r in dev.items()} == {
        n: str(r.specifier) for n, r in extras.items()
    }


def test_ci_runs_the_readme_commands():
    """.ci/run installs and tests with the README's commands, so the README's are what CI checks."""
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_line = re.search(r"^# 2\. the tests.*\n(.+)$", readme, re.M).group(1).strip()
    install, _, command = test_line.partition(" && ")
    assert command in ci
    assert any(line.endswith(install.removeprefix("pip install ")) for line in ci if "pip" in line)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The kit's wheel, built as submission/README.md builds it (offline: no build isolation),
    from a copy of the sources: setuptools writes build/ and *.egg-info beside them."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheels")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "kit", source / "kit", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(out)],
        check=True, env=_offline_pip(), cwd=out,
    )  # fmt: skip
    (found,) = out.glob("inkkit-*.whl")
    return found


def _offline_pip() -> dict[str, str]:
    """pip without this machine's config (extra indexes, constraints) and without an index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}


def test_wheel_holds_the_package_presets_metadata_and_entry_point(wheel):
    assert wheel.name.startswith(f"inkkit-{kit.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "kit/cli/__init__.py" in names and "kit/presets/cpu-demo.yaml" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert "inkkit = kit.cli:main" in entry
    assert "Requires-Dist: torch>=2.3" in metadata
    assert "Provides-Extra: test" in metadata


def test_wheel_installs_offline_into_a_fresh_venv_and_inkkit_runs(wheel, tmp_path):
    """`pip install --no-index` of the wheel into a virtualenv that sees this interpreter's
    packages (as a Kaggle image has torch & co.): `inkkit` lists the commands and presets,
    `--version` is the kit's."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        check=True, env=_offline_pip(),
    )  # fmt: skip
    inkkit = env_dir / "bin" / "inkkit"
    run = {"capture_output": True, "text": True, "cwd": tmp_path, "env": _offline_pip()}
    version = subprocess.run([str(inkkit), "--version"], **run)
    assert version.returncode == 0 and version.stdout.strip() == f"inkkit {kit.__version__}"
    helped = subprocess.run([str(inkkit), "train", "--help"], **run)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: inkkit train") and "cpu-demo-unet" in helped.stdout
    where = subprocess.run([str(python), "-c", "import kit; print(kit.__file__)"], **run)
    assert str(env_dir) in where.stdout, "kit must come from the installed wheel"
