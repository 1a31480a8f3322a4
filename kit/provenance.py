"""What a derived file was made from, so a rerun reuses it only when its inputs are the same.

    file_digest(path)         -> sha256 hex of a file (read in chunks: a ViT-B checkpoint in ~1 s)
    fragment_identity(frag)   -> {"shape", "files": {relative path: [size, mtime_ns]}}
    training_provenance(...)  -> what a training run is made from (run.json "provenance")
    differences(old, new)     -> ["train.lr: 0.0001 -> 0.01", ...]: what changed, for the message

A fragment is identified by the sizes and modification times of the files its layout names (never their bytes:
a real fragment is tens of GB), so touching or replacing any of them makes it a new input; a zarr
volume (thousands of chunk files) by its file count, total size and newest modification time;
and its row of segments.csv, when it has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 22


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fragment_identity(fragment) -> dict:
    """Shape and (size, mtime_ns) of each file a kit.data.fragment.Fragment reads (its layout's
    slices, mask, labels, infrared image, ignore mask; the ones that exist), [files, bytes,
    newest mtime_ns] of its zarr volume, and its segments.csv row ("window") if it has one."""
    f = fragment.files
    paths = [*f.slices, f.mask, f.labels, f.ir, f.ignore]
    files = {}
    for p in paths:
        if p is not None and p.is_file():
            st = p.stat()
            files[_relative(p, f.root)] = [st.st_size, st.st_mtime_ns]
    if f.volume is not None:
        stats = [p.stat() for p in f.volume.rglob("*") if p.is_file()]
        files[_relative(f.volume, f.root)] = [
            len(stats), sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)
        ]  # fmt: skip
    identity = {"shape": list(fragment.shape), "files": files}
    if fragment.window is not None:
        w = fragment.window
        identity["window"] = [w.z_start, w.z_end, w.reverse]
    return identity


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def file_identity(path: str | os.PathLike | None) -> list[int] | None:
    """[size, mtime_ns] of a file, None when there is no such file (a cheap stand-in for its
    bytes: pretrained weights are hundreds of MB)."""
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def training_provenance(
    config, *, fold: int, regions: list, fragments: list, prior: dict | None = None
) -> dict:
    """What a training run is made from: the requested config (before its "auto" fields are
    resolved from the data), the fold, every region of the folds CSV, the identity of each
    fragment it reads and of the weights it starts from, the prior maps it reads (a member that
    needs one: kit.run.PredictionDir.identity), and the kit's version. Two runs with equal
    provenance train the same model."""
    from kit import __version__
    from kit.config import config_to_dict

    m = config.model
    return {
        "kit": __version__,
        "config": config_to_dict(config),
        "fold": fold,
        "regions": [[r.fragment, r.fold, r.row_start, r.row_end] for r in regions],
        "data": {f.id: fragment_identity(f) for f in fragments},
        "weights": {
            "pretrained": file_identity(m.pretrained),
            "init_from": file_identity(m.init_from),
        },
        **({"prior": prior} if prior is not None else {}),
    }


def differences(old: dict, new: dict, *, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested records, as "key: old -> new"
    (fragment file records are summarised as "data.<id> files changed")."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if a == b:
            continue
        if prefix == "data." and isinstance(a, dict) and isinstance(b, dict):
            out.append(f"{name} files changed")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, prefix=f"{name}.")
        else:
            out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
