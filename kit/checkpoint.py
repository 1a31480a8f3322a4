"""Checkpoint files: atomic writes, clear errors, and a model rebuilt from the file alone.

A checkpoint is a dict with at least
    "config": config_to_dict(config)   the resolved Config (model + preprocessing + ...)
    "model":  state_dict               the weights inference should use (EMA weights if EMA is on)
    "versions": kit.versions.versions()  the kit, python, torch, timm, ... it was saved with
and, for `last.pt`, whatever training needs to resume (optimizer, scheduler, scaler, RNG, step).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from kit.config import Config, ConfigError, config_from_dict
from kit.errors import KitError, KitWarning
from kit.io import write_torch
from kit.versions import version_differences, versions


class CheckpointError(KitError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def save_checkpoint(
    path: str | os.PathLike, state: dict[str, Any], *, keep_previous: Path | None = None
) -> None:
    """Write `state` to `path` atomically: a crash at any moment leaves the old file or the new
    (and, with `keep_previous`, the one it replaced under that name). The versions of this
    environment are recorded in it (`"versions"`)."""
    write_torch(path, {**state, "versions": versions()}, keep_previous=keep_previous)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict:
    """The checkpoint dict; `mmap=True` maps the tensors instead of reading them (for a look
    at its config without reading a SAM's hundreds of MB)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} could not be read ({exc}); is it complete?"
        ) from exc
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise CheckpointError(
            f"{path} is not an inkkit checkpoint (no 'config'/'model'); for Meta SAM weights "
            "use `train --sam-checkpoint`"
        )
    _warn_versions(path, state.get("versions"))
    return state


_warned: set[tuple[str, ...]] = set()  # each difference once per process, not once per member


def _warn_versions(path: Path, saved: dict | None) -> None:
    """A KitWarning when the checkpoint was saved under other package versions than these."""
    differences = tuple(version_differences(saved))
    if differences and differences not in _warned:
        _warned.add(differences)
        warnings.warn(
            f"{path} was saved with other versions ({'; '.join(differences)}); its model is "
            "rebuilt with the code installed here, which may differ: install the versions it "
            "names if its predictions look wrong",
            KitWarning,
            stacklevel=3,
        )


def checkpoint_config(state: dict, path: str | os.PathLike = "checkpoint") -> Config:
    try:
        return config_from_dict(state["config"], source=str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path} carries a config this kit cannot read: {exc}") from exc


def model_from_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Config]:
    """Rebuild the model from the config stored in the checkpoint and load its weights strictly."""
    from kit.models import build_model  # models import torch-heavy code; keep this module light

    state = load_checkpoint(path, map_location)
    config = checkpoint_config(state, path)
    model = build_model(config)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the model its config builds: {exc}"
        ) from exc
    return model.to(map_location).eval(), config


def run_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory's best.pt (else last.pt), or the checkpoint file itself."""
    from kit.run import RunDir

    path = Path(path)
    if path.is_dir():
        try:
            return RunDir(path).checkpoint()
        except KitError as exc:
            raise CheckpointError(str(exc)) from None
    return path


def init_from(model: torch.nn.Module, config: Config, source: str | os.PathLike) -> dict:
    """Copy into `model` every tensor of `source` (a run directory or checkpoint) whose name and
    shape match; the rest keep their initialisation. A checkpoint of another model family is
    refused. Returns {"checkpoint", "loaded": n, "skipped": [names with the reason]}."""
    path = run_checkpoint(source)
    state = load_checkpoint(path)
    theirs = checkpoint_config(state, path).model
    if (theirs.family, theirs.variant) != (config.model.family, config.model.variant):
        raise CheckpointError(
            f"--init-from {path} is a {theirs.family} {theirs.variant} model, this run builds "
            f"{config.model.family} {config.model.variant}: initialise from a run of the same "
            "model.family and model.variant"
        )
    ours = model.state_dict()
    weights, skipped = {}, []
    for name, tensor in state["model"].items():
        if name not in ours:
            skipped.append(f"{name} (not in this model)")
        elif ours[name].shape != tensor.shape:
            skipped.append(f"{name} ({tuple(tensor.shape)} there, {tuple(ours[name].shape)} here)")
        else:
            weights[name] = tensor
    skipped += [f"{name} (not in the checkpoint)" for name in ours if name not in state["model"]]
    if not weights:
        raise CheckpointError(f"--init-from {path}: no tensor of it fits this model")
    model.load_state_dict(weights, strict=False)  # the names left out are listed in `skipped`
    return {"checkpoint": str(path), "loaded": len(weights), "skipped": skipped}
