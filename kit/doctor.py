"""Is this machine, and this dataset, ready for hours of training? Checks before the work.

    environment_checks()  -> [Check]   python, each dependency against pyproject's bounds, CUDA
    data_checks(data)     -> [Check]   every fragment found (kit.data.layout.find_fragments):
                                       layout, size, slices (each opened and read, uint16),
                                       mask (present, not empty), ink labels, infrared

A Check is ("ok" | "note" | "problem", what, detail). A problem is what would make a command
fail (a missing package, a truncated slice, an empty mask); a note is worth knowing but no
failure (no GPU, a train fragment without labels). `kit doctor` prints them and exits 1 on any
problem.
"""

from __future__ import annotations

import importlib
import platform
import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kit.errors import KitError

# distribution name -> the module it provides (where they differ)
MODULES = {"opencv-python-headless": "cv2", "pyyaml": "yaml", "scikit-learn": "sklearn",
           "segment-anything": "segment_anything"}  # fmt: skip


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "note" or "problem"
    what: str
    detail: str


def environment_checks() -> list[Check]:
    required = requirements()
    checks = [_python(required.pop("python", ">=3.11"))]
    checks += [_package(name, spec) for name, spec in required.items()]
    return [*checks, _cuda(), _cpu_bf16()]


def requirements() -> dict[str, str]:
    """{"python": ">=3.11", "torch": ">=2.3", ...}: the kit's runtime requirements, from the
    pyproject.toml of a source checkout, else from the installed inkkit's metadata."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text())["project"]
        lines, python = project["dependencies"], project.get("requires-python", "")
    else:
        dist = metadata.distribution("inkkit")
        lines = [r for r in dist.requires or [] if "extra ==" not in r]
        python = dist.metadata.get("Requires-Python", "")
    found = {"python": python}
    for line in lines:
        name, spec = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
        found[name.lower()] = spec.split(";")[0].strip()
    return found


def satisfies(version: str, spec: str) -> bool:
    """`version` meets every `>=`/`==`/`<` clause of `spec` (numeric parts compared; other
    operators are not judged)."""
    ours = _numbers(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, bound = re.match(r"(>=|==|<=|<|>|~=|!=)?\s*(.*)", clause).groups()
        theirs = _numbers(bound)
        if (op == ">=" and ours < theirs) or (op == "==" and ours != theirs):
            return False
        if (op == "<" and ours >= theirs) or (op == ">" and ours <= theirs):
            return False
    return True


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


def _python(spec: str) -> Check:
    version = platform.python_version()
    ok = satisfies(version, spec)
    return Check("ok" if ok else "problem", f"python {version}",
                 f"needs {spec}" if not ok else f"{spec} required")  # fmt: skip


def _package(name: str, spec: str) -> Check:
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return Check("problem", name, f"not installed (needs {spec}): pip install '{name}{spec}'")
    try:
        importlib.import_module(MODULES.get(name, name.replace("-", "_")))
    except Exception as exc:  # an installed package that does not load is the worst kind
        return Check("problem", f"{name} {version}", f"installed but does not import: {exc}")
    if not satisfies(version, spec):
        return Check("problem", f"{name} {version}", f"needs {spec}: pip install '{name}{spec}'")
    return Check("ok", f"{name} {version}", f"{spec} required" if spec else "")


def _cuda() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("note", "CUDA", "no GPU visible: training runs on the CPU (the cpu-demo "
                     "presets; sam-vit-b and unet-resnet34 are for a GPU)")  # fmt: skip
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16: set train.amp=fp16"
    return Check("ok", f"CUDA {torch.version.cuda}", f"{len(names)} GPU(s): "
                 f"{', '.join(names)}; {bf16}")  # fmt: skip


def _cpu_bf16() -> Check:
    from kit.precision import cpu_has_native_bf16

    if cpu_has_native_bf16():
        return Check("ok", "CPU bf16", "native (AVX512-BF16 or AMX): train.amp: bf16 "
                     "(cpu-demo-unet's) autocasts on the CPU")  # fmt: skip
    return Check("note", "CPU bf16", "no native bf16 instructions: train.amp: bf16 runs in "
                 "float32 on this CPU (emulated bf16 would be slower)")  # fmt: skip


def data_checks(data: str | Path) -> list[Check]:
    """One Check per fragment of `data` (its train and test fragments as every command finds
    them), or one problem saying why none was found."""
    from kit.data.layout import find_fragments

    data = Path(data)
    found: dict[Path, str] = {}  # fragment -> the split it was found for
    why = []
    for split in ("train", "test"):
        try:
            for path in find_fragments(data, split):
                found.setdefault(path, split)
        except KitError as exc:
            why.append(f"{split}: {exc}")
    if not found:
        return [Check("problem", str(data), "; ".join(why))]
    return [_fragment(path, data) for path in found]


def _fragment(path: Path, data: Path) -> Check:
    from kit.data.fragment import Fragment
    from kit.data.layout import layout_of

    name = path.name if path == data else path.relative_to(data).as_posix()
    try:
        fragment = Fragment(path)  # slice sizes agree, PNG sizes match, mask present
        for z in range(fragment.n_slices):  # each slice opens and reads (dtype, truncation)
            fragment.read(z, z + 1, rows=slice(0, 1))
        mask = fragment.mask()  # readable, not empty
        labels = fragment.labels()  # binary
    except KitError as exc:
        return Check("problem", name, str(exc))
    h, w = fragment.shape
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    detail = ", ".join([
        f"{layout_of(path).name} layout",
        f"{h}×{w}",
        f"{fragment.n_slices} slices uint16",
        f"mask {mask.mean():.0%} papyrus",
        f"ink labels {labels[mask].mean():.1%} of papyrus" if labels is not None else "no labels",
        "infrared" if fragment.has_ir else "no infrared",
        f"{size / 1e6:,.1f} MB",
    ])  # fmt: skip
    if labels is None and name.startswith("train/"):
        return Check(
            "note", name, f"{detail}: a train fragment that cannot be trained on or scored"
        )
    return Check("ok", name, detail)
