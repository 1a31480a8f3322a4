"""What a derived file was made from, so a rerun reuses it only when its inputs are the same.

    file_digest(path)         -> sha256 hex of a file (read in chunks: a ViT-B checkpoint in ~1 s)
    fragment_identity(frag)   -> {"shape", "files": {relative path: [size, mtime_ns]}}
    config_digest(config)     -> sha256 hex of the resolved config

A fragment is identified by the sizes and modification times of the files its layout names (never their bytes:
a real fragment is tens of GB), so touching or replacing any of them makes it a new input.
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
    slices, mask, labels, infrared image; the ones that exist)."""
    f = fragment.files
    paths = [*f.slices, f.mask, f.labels, f.ir]
    files = {}
    for p in paths:
        if p is not None and p.is_file():
            st = p.stat()
            files[Path(os.path.relpath(p, f.root)).as_posix()] = [st.st_size, st.st_mtime_ns]
    return {"shape": list(fragment.shape), "files": files}


def config_digest(config) -> str:
    """sha256 of a Config's resolved fields (kit.config.config_to_dict, keys sorted)."""
    from kit.config import config_to_dict

    text = json.dumps(config_to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
