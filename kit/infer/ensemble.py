"""Ensembles of run directories and checkpoints: resolve, load, average probability maps.

    resolve_members(specs, weights)  RUN_DIR | RUN_DIR:W | CKPT.pt | DIR of runs -> [Member]
    load_members(members, overrides)  -> [LoadedMember]: model + its own Config, strictly loaded
    predict_ensemble(loaded, fragment) -> uint8 (H, W) = round(Σ wᵢ·pᵢ / Σ wᵢ), pᵢ = member maps
    mean_maps(maps, weights)         -> that mean of given uint8 maps (evaluate, weight search)

Every member keeps its own preprocessing (slices, normalisation, tile, stride, TTA) from its
checkpoint, so a SAM fold and a U-Net fold average correctly. Members are combined as their
8-bit maps, the same numbers `predict` writes for each one alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kit.config import Config, ConfigError, apply_overrides, config_to_dict
from kit.data.fragment import Fragment
from kit.errors import KitError
from kit.io import release_rows, scratch_array
from kit.models import needs_prior
from kit.run import MemberId, RunDir

if TYPE_CHECKING:  # torch loads where a model is built or run: `kit evaluate` never needs it
    import torch


@dataclass(frozen=True)
class Member:
    checkpoint: Path
    weight: float
    member: str  # which model: str(kit.run.MemberId), the key of evaluation.json's weights
    name: str  # this checkpoint: a run's label ("<member> fold K"), or "<member> (<file>)"

    @classmethod
    def of(cls, checkpoint: Path, weight: float = 1.0) -> Member:
        """The member a checkpoint is, named from its run directory or its own config."""
        run = RunDir.of_checkpoint(checkpoint)
        if run is not None:
            member, name = run.member(), run.label
        else:
            from kit.checkpoint import checkpoint_config, load_checkpoint

            config = checkpoint_config(load_checkpoint(checkpoint, mmap=True), checkpoint)
            member = MemberId.of(config)
            name = f"{member} ({checkpoint.name})"
        return cls(checkpoint, weight, str(member), name)


@dataclass
class LoadedMember:
    member: Member
    model: torch.nn.Module
    config: Config


def parse_spec(spec: str) -> tuple[str, float | None]:
    """`PATH` or `PATH:WEIGHT` -> (path, weight or None)."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return spec, None


def explicit_weights(specs: list[str]) -> bool:
    """True when any spec carries its own weight (`PATH:W`)."""
    return any(parse_spec(s)[1] is not None for s in specs)


def resolve_members(specs: list[str], weights: list[float] | None = None) -> list[Member]:
    """Checkpoints named by `specs`, with weights from `PATH:W`, `weights`, or 1.

    A spec is a run directory (its checkpoints/best.pt), a .pt file, or a directory holding
    run directories and/or .pt files (all of them, sorted).
    """
    if weights is not None and len(weights) != len(specs):
        raise KitError(f"--weights has {len(weights)} values for {len(specs)} --runs entries")
    members = []
    for i, spec in enumerate(specs):
        path, weight = parse_spec(spec)
        if weights is not None:
            if weight is not None:
                raise KitError(f"{spec}: give a weight either as RUN:W or in --weights, not both")
            weight = weights[i]
        weight = 1.0 if weight is None else weight
        if not weight >= 0:
            raise KitError(f"{spec}: ensemble weights must be >= 0, got {weight}")
        members += [Member.of(p, weight) for p in _checkpoints(Path(path))]
    if not members or sum(m.weight for m in members) <= 0:
        raise KitError("no ensemble member with a positive weight; check --runs / --weights")
    return members


def _checkpoints(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in (".pt", ".pth"):
            raise KitError(f"{path} is not a checkpoint (.pt) or a run directory")
        return [path]
    if not path.is_dir():
        raise KitError(f"run directory or checkpoint {path} does not exist")
    run = RunDir(path)
    if run.best.is_file():
        return [run.best]
    if run.looks_like_run():
        raise KitError(
            f"run directory {path} has no {run.best.relative_to(path)}: training has not "
            "validated yet; finish or resume it (`python -m kit train ... --resume`), or pass "
            "a .pt file"
        )
    found = sorted(RunDir(p).best for p in path.iterdir() if RunDir(p).best.is_file())
    found += sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())
    if not found:
        raise KitError(
            f"{path} holds no run directory (with {run.best.relative_to(path)}) and no .pt "
            "checkpoint; pass run directories or checkpoint files"
        )
    return found


def load_members(
    members: list[Member], *, overrides: list[str] = (), device: str = "cpu"
) -> list[LoadedMember]:
    """Rebuild every member from its checkpoint alone (strict); `overrides` touch `infer.*` only.

    A run directory whose config.yaml disagrees with its checkpoint's model/data sections is an
    error: the checkpoint came from another run.
    """
    import torch

    from kit.checkpoint import model_from_checkpoint
    from kit.infer.stitch import to_channels_last

    for item in overrides:
        if not item.strip().startswith("infer."):
            raise KitError(f"--set {item}: predict only accepts infer.* overrides (e.g. infer.tta)")
    loaded = []
    for m in members:
        model, config = model_from_checkpoint(m.checkpoint, map_location="cpu")
        _check_run_config(m.checkpoint, config)
        try:
            config = apply_overrides(config, list(overrides))
        except ConfigError as exc:
            raise KitError(f"--set: {exc}") from exc
        if torch.device(device).type == "cuda":  # conv weights only: a Conv3d stays as it is
            model = to_channels_last(model)
        loaded.append(LoadedMember(m, model, config))
    return loaded


def _check_run_config(checkpoint: Path, config: Config) -> None:
    run = RunDir.of_checkpoint(checkpoint)
    run_config = run.config() if run is not None else None
    if run_config is None:
        return
    theirs = config_to_dict(run_config)
    ours = config_to_dict(config)
    diff = [
        f"{section}.{key}"
        for section in ("data", "model")
        for key in ours[section]
        if ours[section][key] != theirs[section].get(key)
    ]
    if diff:
        raise KitError(
            f"{checkpoint} was trained with another config than {run.config_yaml} "
            f"(differs in {', '.join(diff[:6])}); copy the checkpoint back to its own run "
            "directory or pass the .pt file alone"
        )


def check_compatible(loaded: list[LoadedMember], fragment: Fragment) -> None:
    """Fail before any work when a member needs slices or inputs the fragment lacks."""
    from kit.data.preprocess import layer_window

    for lm in loaded:
        data = lm.config.data
        if data.input_mode == "volume":
            z_start, z_end, _ = layer_window(fragment, data)
            if z_end > fragment.n_slices:
                raise KitError(
                    f"{lm.member.checkpoint} reads slices {z_start}..{z_end - 1} but "
                    f"{fragment.path} has {fragment.n_slices}; use a checkpoint trained on "
                    "fewer slices"
                )
        if data.input_mode == "ir" and not fragment.has_ir:
            raise KitError(
                f"{lm.member.checkpoint} reads the infrared image, but {fragment.files.ir} does "
                "not exist (test fragments never have one); use a volume model"
            )


def check_priors(loaded: list[LoadedMember], *, given: bool) -> None:
    """KitError naming the members that need a prior (kit.models.needs_prior) when none is
    given, and the fix."""
    if given:
        return
    needing = [lm.member.name for lm in loaded if needs_prior(lm.config)]
    if needing:
        verb = "needs" if len(needing) == 1 else "need"
        raise KitError(
            f"{', '.join(needing[:3])}{' ...' if len(needing) > 3 else ''} {verb} a prior (a "
            "first-stage probability map of each fragment, model.prompt=mask): pass --prior DIR, "
            "the first stage's `kit predict` output for these fragments"
        )


def predict_ensemble(
    loaded: list[LoadedMember],
    fragment: Fragment,
    *,
    device: str = "cpu",
    progress: bool = True,
    own: tuple[int, int] | None = None,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted mean of the members' maps, uint8 (H, W) (`mean_maps`); `own` rows only when
    given (kit.infer.stitch.predict_fragment). `prior` (uint8 (H, W), a first-stage map of the
    fragment) goes to the members that need one (kit.models.needs_prior); a member that needs
    one and gets none is a KitError. With several members each
    map waits in a scratch file (kit.io.scratch_array) until all are done, so host memory holds
    one member's map and a band of the mean, never an (H, W) float map."""
    from kit.infer.stitch import predict_fragment

    check_compatible(loaded, fragment)
    active = [lm for lm in loaded if lm.member.weight > 0]

    check_priors(loaded, given=prior is not None)
    with_prior = fragment.with_prior(prior)

    def member_map(lm: LoadedMember) -> np.ndarray:
        seen = with_prior if needs_prior(lm.config) else fragment
        return predict_fragment(
            lm.model.to(device), lm.config, seen, device=device, progress=progress,
            label=f"{lm.member.name}: fragment {fragment.id}", own=own,
        )  # fmt: skip

    if len(active) == 1:
        return member_map(active[0])
    maps = []
    for lm in active:
        pred = member_map(lm)
        lm.model.to("cpu")  # one member on the accelerator at a time
        kept = scratch_array(pred.shape, np.uint8)
        for r0, r1 in _bands(kept):
            kept[r0:r1] = pred[r0:r1]
            release_rows(kept, r0, r1)
        maps.append(kept)
        del pred
    return mean_maps(maps, [lm.member.weight for lm in active])


BAND_PIXELS = 1 << 22  # the float32 band mean_maps sums in: 16 MB


def _bands(array: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of `array` of about BAND_PIXELS elements each."""
    rows = max(1, BAND_PIXELS // max(int(np.prod(array.shape[1:])), 1))
    return [(r, min(r + rows, len(array))) for r in range(0, len(array), rows)]


def mean_maps(maps: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of uint8 maps (any shape, all alike; memory-mapped ones are read by bands
    and their pages released), rounded, uint8: what predict_ensemble, evaluate and the weight
    search compute. Per pixel Σᵢ mᵢ·(wᵢ/Σw) in float32, members in order."""
    total = float(sum(weights))
    out = np.empty(maps[0].shape, np.uint8)
    for r0, r1 in _bands(out):
        acc = np.zeros(out[r0:r1].shape, np.float32)
        for m, w in zip(maps, weights, strict=True):
            acc += m[r0:r1] * np.float32(w / total)
            release_rows(m, r0, r1)
        out[r0:r1] = np.clip(np.rint(acc), 0, 255)
    return out
