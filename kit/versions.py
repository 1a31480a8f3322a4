"""Which versions of the kit and of the packages that shape a model this environment runs.

    versions()                 -> {"inkkit": "0.1.0", "python": "3.11.7", "torch": ..., ...}
    version_differences(saved) -> ["torch 2.3.0 there, 2.14.1 here", ...]

Every checkpoint (kit.checkpoint.save_checkpoint) and run.json (kit.run.RunDir.start) records
`versions()`; loading a checkpoint saved under other versions warns (a checkpoint rebuilds its
model with the code installed now: another timm or segment-anything may build other modules).
Versions come from the installed distributions' metadata, so nothing heavy is imported.
"""

from __future__ import annotations

import platform
from importlib import metadata

# The distributions whose code builds, trains or runs a model; the kit's own version is
# kit.__version__ (the one place it is written: pyproject.toml reads it too).
PACKAGES = ("torch", "torchvision", "timm", "segment-anything", "numpy")


def versions() -> dict[str, str | None]:
    """{"inkkit", "python", then each of PACKAGES}: version strings, None when not installed."""
    from kit import __version__

    found: dict[str, str | None] = {"inkkit": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def version_differences(saved: dict | None) -> list[str]:
    """What differs between a record of `versions()` (e.g. a checkpoint's) and this environment,
    as "torch 2.3.0 there, 2.14.1 here"; python's patch level and packages the record does not
    name are not compared."""
    if not saved:
        return []
    here = versions()
    out = []
    for name, theirs in saved.items():
        ours = here.get(name)
        if name not in here or theirs == ours:
            continue
        if name == "python" and _minor(theirs) == _minor(ours):
            continue
        out.append(f"{name} {theirs or 'absent'} there, {ours or 'absent'} here")
    return out


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None
