"""Run and prediction directories: the one place their files are named, and a member's one name.

A training run (`kit train --out RUN`, docs/interface.md):

    RUN/config.yaml            the resolved config (also inside every checkpoint)
    RUN/run.json               dataset, fold, folds CSV, what the run resolved or loaded, and
                               the versions it ran with (kit.versions)
    RUN/metrics.csv            one row per epoch
    RUN/tensorboard/  RUN/report/
    RUN/checkpoints/last.pt    everything to resume (last.prev.pt: the one before it);
                               best.pt: the best held-out F0.5 so far
    RUN/oof/<fragment>.png     uint8 probability of best.pt on the held-out rows, 0 elsewhere
    RUN/oof/regions.csv        the held-out regions (a folds CSV of one fold)

A prediction directory (`kit predict --out PRED`): PRED/<fragment>.png, PRED/preview/<fragment>.png
and PRED/predict.json (data, members, overrides).

An ensemble member is named once, by `MemberId` (config name, model family and variant): the same
member across folds has the same name, which evaluation.json's tuned weights are keyed by; a run
adds its fold (`RunDir.label`, e.g. "cpu-demo (sam vit_tiny) fold 0"). Every file here that
another stage reads back is written atomically (kit.io).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import Config
from kit.errors import KitError
from kit.io import read_json, remove_temporaries, write_csv, write_json, write_png


@dataclass(frozen=True)
class MemberId:
    """Which model a run is a fold of."""

    config: str  # the config's name (preset name or YAML stem)
    family: str
    variant: str

    @classmethod
    def of(cls, config: Config) -> MemberId:
        return cls(config.name, config.model.family, config.model.variant)

    def __str__(self) -> str:
        return f"{self.config} ({self.family} {self.variant})"


def default_run_dir(config_name: str, fold: int, root: str | os.PathLike = "runs") -> Path:
    """Where `kit train` writes without --out: runs/<config>/fold<K>."""
    return Path(root) / config_name / f"fold{fold}"


class RunDir:
    """The files of one training run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_yaml = self.path / "config.yaml"
        self.run_json = self.path / "run.json"
        self.metrics_csv = self.path / "metrics.csv"
        self.tensorboard = self.path / "tensorboard"
        self.report = self.path / "report"
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.last_prev = self.checkpoints / "last.prev.pt"  # the last.pt before the current one
        self.best = self.checkpoints / "best.pt"
        self.oof = self.path / "oof"
        self.regions_csv = self.oof / "regions.csv"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunDir | None:
        """The run a checkpoint file sits in (RUN/checkpoints/X.pt), or None for a loose file."""
        checkpoint = Path(checkpoint)
        if checkpoint.parent.name != "checkpoints":
            return None
        run = cls(checkpoint.parent.parent)
        return run if run.looks_like_run() else None

    def looks_like_run(self) -> bool:
        """True when the directory was started by `kit train` (even if it saved nothing yet)."""
        return self.config_yaml.is_file() or self.checkpoints.is_dir()

    def checkpoint(self) -> Path:
        """best.pt, else last.pt; a KitError naming the run when it holds neither."""
        for path in (self.best, self.last):
            if path.is_file():
                return path
        raise KitError(f"{self.path} holds no checkpoints/best.pt or last.pt: is it a run?")

    def oof_map(self, fragment_id: str) -> Path:
        return self.oof / f"{fragment_id}.png"

    # -- reading -------------------------------------------------------------------------------
    def config(self) -> Config | None:
        """The run's config.yaml, or None when it has none."""
        from kit.config import load_config

        return load_config(str(self.config_yaml)) if self.config_yaml.is_file() else None

    def record(self) -> dict:
        """run.json ({} when absent)."""
        return read_json(self.run_json)

    def member(self) -> MemberId:
        """The member this run is a fold of: from config.yaml, else from its checkpoint."""
        config = self.config()
        if config is None:
            from kit.checkpoint import checkpoint_config, load_checkpoint

            path = self.checkpoint()
            config = checkpoint_config(load_checkpoint(path, mmap=True), path)
        return MemberId.of(config)

    def fold(self) -> int | None:
        """The fold this run holds out (run.json, else regions.csv), or None when neither says."""
        fold = self.record().get("fold")
        if fold is None and self.regions_csv.is_file():
            fold = self.regions()[0].fold
        return None if fold is None else int(fold)

    @property
    def label(self) -> str:
        """ "<member> fold <K>": how this run is named on the terminal and in records; a run
        that records no fold (copied without run.json and regions.csv) is named by its folder,
        so two folds of one member never share a name."""
        fold = self.fold()
        return f"{self.member()} " + (f"({self.path.name})" if fold is None else f"fold {fold}")

    def regions(self) -> list:
        """The held-out regions (kit.data.folds.Region), checked to be of one fold."""
        from kit.data.folds import load_folds

        if not self.path.is_dir():
            raise KitError(f"run directory {self.path} does not exist")
        if not self.regions_csv.is_file():
            raise KitError(
                f"{self.regions_csv} is missing: {self.path} is not a training run directory"
            )
        regions = load_folds(self.regions_csv)
        folds = sorted({r.fold for r in regions})
        if len(folds) != 1:
            raise KitError(f"{self.regions_csv} holds regions of folds {folds}; expected one fold")
        return regions

    def read_oof(self, fragment_id: str, shape: tuple[int, int], source: Path) -> np.ndarray:
        """uint8 (H, W) OOF map of a fragment (at `source`, for the error) of shape `shape`."""
        import cv2

        path = self.oof_map(fragment_id)
        if not path.is_file():
            raise KitError(f"{path} is missing: the run has not validated yet (no best.pt saved)")
        prob = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if prob is None or prob.dtype != np.uint8 or prob.ndim != 2:
            raise KitError(f"{path} is not an 8-bit grayscale probability map")
        if prob.shape != tuple(shape):
            raise KitError(
                f"{path} is {prob.shape[0]}×{prob.shape[1]} but fragment {source} is "
                f"{shape[0]}×{shape[1]}: was the run trained on another dataset?"
            )
        return prob

    # -- writing (atomic) ----------------------------------------------------------------------
    def start(self, config: Config, record: dict, regions: list) -> None:
        """The files a run writes before its first step: config.yaml, run.json (`record` and
        this environment's versions), regions.csv."""
        from kit.config import save_config
        from kit.data.folds import write_folds
        from kit.versions import versions

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(config, self.config_yaml)
        write_json(self.run_json, {**record, "versions": versions()})
        write_folds(regions, self.regions_csv)

    def write_oof(self, fragment_id: str, prob: np.ndarray) -> None:
        write_png(self.oof_map(fragment_id), prob)

    def update_record(self, **fields) -> None:
        """run.json with `fields` set (the rest kept)."""
        write_json(self.run_json, {**self.record(), **fields})

    def write_metrics(self, history: list[dict], first: list[str]) -> None:
        """metrics.csv: one row per epoch; columns `first`, then any others in order of use."""
        keys = list(first)
        for row in history:
            keys += [k for k in row if k not in keys]
        write_csv(self.metrics_csv, keys, ([row.get(k, "") for k in keys] for row in history))

    def clear(self) -> None:
        """Delete everything `kit train` wrote here (for --overwrite); other files stay."""
        import shutil

        for folder in (self.checkpoints, self.oof, self.tensorboard, self.report):
            shutil.rmtree(folder, ignore_errors=True)
        for path in (self.config_yaml, self.run_json, self.metrics_csv):
            path.unlink(missing_ok=True)

    def remove_temporaries(self) -> list[Path]:
        """The half-written files a killed run left (e.g. .last.<pid>.tmp.pt): removed."""
        return remove_temporaries(self.path) if self.path.is_dir() else []


class PredictionDir:
    """The files of one `kit predict --out PRED` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.predict_json = self.path / "predict.json"

    def map(self, fragment_id: str) -> Path:
        return self.path / f"{fragment_id}.png"

    def preview(self, fragment_id: str) -> Path:
        return self.path / "preview" / f"{fragment_id}.png"

    def record(self) -> dict:
        """predict.json ({} when absent)."""
        return read_json(self.predict_json)

    def map_ids(self) -> list[str]:
        """Ids of the maps written so far, sorted."""
        return sorted(p.stem for p in self.path.glob("*.png"))

    def write_record(self, record: dict) -> None:
        write_json(self.predict_json, record)
