"""The bad-input catalogue: what a new user gets wrong, command by command, and what the kit says.

Every case starts from a copy of one tiny finished pipeline (the "site": a dataset, a trained
run, its evaluation, a prediction and a submission), breaks one thing, runs one command and
asserts that
- it exits non-zero (2: a KitError) with ONE line on stderr and no traceback (a case with rc 0
  goes on after ONE `warning: ` line),
- the line matches each of the case's patterns: the file or key at fault, and the fix where the
  kit can know one (a distinctive phrase of it),
- nothing partial is left (no new file, no `.*.tmp*`, `*.partial` or `*.unvalidated`) and nothing
  good is destroyed (every file of the site keeps its bytes), unless the case allows a path.

The second half kills commands with SIGKILL at chosen moments (a subprocess that wraps one kit
function to kill itself there) and checks that a rerun recovers. `--faults full` (or
INKKIT_FAULTS=full) runs every kill point; the default runs one of each kind.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "infer"))
from infer_helpers import make_run, tiny_sam_config, write_fragment

from kit.cli import main

ROOT = Path(__file__).resolve().parents[1]

# A from-scratch SAM of 0.7 M parameters on 32-pixel tiles: the whole site trains in ~1 s.
TINY_YAML = """\
model: {family: sam, variant: vit_tiny4, adapter: conv1x1, input_gain: 1.0}
data: {z_start: 1, z_end: 5, tile: 32, stride: 16}
train: {epochs: 1, steps_per_epoch: 2, batch_size: 4, warmup_steps: 0, num_workers: 0,
        amp: "off", cpu_threads: 1, checkpoint_every: 0}
infer: {batch_size: 32, amp: "off"}
"""
FOLDS_CSV = "fragment,fold,row_start,row_end\n1,0,0.0,1.0\n2,1,0.0,1.0\n"
PLACES = {
    "DATA": "{W}/data",
    "TEST": "{W}/data/test",
    "FOLDS": "{W}/data/folds.csv",
    "TINY": "{W}/tiny.yaml",
    "RUN": "{W}/runs/tiny/fold0",
    "PRED": "{W}/pred",
    "EVAL": "{W}/evaluation/evaluation.json",
}
LEFTOVERS = ("*.tmp*", "*.partial*", "*.unvalidated")


@pytest.fixture(autouse=True)
def _one_thread():
    """Training here runs one torch thread (train.cpu_threads: 1 sets it; restored after)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random(shape), (0, 0), 3) > 0.5


def build_site(w: Path) -> Path:
    """data/ (train/1, 2 with labels, test/a, b, folds.csv, sample_submission.csv), tiny.yaml,
    runs/tiny/fold0 (trained), evaluation/, pred/ and submission.csv, through the CLI."""
    data = w / "data"
    for i, (fid, shape) in enumerate([("1", (72, 56)), ("2", (64, 64))]):
        write_fragment(
            data / "train", fid, shape=shape, n_slices=6, seed=i, labels=_blobs(shape, i)
        )
    for i, (fid, shape) in enumerate([("a", (64, 48)), ("b", (48, 64))]):
        write_fragment(data / "test", fid, shape=shape, n_slices=6, seed=10 + i)
    (data / "sample_submission.csv").write_text("Id,Predicted\na,1 1\nb,1 1\n")
    (data / "folds.csv").write_text(FOLDS_CSV)
    (w / "tiny.yaml").write_text(TINY_YAML)
    p = {k: v.format(W=w) for k, v in PLACES.items()}
    steps = [
        f"train --data {p['DATA']} --folds {p['FOLDS']} --config {p['TINY']} --fold 0 "
        f"--out {p['RUN']}",
        f"evaluate --runs {p['RUN']} --out {w}/evaluation --no-pictures --no-progress",
        f"predict --data {p['TEST']} --runs {p['RUN']} --out {p['PRED']} --no-progress",
        f"submit --pred {p['PRED']} --data {p['TEST']} --out {w}/submission.csv",
    ]
    for step in steps:
        assert main(shlex.split(step)) == 0, step
    return w


@pytest.fixture(scope="module")
def site_template(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"))


def copy_site(template: Path, target: Path) -> Path:
    """A copy whose records name the copy. Checkpoints are hard links (cases replace files,
    never write into them); mtimes are kept, so predict.json's fragment identities still hold."""

    def link_or_copy(src: str, dst: str) -> None:
        (os.link if src.endswith(".pt") else shutil.copy2)(src, dst)

    shutil.copytree(template, target, copy_function=link_or_copy)
    for path in target.rglob("*.json"):
        path.write_text(path.read_text().replace(str(template), str(target)))
    return target


@pytest.fixture
def site(site_template, tmp_path) -> Path:
    return copy_site(site_template, tmp_path / "w")


# -- how a case breaks the site (each replaces files: the site's checkpoints are hard links) ---
Build = Callable[[Path], None]


def _path(w: Path, rel: str) -> Path:
    return w / _fill(rel, Path("."))


def write(rel: str, text: str) -> Build:
    def build(w: Path) -> None:
        path = _path(w, rel)
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return build


def remove(rel: str) -> Build:
    def build(w: Path) -> None:
        path = _path(w, rel)
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return build


def truncate(rel: str, keep: float = 0.5) -> Build:
    def build(w: Path) -> None:
        path = _path(w, rel)
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[: int(len(data) * keep)])

    return build


def png(rel: str, make: Callable[[tuple[int, int]], np.ndarray]) -> Build:
    """Replace an image by make(its shape)."""

    def build(w: Path) -> None:
        path = _path(w, rel)
        shape = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
        path.unlink()
        assert cv2.imwrite(str(path), make(shape))

    return build


def tif(rel: str, image: np.ndarray) -> Build:
    def build(w: Path) -> None:
        import tifffile

        path = _path(w, rel)
        path.unlink()
        tifffile.imwrite(path, image)

    return build


def as_segment(rel: str) -> Build:
    """A competition fragment turned into a scroll segment: layers/NN.tif and <id>_mask.png."""

    def build(w: Path) -> None:
        path = _path(w, rel)
        (path / "surface_volume").rename(path / "layers")
        (path / "mask.png").rename(path / f"{path.name}_mask.png")

    return build


def as_zarr(rel: str, *, ndim: int = 3) -> Build:
    """A competition fragment turned into a zarr volume <id>/<id>.zarr (with `ndim` axes: 3 is
    (z, y, x), 4 adds a channel axis in front) and <id>_mask.png."""

    def build(w: Path) -> None:
        import tifffile
        import zarr

        path = _path(w, rel)
        volume = np.stack([tifffile.imread(p) for p in sorted(path.glob("surface_volume/*.tif"))])
        shutil.rmtree(path / "surface_volume")
        zarr.create_array(
            str(path / f"{path.name}.zarr"), data=volume.reshape((1,) * (ndim - 3) + volume.shape)
        )
        (path / "mask.png").rename(path / f"{path.name}_mask.png")

    return build


def to_8bit_png(rel: str) -> Build:
    """A 16-bit TIFF layer replaced by an 8-bit PNG of the same number."""

    def build(w: Path) -> None:
        import tifffile

        path = _path(w, rel)
        image = tifffile.imread(path)
        path.unlink()
        assert cv2.imwrite(str(path.with_suffix(".png")), (image // 257).astype(np.uint8))

    return build


def edit_json(rel: str, change: Callable[[dict], None]) -> Build:
    def build(w: Path) -> None:
        path = _path(w, rel)
        record = json.loads(path.read_text())
        change(record)
        path.unlink()
        path.write_text(json.dumps(record))

    return build


def replace_text(rel: str, old: str, new: str) -> Build:
    def build(w: Path) -> None:
        path = _path(w, rel)
        text = path.read_text()
        assert old in text, (path, old)
        path.unlink()
        path.write_text(text.replace(old, new))

    return build


def touch(rel: str) -> Build:
    def build(w: Path) -> None:
        st = _path(w, rel).stat()
        os.utime(_path(w, rel), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    return build


def copy(src: str, dst: str) -> Build:
    def build(w: Path) -> None:
        shutil.copytree(_path(w, src), _path(w, dst), copy_function=shutil.copy2)

    return build


def other_model_run(rel: str) -> Build:
    """A run of another SAM variant (vit_tiny, random weights)."""

    def build(w: Path) -> None:
        target = _path(w, rel)
        make_run(target.parent, target.name, tiny_sam_config(), seed=0)

    return build


def foreign_checkpoint(rel: str) -> Build:
    def build(w: Path) -> None:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, _path(w, rel))

    return build


# -- the catalogue ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    argv: str  # a kit command line ("run_all.sh" for the pipeline script), with {W}, {DATA}, ...
    expect: tuple[str, ...]  # regexes stderr must match: the file or key, then the fix
    build: tuple[Build, ...] = ()
    allow: tuple[str, ...] = ()  # globs (relative to the site) the command may create or change
    forbid: tuple[str, ...] = ()  # regexes stderr must not match (wrong advice)
    env: dict = field(default_factory=dict)  # run_all.sh's environment, on top of RUN_ALL_ENV
    full_disk: bool = False  # run in a subprocess that cannot grow any file past 16 bytes
    rc: int = 2  # 0: the command goes on, and one "warning: " line matches `expect`


def case(name: str, argv: str, *expect: str, xfail: str | None = None, **kw):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Bad(argv, expect, **kw), id=name, marks=marks)


TRAIN = "train --data {DATA} --folds {FOLDS} --config {TINY} --fold 0 --out {W}/new"
RETRAIN = "train --data {DATA} --folds {FOLDS} --config {TINY} --fold 0 --out {RUN}"
PREDICT = "predict --no-progress --data {TEST} --runs {RUN} --out {W}/new"
EVALUATE = "evaluate --no-pictures --no-progress --runs {RUN} --out {W}/new"
SUBMIT = "submit --pred {PRED} --data {TEST} --out {W}/submission.csv"
VALIDATE = "validate {W}/submission.csv --data {TEST}"
REPORT = "report --out {W} --runs {RUN}"
SUB = "data/sample_submission.csv"
CFG = "{W}/c.yaml"


def _zeros(shape):
    return np.zeros(shape, np.uint8)


CASES = [
    # demo-data ------------------------------------------------------------------------------
    case("demo-scale-zero", "demo-data {W}/demo --scale 0", r"--scale", r"in \(0, 1\]"),
    case("demo-scale-above-one", "demo-data {W}/demo --scale 2", r"--scale", r"in \(0, 1\]"),
    case("demo-variant-unknown", "demo-data {W}/demo --variant glossy", r"'glossy'", r"valid: \["),
    case("demo-style-no-value", "demo-data {W}/demo --style surface_mean", r"'surface_mean'",
         r"field=value"),
    case("demo-style-unknown-field", "demo-data {W}/demo --style glow=1", r"'glow'", r"valid: \["),
    case("demo-style-bad-value", "demo-data {W}/demo --style surface_mean=dark",
         r"surface_mean", r"expected a number"),
    case("demo-into-a-dataset", "demo-data {DATA}", r"/data is not empty",
         r"give a new directory"),
    # fragments ------------------------------------------------------------------------------
    case("fragments-data-missing", "fragments --data {W}/nope", r"nope does not exist",
         r"pass a dataset directory"),
    case("fragments-none-there", "fragments --data {W}/runs", r"runs holds no fragment "
         r"\(a directory with surface_volume/00\.tif", r"pass a dataset directory"),
    case("fragments-one-broken", "fragments --data {DATA}", r"train/2/surface_volume is missing",
         build=(remove("data/train/2/surface_volume"),)),
    # doctor (a dataset's problems are its report, exit 1: tests/test_doctor.py) ------------
    case("doctor-data-missing", "doctor --data {W}/nope", r"nope does not exist",
         r"pass a dataset directory"),
    # folds ----------------------------------------------------------------------------------
    case("folds-data-missing", "folds --data {W}/nope --out {W}/f.csv", r"nope does not exist",
         r"pass a dataset directory \(with train/ and test/\)"),
    case("folds-no-labels", "folds --data {DATA} --out {W}/f.csv",
         r"train/1/inklabels\.png is missing", r"pass a dataset whose train/ fragments are "
         r"labelled", build=(remove("data/train/1/inklabels.png"),
                                   remove("data/train/2/inklabels.png"))),
    case("folds-k-zero", "folds --data {DATA} --out {W}/f.csv --k 0", r"k must be at least 1, got 0"),
    case("folds-k-too-many", "folds --data {DATA} --out {W}/f.csv --k 500",
         r"cannot make 500 folds", r"smaller --k"),
    case("folds-labels-not-binary", "folds --data {DATA} --out {W}/f.csv",
         r"train/1/inklabels\.png", r"must be binary",
         build=(png("data/train/1/inklabels.png", lambda s: np.full(s, 7, np.uint8)),)),
    case("folds-labels-wrong-size", "folds --data {DATA} --out {W}/f.csv",
         r"train/1/inklabels\.png is 10×10", r"must be the same size",
         build=(png("data/train/1/inklabels.png", lambda s: _zeros((10, 10))),)),
    # probe ----------------------------------------------------------------------------------
    case("pseudo-label-bands", "pseudo-label --pred {PRED} --data {DATA} --out {W}/pl --ink 0.5 --background 0.6",
         r"--background \(0\.6\) must be below --ink \(0\.5\)", r"pixels between them are ignored"),
    case("pseudo-label-no-maps", "pseudo-label --pred {W}/none --data {DATA} --out {W}/pl",
         r"holds no prediction maps", r"run `python -m kit predict` first"),
    case("probe-test-data", "probe --data {TEST} --out {W}/probe",
         r"test/a/inklabels\.png is missing", r"whose train/ fragments are labelled"),
    case("probe-no-labels", "probe --data {DATA} --out {W}/probe", r"1/inklabels\.png is missing",
         r"whose train/ fragments are labelled", build=(remove("data/train/1/inklabels.png"),
                                           remove("data/train/2/inklabels.png"))),
    case("probe-slice-truncated", "probe --data {DATA} --out {W}/probe",
         r"surface_volume/03\.tif is truncated", r"re-copy the file",
         build=(truncate("data/train/1/surface_volume/03.tif"),)),
    case("probe-slice-gap", "probe --data {DATA} --out {W}/probe", r"missing slice\(s\) \[2\]",
         r"without gaps", build=(remove("data/train/1/surface_volume/02.tif"),)),
    case("probe-slice-mixed-bit-depth", "probe --data {DATA} --out {W}/probe",
         r"01\.tif is 8-bit, but 00\.tif is 16-bit", r"one bit depth",
         build=(tif("data/train/1/surface_volume/01.tif", np.zeros((72, 56), np.uint8)),)),
    case("probe-slice-float", "probe --data {DATA} --out {W}/probe", r"01\.tif holds float32",
         r"single-channel uint8 or uint16",
         build=(tif("data/train/1/surface_volume/01.tif", np.zeros((72, 56), np.float32)),)),
    case("probe-slice-other-size", "probe --data {DATA} --out {W}/probe", r"01\.tif is 9×9",
         r"all slices of a fragment must match",
         build=(tif("data/train/1/surface_volume/01.tif", np.zeros((9, 9), np.uint16)),)),
    case("probe-mask-missing", "probe --data {DATA} --out {W}/probe", r"1/mask\.png is missing",
         r"every fragment needs a mask", build=(remove("data/train/1/mask.png"),)),
    case("probe-mask-not-png", "probe --data {DATA} --out {W}/probe", r"1/mask\.png",
         r"re-copy the file", build=(write("data/train/1/mask.png", "not a png"),)),
    # train: data and folds ------------------------------------------------------------------
    case("train-data-missing", TRAIN + " --data {W}/nope", r"nope does not exist",
         r"pass a dataset directory \(with train/ and test/\)"),
    case("train-folds-missing", TRAIN + " --folds {W}/none.csv", r"none\.csv does not exist",
         r"python -m kit folds --data"),
    case("train-fold-absent", TRAIN + " --fold 7", r"folds\.csv has no regions for fold 7",
         r"folds there: \[0, 1\]"),
    case("train-folds-bad-header", TRAIN, r"folds\.csv: header must be exactly "
         r"fragment,fold,row_start,row_end", build=(write("{FOLDS}", "id,k\n1,0\n"),)),
    case("train-folds-rows-reversed", TRAIN, r"folds\.csv line 2",
         r"0 <= row_start < row_end <= 1", build=(write("{FOLDS}", FOLDS_CSV.replace(
             "1,0,0.0,1.0", "1,0,0.6,0.2")),)),
    case("train-folds-fold-not-integer", TRAIN, r"folds\.csv line 2", r"fold is an integer",
         build=(write("{FOLDS}", FOLDS_CSV.replace("1,0,0.0", "1,zero,0.0")),)),
    case("train-folds-overlap", TRAIN, r"folds\.csv: fragment 1 regions .* overlap",
         build=(write("{FOLDS}", FOLDS_CSV + "1,1,0.5,1.0\n"),)),
    case("train-folds-unknown-fragment", TRAIN, r"fragment '9' not found under .*data",
         r"python -m kit folds --data", build=(write("{FOLDS}", FOLDS_CSV + "9,1,0.0,1.0\n"),)),
    case("train-fold-leaves-nothing-to-train", TRAIN, r"fold 0 leaves no training region",
         build=(write("{FOLDS}", "fragment,fold,row_start,row_end\n1,0,0.0,1.0\n"),)),
    case("train-fragment-no-volume", TRAIN, r"train/2/surface_volume is missing",
         r"surface_volume/00\.tif", build=(remove("data/train/2/surface_volume"),)),
    case("train-training-labels-missing", TRAIN, r"train/2/inklabels\.png is missing",
         build=(remove("data/train/2/inklabels.png"),)),
    case("train-held-out-labels-missing", TRAIN, r"train/1/inklabels\.png is missing",
         build=(remove("data/train/1/inklabels.png"),)),
    case("train-held-out-fold-without-ink", TRAIN, r"^warning: the rows fold 0 holds out "
         r"\(.*folds\.csv\) contain no ink", r"python -m kit folds --data", rc=0,
         allow=("new/*",), build=(png("data/train/1/inklabels.png", _zeros),)),
    case("train-slices-beyond-volume", TRAIN + " --set data.z_end=40",
         r"slices 1\.\.39 requested", r"set data\.z_start/z_end inside that range"),
    # train: config --------------------------------------------------------------------------
    case("train-preset-unknown", TRAIN + " --config nosuch", r"unknown config 'nosuch'",
         r"one of \['cpu-demo'"),
    case("train-config-file-missing", TRAIN + " --config {W}/none.yaml",
         r"config file .*none\.yaml does not exist"),
    case("train-config-yaml-malformed", TRAIN + " --config " + CFG, r"c\.yaml is not valid YAML",
         r"at line 3, column 1", r"fix the file", build=(write(CFG, "train:\n  lr: [1e-3\n"),)),
    case("train-config-not-a-mapping", TRAIN + " --config " + CFG, r"c\.yaml",
         r"expected a mapping", build=(write(CFG, "- lr\n- 1e-3\n"),)),
    case("train-config-unknown-key", TRAIN + " --config " + CFG, r"unknown keys \['lrr'\]",
         r"valid: \[", build=(write(CFG, "train: {lrr: 1e-3}\n"),)),
    case("train-set-no-equals", TRAIN + " --set train.lr", r"'train\.lr'",
         r"section\.key=value"),
    case("train-set-unknown-key", TRAIN + " --set train.lrr=1", r"unknown key 'lrr'", r"keys: \["),
    case("train-set-unknown-section", TRAIN + " --set trian.lr=1", r"unknown section 'trian'",
         r"sections: \["),
    case("train-set-value-not-yaml", TRAIN + " --set train.lr=[1e-3", r"'train\.lr=\[1e-3'",
         r"not valid YAML"),
    case("train-set-tile-negative", TRAIN + " --set data.tile=-48",
         r"data\.tile=-48 is outside \[1, inf\)"),
    case("train-set-lr-nan", TRAIN + " --set train.lr=nan", r"train\.lr=nan is outside"),
    case("train-set-batch-size-zero", TRAIN + " --set train.batch_size=0",
         r"train\.batch_size=0 is outside \[1, inf\)"),
    case("train-set-epochs-fraction", TRAIN + " --set train.epochs=2.5", r"train\.epochs",
         r"expected int"),
    case("train-set-amp-fp8", TRAIN + " --set train.amp=fp8", r"train\.amp='fp8'",
         r"is not one of \['auto', 'bf16', 'fp16', 'off'\]"),
    case("train-set-window-unknown", TRAIN + " --set infer.window=foo", r"infer\.window='foo'",
         r"is not one of \['gaussian'"),
    case("train-set-tta-unknown", TRAIN + " --set infer.tta=[flip]", r"infer\.tta",
         r"\['flip'\]; choose from \['identity'"),
    case("train-set-slices-reversed", TRAIN + " --set data.z_start=5 --set data.z_end=2",
         r"data\.z_end=2 must be above data\.z_start=5"),
    case("train-set-flag-not-bool", TRAIN + " --set train.jitter=maybe", r"train\.jitter",
         r"expected true/false"),
    # train: options and run directories -----------------------------------------------------
    case("train-max-steps-zero", TRAIN + " --max-steps 0", r"--max-steps must be at least 1"),
    case("train-budget-negative", TRAIN + " --budget -1", r"--budget must be at least 0"),
    case("train-sam-checkpoint-missing", TRAIN + " --sam-checkpoint {W}/sam.pth",
         r"--sam-checkpoint .*sam\.pth does not exist"),
    case("train-init-from-missing", TRAIN + " --init-from {W}/nope", r"--init-from .*nope"),
    case("train-init-from-other-model", TRAIN + " --init-from {W}/other", r"sam vit_tiny model",
         r"same model\.family and model\.variant", build=(other_model_run("other"),)),
    case("train-device-unknown", TRAIN + " --device tpu", r"--device", r"cpu"),
    case("train-finished-more-epochs", RETRAIN + " --set train.epochs=2", r"fold0 holds a run of "
         r"other inputs \(config\.train\.epochs: 1 -> 2\)", r"add --resume to continue it"),
    case("train-resume-other-lr", RETRAIN + " --resume --set train.epochs=2 --set train.lr=1",
         r"fold0 holds a run of other inputs", r"config\.train\.lr: 0\.0001 -> 1\.0",
         r"add --overwrite to train it again"),
    case("train-finished-other-lr", RETRAIN + " --set train.lr=0.5", r"fold0 holds a run of other "
         r"inputs", r"config\.train\.lr: 0\.0001 -> 0\.5", r"add --overwrite"),
    case("train-finished-other-config", RETRAIN + " --config " + CFG, r"fold0 holds a run of "
         r"other inputs", r"input_gain: 1\.0 -> 2", r"add --overwrite",
         build=(write(CFG, TINY_YAML.replace("input_gain: 1.0", "input_gain: 2")),)),
    case("train-finished-other-fold", RETRAIN + " --fold 1", r"fold0 holds a run of other inputs",
         r"fold: 0 -> 1", r"add --overwrite"),
    case("train-finished-other-data", RETRAIN + " --data {W}/data2", r"fold0 holds a run of other "
         r"inputs", r"data", r"add --overwrite", build=(copy("data", "data2"),
         remove("data2/train/2/inklabels.png"), png("data2/train/1/inklabels.png", _zeros))),
    case("train-last-checkpoint-truncated", RETRAIN + " --resume --set train.epochs=2",
         r"fold0/checkpoints/last\.pt could not be read", r"mv .*last\.prev\.pt .*last\.pt, "
         r"then --resume", r"or start over with --overwrite",
         build=(truncate("{RUN}/checkpoints/last.pt"),)),
    case("train-last-checkpoint-truncated-no-previous", RETRAIN + " --resume --set train.epochs=2",
         r"fold0/checkpoints/last\.pt could not be read", r"start over with --overwrite",
         build=(truncate("{RUN}/checkpoints/last.pt"), remove("{RUN}/checkpoints/last.prev.pt"))),
    case("train-disk-full", TRAIN, r"new/config\.yaml", r"free disk space", full_disk=True),
    # predict --------------------------------------------------------------------------------
    case("predict-data-missing", PREDICT + " --data {W}/nope", r"nope does not exist",
         r"pass a dataset directory"),
    case("predict-data-without-fragments", PREDICT + " --data {W}/runs", r"runs holds no fragment",
         r"pass a dataset directory"),
    case("predict-run-missing", PREDICT + " --runs {W}/nope",
         r"run directory or checkpoint .*nope does not exist"),
    case("predict-run-not-validated", PREDICT, r"fold0 has no checkpoints/best\.pt",
         r"--resume", build=(remove("{RUN}/checkpoints/best.pt"),)),
    case("predict-run-not-a-checkpoint", PREDICT + " --runs {TINY}", r"tiny\.yaml is not a "
         r"checkpoint \(\.pt\)"),
    case("predict-checkpoint-truncated", PREDICT, r"best\.pt could not be read",
         r"is it complete", build=(truncate("{RUN}/checkpoints/best.pt"),)),
    case("predict-checkpoint-foreign", PREDICT + " --runs {W}/sam.pt",
         r"sam\.pt is not an inkkit checkpoint", r"train --sam-checkpoint",
         build=(foreign_checkpoint("sam.pt"),)),
    case("predict-run-config-differs", PREDICT, r"best\.pt was trained with another config than",
         r"pass the \.pt file alone", build=(replace_text("{RUN}/config.yaml", "z_end: 5",
                                                          "z_end: 6"),)),
    case("predict-run-config-invalid", PREDICT, r"fold0/config\.yaml: data\.z_end=6 must be above",
         build=(write("{RUN}/config.yaml", "data: {z_end: 6}\n"),)),
    case("predict-weights-count", PREDICT + " --weights 1 2", r"--weights has 2 values for 1"),
    case("predict-weight-negative", PREDICT + " --runs {RUN}:-1", r"weights must be >= 0"),
    case("predict-set-not-infer", PREDICT + " --set train.lr=1", r"--set train\.lr=1",
         r"only accepts infer\.\* overrides"),
    case("predict-set-window-unknown", PREDICT + " --set infer.window=foo",
         r"infer\.window='foo'", r"is not one of \['gaussian'"),
    case("predict-set-tta-unknown", PREDICT + " --set infer.tta=[flip]", r"infer\.tta",
         r"choose from \['identity'"),
    case("predict-evaluation-missing", PREDICT + " --evaluation {W}/nope.json",
         r"nope\.json does not exist", r"kit evaluate --tune-weights"),
    case("predict-evaluation-untuned", PREDICT + " --evaluation {EVAL}",
         r"evaluation\.json holds no tuned weights", r"kit evaluate --tune-weights"),
    case("predict-evaluation-and-weights", PREDICT + " --evaluation {EVAL} --weights 1",
         r"--weights, RUN:W or --evaluation, not several"),
    case("predict-fragment-without-volume", PREDICT, r"test/b", r"surface_volume",
         build=(remove("data/test/b/surface_volume"),)),
    case("predict-fragment-without-mask", PREDICT, r"test/b/mask\.png is missing",
         build=(remove("data/test/b/mask.png"),)),
    case("predict-fragment-mask-empty", PREDICT, r"test/b/mask\.png is empty",
         r"fix or re-copy the mask", forbid=(r"remove the fragment",),
         build=(png("data/test/b/mask.png", _zeros),)),
    case("predict-fragment-too-few-slices", PREDICT, r"reads slices 1\.\.4 but .*test/b has 3",
         r"trained on fewer slices", build=(remove("data/test/b/surface_volume/03.tif"),
                                            remove("data/test/b/surface_volume/04.tif"),
                                            remove("data/test/b/surface_volume/05.tif"))),
    case("predict-segment-without-mask", PREDICT, r"test/b/b_mask\.png is missing",
         r"every fragment needs a mask",
         build=(as_segment("data/test/b"), remove("data/test/b/b_mask.png"))),
    case("predict-segment-mixed-bit-depth", PREDICT, r"layers/03\.png is 8-bit, but 00\.tif is "
         r"16-bit", r"one bit depth; re-export them alike",
         build=(as_segment("data/test/b"), to_8bit_png("data/test/b/layers/03.tif"))),
    case("predict-segment-ragged-layers", PREDICT, r"layers/02\.tif is 9×9, but 00\.tif is "
         r"48×64", r"all slices of a fragment must match",
         build=(as_segment("data/test/b"), tif("data/test/b/layers/02.tif",
                                               np.zeros((9, 9), np.uint16)))),
    case("predict-zarr-wrong-ndim", PREDICT, r"test/b/b\.zarr is 4-D \(1, 6, 48, 64\)",
         r"reads \(z, y, x\) volumes", r"export one channel and time point",
         build=(as_zarr("data/test/b", ndim=4),)),
    case("predict-segments-csv-window-outside", PREDICT, r"segments\.csv line 2: layers 3\.\.98 "
         r"are not inside .*test/b's 0\.\.5", r"z_end is exclusive",
         build=(write("data/segments.csv", "id,z_start,z_end,reverse\nb,3,99,0\n"),)),
    case("predict-segments-csv-reverse-not-a-flag", PREDICT, r"segments\.csv line 3: reverse "
         r"must be 0 or 1", build=(write("data/segments.csv",
                                        "id,z_start,z_end,reverse\na,1,5,0\nb,1,5,maybe\n"),)),
    case("predict-device-unknown", PREDICT + " --device tpu", r"--device 'tpu'", r"cpu"),
    case("predict-disk-full", PREDICT, r"new/predict\.json", r"free disk space", full_disk=True),
    # evaluate -------------------------------------------------------------------------------
    case("evaluate-run-missing", EVALUATE + " --runs {W}/nope",
         r"run directory .*nope does not exist"),
    case("evaluate-regions-missing", EVALUATE, r"oof/regions\.csv is missing",
         r"not a training run directory", build=(remove("{RUN}/oof/regions.csv"),)),
    case("evaluate-regions-two-folds", EVALUATE, r"regions\.csv holds regions of folds \[0, 1\]",
         build=(write("{RUN}/oof/regions.csv", FOLDS_CSV),)),
    case("evaluate-dataset-unknown", EVALUATE, r"run\.json does not name the dataset",
         r"pass --data", build=(write("{RUN}/run.json", "{}"),)),
    case("evaluate-run-json-corrupt", EVALUATE, r"run\.json is not valid JSON",
         r"delete it or fix it", build=(write("{RUN}/run.json", "{"),)),
    case("evaluate-oof-missing", EVALUATE, r"oof/1\.png is missing",
         r"has not validated yet", build=(remove("{RUN}/oof/1.png"),)),
    case("evaluate-oof-other-size", EVALUATE, r"oof/1\.png is 10×10 but fragment",
         r"another dataset", build=(png("{RUN}/oof/1.png", lambda s: _zeros((10, 10))),)),
    case("evaluate-oof-16-bit", EVALUATE, r"oof/1\.png is not an 8-bit",
         build=(png("{RUN}/oof/1.png", lambda s: np.zeros(s, np.uint16)),)),
    case("evaluate-wrong-data", EVALUATE + " --data {TEST}", r"fragment '1' not found under",
         r"--data"),
    case("evaluate-tune-with-weights", EVALUATE + " --runs {RUN}:2 --tune-weights",
         r"drop the :W"),
    case("evaluate-disk-full", EVALUATE, r"new/evaluation\.json", r"free disk space",
         full_disk=True),
    # submit ---------------------------------------------------------------------------------
    case("submit-threshold-and-percentile", SUBMIT + " --threshold 0.3 --percentile 5",
         r"--threshold and --percentile are mutually exclusive", r"give one of them"),
    case("submit-threshold-above-one", SUBMIT + " --threshold 1.5", r"--threshold",
         r"in \[0, 1\], got 1\.5"),
    case("submit-threshold-negative", SUBMIT + " --threshold -0.1", r"--threshold",
         r"in \[0, 1\], got -0\.1"),
    case("submit-threshold-nan", SUBMIT + " --threshold nan", r"--threshold", r"in \[0, 1\]"),
    case("submit-percentile-150", SUBMIT + " --percentile 150", r"--percentile",
         r"in \(0, 100\], got 150"),
    case("submit-percentile-zero", SUBMIT + " --percentile 0", r"--percentile",
         r"in \(0, 100\]"),
    case("submit-min-area-negative", SUBMIT + " --min-area -1", r"--min-area must be >= 0"),
    case("submit-pred-missing", SUBMIT + " --pred {W}/nope", r"nope does not exist",
         r"python -m kit predict"),
    case("submit-map-missing", SUBMIT, r"pred/b\.png is missing", r"predict fragment b",
         build=(remove("{PRED}/b.png"),)),
    case("submit-map-not-recorded", SUBMIT, r"pred/b\.png was not written by the prediction",
         r"rerun `python -m kit predict`",
         build=(edit_json("{PRED}/predict.json", lambda r: r["fragments"].pop("b")),)),
    case("submit-fragment-changed", SUBMIT, r"test/b changed since",
         r"rerun `python -m kit predict`", build=(touch("data/test/b/mask.png"),)),
    case("submit-map-other-size", SUBMIT, r"pred/b\.png is 10×10 but the mask",
         r"another dataset", build=(png("{PRED}/b.png", lambda s: _zeros((10, 10))),)),
    case("submit-predict-json-corrupt", SUBMIT, r"predict\.json is not valid JSON",
         r"delete it or fix it", build=(write("{PRED}/predict.json", "{"),)),
    case("submit-evaluation-missing", SUBMIT + " --evaluation {W}/nope.json",
         r"nope\.json does not exist", r"python -m kit evaluate"),
    case("submit-evaluation-without-threshold", SUBMIT, r"evaluation\.json has no 'threshold'",
         r"rerun `python -m kit evaluate`", build=(write("{EVAL}", "{}"),)),
    case("submit-evaluation-threshold-out-of-range", SUBMIT,
         r"'threshold' of .*evaluation\.json must be a probability in \[0, 1\]",
         build=(write("{EVAL}", '{"threshold": 3}'),)),
    case("submit-sample-lists-absent-id", SUBMIT, r"sample_submission\.csv lists ids \['c'\]",
         r"put those fragments in the test directory",
         build=(write(SUB, "Id,Predicted\na,1 1\nb,1 1\nc,1 1\n"),)),
    case("submit-sample-lacks-an-id", SUBMIT, r"ids \['b'\] are not in .*sample_submission",
         r"sample_submission\.csv of this test set", build=(write(SUB, "Id,Predicted\na,1 1\n"),)),
    case("submit-out-is-a-directory", SUBMIT + " --out {W}/data", r"--out .*data is a directory",
         r"give a file path"),
    case("submit-disk-full", SUBMIT + " --out {W}/new.csv", r"new\.csv", r"free disk space",
         full_disk=True),
    # validate -------------------------------------------------------------------------------
    case("validate-file-missing", "validate {W}/nope.csv --data {TEST}",
         r"nope\.csv does not exist"),
    case("validate-header", VALIDATE, r"header must be exactly Id,Predicted",
         build=(write("submission.csv", "id,rle\na,1 1\nb,1 1\n"),)),
    case("validate-id-missing", VALIDATE, r"missing \['b'\]",
         build=(write("submission.csv", "Id,Predicted\na,1 1\n"),)),
    case("validate-id-unexpected", VALIDATE, r"unexpected \['c'\]",
         build=(write("submission.csv", "Id,Predicted\na,1 1\nb,1 1\nc,1 1\n"),)),
    case("validate-id-twice", VALIDATE, r"line 3: id a appears twice",
         build=(write("submission.csv", "Id,Predicted\na,1 1\na,1 1\nb,1 1\n"),)),
    case("validate-id-empty", VALIDATE, r"line 2: empty Id",
         build=(write("submission.csv", "Id,Predicted\n,1 1\n"),)),
    case("validate-row-three-values", VALIDATE, r"line 2: expected 2 values",
         build=(write("submission.csv", "Id,Predicted\na,1 1,x\nb,1 1\n"),)),
    case("validate-rle-odd", VALIDATE, r"id a \(64×48\)",
         build=(write("submission.csv", "Id,Predicted\na,1 2 3\nb,1 1\n"),)),
    case("validate-rle-past-end", VALIDATE, r"id a \(64×48\)",
         build=(write("submission.csv", "Id,Predicted\na,3000 100\nb,1 1\n"),)),
    case("validate-rle-unsorted", VALIDATE, r"id a \(64×48\)",
         build=(write("submission.csv", "Id,Predicted\na,10 2 1 2\nb,1 1\n"),)),
    case("validate-rle-zero-length", VALIDATE, r"id a \(64×48\)",
         build=(write("submission.csv", "Id,Predicted\na,1 0\nb,1 1\n"),)),
    case("validate-data-missing", VALIDATE + " --data {W}/nope", r"nope does not exist",
         r"pass a dataset directory"),
    # config ---------------------------------------------------------------------------------
    case("config-unknown-preset", "config --config nosuch", r"unknown config 'nosuch'",
         r"give a YAML path or one of \['cpu-demo'"),
    case("config-bad-value", "config --set train.amp=fp8", r"train\.amp='fp8' is not one of",
         r"'auto', 'bf16', 'fp16', 'off'"),
    case("config-yaml-malformed", "config --config {W}/bad.yaml", r"bad\.yaml is not valid YAML",
         build=(write("{W}/bad.yaml", "model: [\n"),)),
    # report ---------------------------------------------------------------------------------
    case("report-run-missing", REPORT + " --runs {W}/nope", r"nope is not a run directory",
         r"pass the runs that `kit train` wrote"),
    case("report-evaluation-corrupt", REPORT, r"evaluation\.json is not valid JSON",
         r"delete it or fix it", build=(write("{EVAL}", "{"),)),
    case("report-run-config-malformed", REPORT, r"fold0/config\.yaml is not valid YAML",
         build=(write("{RUN}/config.yaml", "model: [\n"),)),
    # run_all.sh -----------------------------------------------------------------------------
    case("run-all-data-missing", "run_all.sh", r"nope does not exist",
         r"set DATA_DIR to a dataset directory", env={"DATA_DIR": "{W}/nope"}),
    case("run-all-data-without-fragments", "run_all.sh", r"runs holds no fragment",
         r"set DATA_DIR to a dataset directory", env={"DATA_DIR": "{W}/runs"}),
    case("run-all-folds-missing", "run_all.sh", r"folds file .*none\.csv does not exist",
         r"python -m kit folds --data", env={"FOLDS": "{W}/none.csv"}),
    case("run-all-folds-malformed", "run_all.sh", r"folds\.csv: header must be",
         build=(write("{FOLDS}", "id,k\n1,0\n"),)),
    case("run-all-time-budget-not-a-number", "run_all.sh", r"TIME_BUDGET must be minutes",
         r"got 'nine'", env={"TIME_BUDGET": "nine"}),
    case("run-all-config-unknown", "run_all.sh", r"CONFIG member 'nosuch'", r"cpu-demo",
         env={"CONFIG": "{TINY},nosuch"}),
    case("run-all-ngpus-not-a-number", "run_all.sh", r"NGPUS must be", r"got 'two'",
         env={"NGPUS": "two"}),
    case("run-all-cpu-jobs-zero", "run_all.sh", r"CPU_JOBS must be", r"got '0'",
         env={"CPU_JOBS": "0"}),
    case("run-all-demo-scale-not-a-number", "run_all.sh", r"DEMO_SCALE must be",
         r"got 'big'", env={"DATA_DIR": "", "DEMO_SCALE": "big"}),
]  # fmt: skip
# TRAIN_ARGS: a run_all.sh case that gets as far as training fails there at once (a different
# message), so a check that is missing costs seconds, not a whole pipeline.
RUN_ALL_ENV = {"OUT_DIR": "{W}/out", "DATA_DIR": "{DATA}", "FOLDS": "{FOLDS}", "NGPUS": "0",
               "CPU_JOBS": "1", "CONFIG": "{TINY}", "TRAIN_ARGS": "--max-steps 0"}  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _fill(text: str, w: Path, **more: Path) -> str:
    return text.format(W=w, **{k: v.format(W=w) for k, v in PLACES.items()}, **more)


def run_kit(argv: list[str], capsys, *, full_disk: bool = False) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m kit ARGV`: in this process, or in a subprocess
    that cannot grow a file past 16 bytes (RLIMIT_FSIZE: a disk that fills at the first write)."""
    if not full_disk:
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
        captured = capsys.readouterr()
        return rc, captured.out, captured.err
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16)); "
        "from kit.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    return result.returncode, result.stdout, result.stderr


PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")


def on_screen(err: str) -> list[str]:
    """The message lines of `err` as a terminal shows them: what a carriage return overwrote is
    gone, and progress bars (tqdm's, left in a log that is no terminal) are no message."""
    lines = (line.split("\r")[-1] for line in err.split("\n"))
    return [s for s in lines if s.strip() and not PROGRESS_BAR.search(s)]


def run_all(env: dict[str, str], w: Path) -> tuple[int, str]:
    full = {k: _fill(v, w) for k, v in {**RUN_ALL_ENV, **env}.items()}
    environ = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "DEMO_SCALE")}
    environ.update(full, PYTHON=sys.executable)
    environ = {k: v for k, v in environ.items() if v != ""}  # "" unsets (DATA_DIR: demo data)
    result = subprocess.run(["bash", str(ROOT / "run_all.sh")], env=environ, cwd=w,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    return result.returncode, result.stderr


@pytest.mark.parametrize("bad", CASES)
def test_bad_input(bad: Bad, site: Path, capsys):
    for build in bad.build:
        build(site)
    before = snapshot(site)
    if bad.argv == "run_all.sh":
        rc, err = run_all(bad.env, site)
        lines = on_screen(err)
        assert lines and all(line.startswith(("run_all.sh: ", "error: ")) for line in lines), err
    else:
        argv = [_fill(a, site) for a in shlex.split(bad.argv)]
        rc, out, err = run_kit(argv, capsys, full_disk=bad.full_disk)
        if bad.rc == 0:  # the command goes on: the message is a warning, wherever it is printed
            err = "\n".join(s for s in on_screen(out + "\n" + err) if s.startswith("warning: "))
        lines = on_screen(err)
        assert len(lines) == 1 and lines[0].startswith(("error: ", "warning: ")), err
    assert rc == bad.rc, err
    assert "Traceback" not in err
    for pattern in bad.expect:
        assert re.search(pattern, err, re.M), f"{pattern!r} not in {err!r}"
    for pattern in bad.forbid:
        assert not re.search(pattern, err), f"{pattern!r} in {err!r}"

    after = snapshot(site)
    allowed = [_fill(a, Path(".")).removeprefix("./") for a in bad.allow]

    def allowed_path(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, a) for a in allowed)

    left = [r for r in after if any(fnmatch.fnmatch(Path(r).name, g) for g in LEFTOVERS)]
    assert not left, f"partial files left: {left}"
    new = [r for r in after if r not in before and not allowed_path(r)]
    assert not new, f"new files after a failed command: {new}"
    changed = [r for r in before if after.get(r) != before[r] and not allowed_path(r)]
    assert not changed, f"good files changed or removed: {changed}"


def test_catalogue_covers_every_command():
    from kit.cli import COMMANDS

    commands = {c.values[0].argv.split()[0] for c in CASES}
    assert commands >= {*COMMANDS, "run_all.sh"}
    assert len(CASES) >= 60


# -- faults: SIGKILL at a chosen moment, then a rerun ------------------------------------------
# `python -c KILLER MODULE NAME N WHEN ARGV...` runs `python -m kit ARGV` with MODULE.NAME
# (NAME may be Class.method) wrapped: at its N-th call the process SIGKILLs itself before the
# call, after it, or during it (torch.save, cv2.imwrite and Path.write_text: half of the file's
# bytes are written first, as a kill mid-write).
KILLER = """
import importlib, io, os, signal, sys
module, name, n, when = sys.argv[1:5]
target = importlib.import_module(module)
*owners, name = name.split(".")
for owner in owners:
    target = getattr(target, owner)
original, calls = getattr(target, name), [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def half_written(*args):
    if name == "save":  # torch.save(obj, f)
        buffer = io.BytesIO()
        original(args[0], buffer)
        data, f = buffer.getvalue(), args[1]
        f.write(data[: len(data) // 2])
        f.flush()
    elif name == "write_text":  # Path.write_text(self, text)
        with open(args[0], "w") as f:
            f.write(args[1][: len(args[1]) // 2])
    else:  # cv2.imwrite(path, image)
        import cv2
        data = cv2.imencode(os.path.splitext(args[0])[1], args[1])[1].tobytes()
        with open(args[0], "wb") as f:
            f.write(data[: len(data) // 2])
    die()

def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(n):
        if when == "before":
            die()
        if when == "during":
            half_written(*args)
    result = original(*args, **kwargs)
    if calls[0] == int(n) and when == "after":
        die()
    return result

setattr(target, name, wrapper)
from kit.cli import main
sys.exit(main(sys.argv[5:]))
"""
# Checkpoint writes of FAULT_TRAIN, the N-th torch.save: 1, 2 last.pt at steps 1 and 2 (mid
# epoch); 3 last.pt at step 3 (the epoch, before its validation), 4 best.pt, 5 last.pt (after
# it); 6, 7 last.pt at 4 and 5; 8 last.pt at 6, then best.pt if better, then last.pt.
FAULT_TRAIN = (
    "train --data {DATA} --folds {FOLDS} --config {TINY} --fold 0 --out {OUT} "
    "--set train.steps_per_epoch=3 --set train.epochs=2 --set train.checkpoint_every=1"
)
STEP = "kit.train.step", "Stepper.step"  # one optimiser step of FAULT_TRAIN (6 in all)
KILL_POINTS = {  # quick: the first of each list
    "checkpoint_write": [2, 1, 3, 4, 5, 8],  # the N-th torch.save, killed half-written
    "mid_epoch": [(*STEP, 5, "before"), (*STEP, 1, "before"), (*STEP, 6, "after")],
    # predict's writes: predict.json (1st write_text), a.png, preview/a.png, predict.json, b ...
    "predict_write": [
        ("cv2", "imwrite", 3, "during"),
        ("pathlib", "Path.write_text", 2, "during"),
        ("kit.io", "write_png", 1, "after"),
        ("kit.io", "write_png", 3, "before"),
        ("cv2", "imwrite", 1, "during"),
        ("pathlib", "Path.write_text", 1, "during"),
    ],
    # run_all.sh killed (with the `kit` it runs) when this file appears under OUT_DIR
    "run_all_kill": [
        "runs/tiny/fold1/run.json",  # the second training has started
        "runs/tiny/fold1/checkpoints/last.pt",
        "evaluation/evaluation.json",
        "predictions/a.png",
    ],
}


def pytest_generate_tests(metafunc):
    full = metafunc.config.getoption("--faults") == "full"
    for name, points in KILL_POINTS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, points if full else points[:1], scope="module")


def killed(hook: tuple[str, str, int, str], argv: str, w: Path, out: Path) -> None:
    """Run `python -m kit ARGV` until the hook kills it; assert that it was killed."""
    args = [_fill(a, w, OUT=out) for a in shlex.split(argv)]
    hook_args = [hook[0], hook[1], str(hook[2]), hook[3]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", KILLER, *hook_args, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == -9, result.stderr[-2000:]


def kit(argv: str, w: Path, out: Path) -> None:
    args = [_fill(a, w, OUT=out) for a in shlex.split(argv)]
    assert main(args) == 0, argv


def temps(folder: Path) -> list[str]:
    return sorted(p.name for g in LEFTOVERS for p in folder.rglob(g))


def same_training(a: Path, b: Path, *, same_config: bool = True) -> None:
    """The OOF map byte for byte, best.pt too (else its weights: the configs differ), and
    last.pt's weights and step."""
    assert (a / "oof/1.png").read_bytes() == (b / "oof/1.png").read_bytes()
    if same_config:
        assert (a / "checkpoints/best.pt").read_bytes() == (b / "checkpoints/best.pt").read_bytes()
    for name, step in (("best.pt", None), ("last.pt", 6)):
        sa, sb = (torch.load(p / "checkpoints" / name, weights_only=False) for p in (a, b))
        assert sa["step"] == sb["step"] and step in (None, sa["step"]), name
        for key, tensor in sa["model"].items():
            assert torch.equal(tensor, sb["model"][key]), f"{name}: {key}"


@pytest.fixture(scope="module")
def fault_site(site_template, tmp_path_factory) -> Path:
    """A copy of the site with `straight/`: FAULT_TRAIN run without a fault."""
    w = copy_site(site_template, tmp_path_factory.mktemp("faults") / "w")
    kit(FAULT_TRAIN, w, w / "straight")
    return w


def rerun_training(w: Path, out: Path, argv: str = FAULT_TRAIN) -> None:
    """What run_all.sh does after a kill: the same command, with --resume when last.pt exists."""
    resume = " --resume" if (out / "checkpoints" / "last.pt").is_file() else ""
    kit(argv + resume, w, out)


@pytest.fixture(scope="module")
def killed_checkpoint_write(fault_site, checkpoint_write) -> tuple[Path, list[str]]:
    """A training killed half-way through its N-th checkpoint write, then rerun: (run, the
    temporary files the kill left)."""
    out = fault_site / f"killed-write-{checkpoint_write}"
    killed(("torch", "save", checkpoint_write, "during"), FAULT_TRAIN, fault_site, out)
    left = temps(out)
    assert left, "the kill came before the write: no temporary file"
    if (out / "checkpoints" / "last.pt").is_file():  # the previous one: whole and loadable
        from kit.checkpoint import load_checkpoint

        assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] >= 1
    rerun_training(fault_site, out)
    return out, left


def test_a_kill_mid_checkpoint_write_resumes_to_the_same_run(fault_site, killed_checkpoint_write):
    same_training(fault_site / "straight", killed_checkpoint_write[0])


def test_a_kill_mid_checkpoint_write_leaves_no_temporary_file(killed_checkpoint_write):
    run, left = killed_checkpoint_write
    assert temps(run) == [], f"left by the kill: {left}"


def test_a_kill_mid_epoch_resumes_to_the_same_run(fault_site, mid_epoch):
    out = fault_site / f"killed-step-{mid_epoch[2]}-{mid_epoch[3]}"
    killed(mid_epoch, FAULT_TRAIN, fault_site, out)
    rerun_training(fault_site, out)
    same_training(fault_site / "straight", out)
    assert temps(out) == []


def test_a_kill_during_validation_keeps_the_epoch(fault_site):
    """No mid-epoch checkpoints: the epoch's last.pt must come before its validation."""
    argv = FAULT_TRAIN.replace("checkpoint_every=1", "checkpoint_every=0")
    out = fault_site / "killed-validation"
    killed(("kit.infer.stitch", "predict_fragment", 1, "before"), argv, fault_site, out)
    from kit.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3  # the epoch's 3 steps
    rerun_training(fault_site, out, argv)
    same_training(fault_site / "straight", out, same_config=False)
    assert temps(out) == []


@pytest.fixture(scope="module")
def clean_prediction(site_template, tmp_path_factory) -> Path:
    """A copy of the site with `clean/`: a prediction without a fault."""
    w = copy_site(site_template, tmp_path_factory.mktemp("predict") / "w")
    kit(PREDICT.replace("{W}/new", "{OUT}"), w, w / "clean")
    return w


def test_a_killed_predict_reruns_to_the_same_maps(clean_prediction, predict_write):
    w, argv = clean_prediction, PREDICT.replace("{W}/new", "{OUT}")
    out = w / "killed-{}-{}-{}-{}".format(*predict_write)
    killed(predict_write, argv, w, out)
    kit(argv, w, out)
    assert snapshot(out) == snapshot(w / "clean")  # predict.json included; no temporary left


def test_predict_redoes_the_maps_of_a_retrained_checkpoint(site, capsys):
    """The rerun skip looks at the checkpoint's bytes, not its path (a stale map was kept)."""
    before = (site / "pred" / "a.png").read_bytes()
    other = make_run(site / "other", "run", tiny_sam_config(), seed=3) / "checkpoints" / "best.pt"
    best = site / "runs" / "tiny" / "fold0" / "checkpoints" / "best.pt"
    state = torch.load(other, weights_only=False)
    state["config"] = torch.load(best, weights_only=False)["config"]
    state["model"] = {k: v + 0.01 for k, v in torch.load(best, weights_only=False)["model"].items()}
    best.unlink()  # a hard link to the site template's
    torch.save(state, best)
    kit(PREDICT.replace("{W}/new", "{PRED}"), site, site)
    assert "skipped" not in capsys.readouterr().out
    assert (site / "pred" / "a.png").read_bytes() != before


def _run_all(out: Path, site: Path) -> subprocess.Popen:
    """run_all.sh on the site's data into `out`, in its own process group."""
    env = {k: _fill(v, site) for k, v in RUN_ALL_ENV.items()}
    env.update(TRAIN_ARGS="--max-steps 2", PYTHON=sys.executable, OUT_DIR=str(out))
    environ = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "DEMO_SCALE")}
    return subprocess.Popen(["bash", str(ROOT / "run_all.sh")], env={**environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


@pytest.fixture(scope="module")
def clean_run_all(fault_site, request) -> Path:
    if request.config.getoption("--faults") != "full":
        pytest.skip("run_all.sh twice per kill point: --faults full (or INKKIT_FAULTS=full)")
    out = fault_site / "run-all-clean"
    clean = _run_all(out, fault_site)
    assert clean.wait(timeout=600) == 0, clean.stderr.read()[-2000:]
    return out


def test_a_killed_run_all_reruns_to_the_same_submission(fault_site, clean_run_all, run_all_kill):
    out = fault_site / f"run-all-killed-{run_all_kill.replace('/', '-')}"
    run = _run_all(out, fault_site)
    while not (out / run_all_kill).exists() and run.poll() is None:
        time.sleep(0.02)
    assert run.poll() is None, f"run_all.sh ended before {run_all_kill} appeared"
    os.killpg(run.pid, signal.SIGKILL)  # the script and the `kit` it runs
    run.wait()
    again = _run_all(out, fault_site)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-2000:]
    for rel in ("submission.csv", "predictions/a.png", "predictions/b.png"):
        assert (out / rel).read_bytes() == (clean_run_all / rel).read_bytes(), rel
    assert temps(out) == []
