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
                               (.tif for maps above TIFF_PIXELS, see `map_suffixes`)
    RUN/oof/regions.csv        the held-out regions (a folds CSV of one fold)

A prediction directory (`kit predict --out PRED`): PRED/<fragment>.png or .tif (`map_suffixes`),
PRED/preview/<fragment>.png and PRED/predict.json (data, members, overrides, format, each
fragment's files, and each member's `post:` section under POSTS, read from its checkpoint).

A probability map is an 8-bit PNG, or for a huge one a tiled BigTIFF with a pyramid
(kit.io.write_tiled_tiff) that a viewer opens at any zoom; readers take either (`read_map`).

An ensemble member is named once, by `MemberId` (config name, model family and variant): the same
member across folds has the same name, which evaluation.json's tuned weights are keyed by; a run
adds its fold (`RunDir.label`, e.g. "cpu-demo (sam vit_tiny) fold 0"). Every file here that
another stage reads back is written atomically (kit.io).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.config import Config
from kit.errors import KitError
from kit.io import (
    read_json,
    read_map,
    remove_temporaries,
    write_csv,
    write_json,
    write_npy,
    write_png,
    write_tiled_tiff,
)

MAP_FORMATS = ("png", "tiff", "auto")
# "auto" writes a map with more pixels than this as TIFF: a PNG of fragment 2's 141 M pixels
# takes seconds to encode, has no pyramid, and image viewers refuse to open it.
TIFF_PIXELS = 2**26
_SUFFIXES = (".png", ".tif")  # readers prefer the first that exists (they hold the same map)


def map_suffixes(shape: tuple[int, int], fmt: str = "auto", *, layout: str = "") -> list[str]:
    """The files a probability map of `shape` is written as under `fmt` (MAP_FORMATS); a
    fragment of the competition layout always gets the 8-bit PNG too (what submit encodes)."""
    if fmt not in MAP_FORMATS:
        raise KitError(f"map format {fmt!r} is not one of {list(MAP_FORMATS)}")
    tiff = fmt == "tiff" or (fmt == "auto" and shape[0] * shape[1] > TIFF_PIXELS)
    return [".png", ".tif"] if tiff and layout == "competition" else [".tif" if tiff else ".png"]


def _map_file(base: Path, suffix: str) -> Path:
    # not base.with_suffix: an id may hold a dot ("20230702.v2"), which it would cut off
    return base.with_name(base.name + suffix)


def _existing_map(base: Path) -> Path:
    """The map file `base`.png or .tif that exists (PNG first), else the PNG path."""
    found = [_map_file(base, s) for s in _SUFFIXES if _map_file(base, s).is_file()]
    return found[0] if found else _map_file(base, _SUFFIXES[0])


def _write_map(base: Path, prob: np.ndarray, suffixes: list[str]) -> list[Path]:
    """`prob` as base + each suffix; the map's files of other formats are removed (a stale PNG
    would otherwise be read in place of the new TIFF)."""
    written = []
    for suffix in _SUFFIXES:
        path = _map_file(base, suffix)
        if suffix not in suffixes:
            path.unlink(missing_ok=True)
        else:
            (write_png if suffix == ".png" else write_tiled_tiff)(path, prob)
            written.append(path)
    return written


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


def member_stem(member: str) -> str:
    """A member's name (str(MemberId), maybe with evaluate's " #2") as a file-name part:
    "cpu-demo (sam vit_b)" -> "cpu-demo_sam_vit_b"."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", member).strip("_") or "member"


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
        """The OOF map file of a fragment (.png, or .tif when it was written as one)."""
        return _existing_map(self.oof / fragment_id)

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
        path = self.oof_map(fragment_id)
        if not path.is_file():
            raise KitError(f"{path} is missing: the run has not validated yet (no best.pt saved)")
        prob = read_map(path)
        if prob is None:
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
        _write_map(self.oof / fragment_id, prob, map_suffixes(prob.shape))

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


POSTS = "posts"  # predict.json's key of its members' post: sections


class PredictionDir:
    """The files of one `kit predict --out PRED` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.predict_json = self.path / "predict.json"

    def map(self, fragment_id: str) -> Path:
        """The map file of a fragment: its PNG, else its TIFF, else (missing) the PNG path."""
        return _existing_map(self.path / fragment_id)

    def map_files(self, fragment_id: str, suffixes: list[str]) -> list[Path]:
        """The files `write_map` writes for these `map_suffixes`."""
        return [_map_file(self.path / fragment_id, s) for s in suffixes]

    def write_map(self, fragment_id: str, prob: np.ndarray, suffixes: list[str]) -> list[Path]:
        """The uint8 map as each of `suffixes` (`map_suffixes`) and its preview; the written
        map files."""
        from kit.pictures import probability_preview

        written = _write_map(self.path / fragment_id, prob, suffixes)
        write_png(self.preview(fragment_id), probability_preview(prob))
        return written

    def read_map(self, fragment_id: str) -> np.ndarray | None:
        """The fragment's uint8 (H, W) map, None when it is missing or unreadable."""
        path = self.map(fragment_id)
        return read_map(path) if path.is_file() else None

    def read_checked(self, fragment_id: str, fragment=None) -> np.ndarray:
        """The fragment's map, refused (KitError naming the fix) when it is missing, was not
        written by the prediction predict.json records, or (given the kit.data.fragment.Fragment)
        was made from other files or another size than the fragment's."""
        from kit.provenance import fragment_identity

        path, pred = self.map(fragment_id), self.path
        prob = self.read_map(fragment_id)
        if prob is None:
            raise KitError(f"{path} is missing or unreadable: predict fragment {fragment_id} first")
        made = self.record().get("fragments")  # what predict finished, with each identity
        if made is not None and fragment_id not in made:
            raise KitError(
                f"{path} was not written by the prediction {self.predict_json} records "
                "(an interrupted or older predict?): rerun `python -m kit predict` into "
                f"{pred}, it redoes only what is missing"
            )
        if fragment is None:
            return prob
        if made is not None and fragment_identity(fragment) != made[fragment_id]:
            raise KitError(
                f"{fragment.path} changed since {path} was predicted: rerun `python -m kit "
                f"predict` into {pred} (it redoes the changed fragments)"
            )
        if fragment.shape != prob.shape:
            h, w = fragment.shape
            raise KitError(
                f"{path} is {prob.shape[0]}×{prob.shape[1]} but the mask of {fragment.path} is "
                f"{h}×{w}: predicted from another dataset?"
            )
        return prob

    def read_prior(self, fragment, rows: list[tuple[int, int]] | None = None) -> np.ndarray:
        """The fragment's map as a first-stage prior (`read_checked`), refused when it does not
        cover `rows` (absolute row ranges the member reads): an out-of-fold prior made by `kit
        evaluate` covers only the held-out rows its predict.json records ("rows")."""
        prob = self.read_checked(fragment.id, fragment)
        covered = self.record().get("rows", {}).get(fragment.id)
        if covered is None or rows is None:
            return prob
        inside = np.zeros(fragment.shape[0], bool)
        for r0, r1 in covered:
            inside[r0:r1] = True
        missing = [(r0, r1) for r0, r1 in rows if not inside[r0:r1].all()]
        if missing:
            r0, r1 = missing[0]
            raise KitError(
                f"{self.map(fragment.id)} is an out-of-fold prior covering rows "
                f"{', '.join(f'{a}..{b}' for a, b in covered)} of fragment {fragment.id}, but "
                f"rows {r0}..{r1} are read too: no fold held them out (fold -1 rows of "
                "pseudo-labelled fragments have no out-of-fold map); train the first stage on "
                "folds that hold out every row, or leave those rows out of the folds CSV"
            )
        return prob

    def identity(self, fragment_ids: list[str]) -> dict:
        """What a member reading these maps as priors was made from: the directory and each
        map file's sha256 (None: missing). Bytes, not mtimes: `kit evaluate` rewrites its
        out-of-fold maps on every run, and the same maps must not retrain the next stage (an
        8-bit map is small next to the fragment's slices)."""
        from kit.provenance import file_digest

        maps = {}
        for fid in sorted(fragment_ids):
            path = self.map(fid)
            maps[fid] = file_digest(path) if path.is_file() else None
        return {"dir": str(self.path.resolve()), "maps": maps}

    def part_file(self, fragment_id: str, key: str, index: int, count: int) -> Path:
        """Rows of one part of a shared-out prediction (kit.infer.parts), until assembled."""
        return self.path / ".parts" / f"{fragment_id}.{key}.{index + 1}of{count}.npy"

    def write_part(self, fragment_id: str, key: str, index: int, count: int, rows) -> None:
        write_npy(self.part_file(fragment_id, key, index, count), rows)

    def read_parts(self, fragment_id: str, key: str, count: int) -> list[np.ndarray] | None:
        """Every part's rows in order, None while one is missing."""
        files = [self.part_file(fragment_id, key, k, count) for k in range(count)]
        if not all(f.is_file() for f in files):
            return None
        return [np.load(f) for f in files]

    def remove_parts(self, fragment_id: str) -> None:
        for f in (self.path / ".parts").glob("*.npy"):  # <id>.<key>.<K>of<N>: ids may hold dots
            if f.name.rsplit(".", 3)[0] == fragment_id:
                f.unlink(missing_ok=True)

    def preview(self, fragment_id: str) -> Path:
        return self.path / "preview" / f"{fragment_id}.png"

    def record(self) -> dict:
        """predict.json ({} when absent)."""
        return read_json(self.predict_json)

    def member_posts(self) -> list[tuple[Path, dict]] | None:
        """(checkpoint, its `post:` section) of each member, as predict.json records them; None
        where it lists no members or holds no sections for them (written before they were
        recorded)."""
        record = self.record()
        members, posts = record.get("members", []), record.get(POSTS)
        if members and isinstance(posts, list) and len(posts) == len(members):
            return [(Path(m["checkpoint"]), p) for m, p in zip(members, posts, strict=True)]
        return None

    def map_ids(self) -> list[str]:
        """Ids of the maps written so far, sorted."""
        found = (p for s in _SUFFIXES for p in self.path.glob(f"*{s}"))
        return sorted({p.stem for p in found if not p.name.startswith(".")})  # not temporaries

    def write_record(self, record: dict) -> None:
        write_json(self.predict_json, record)
