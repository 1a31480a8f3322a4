"""The threshold of a submission, decided in one place.

    decide_threshold(pred, threshold=, percentile=, min_area=, evaluation=) -> ThresholdPolicy
    find_evaluation(pred, checkpoints) -> Path | None          the one evaluation.json search
    ThresholdPolicy.threshold_for(prob, mask) -> float         one fragment's threshold
    ThresholdPolicy.describe() -> str, .to_dict() -> dict      the log line, the JSON record

The threshold is the first of:
1. `--threshold T` (T in [0, 1]) or `--percentile P` (P in (0, 100]: per fragment, the lowest
   level at which at most P % of the mask's pixels are ink); giving both is an error;
2. the `threshold` of evaluation.json: `--evaluation PATH`, else the first `evaluation.json` or
   `evaluation/evaluation.json` found in PRED, PRED/.., RUNS and RUNS/.., where PRED is the
   prediction directory and RUNS the folder holding the members' runs (from PRED/predict.json;
   where `kit evaluate` writes by default);
3. the members' own `post:` section (post.percentile when > 0, else post.threshold), as
   PRED/predict.json records it (else read from the configs inside the checkpoints it lists);
4. PostConfig's defaults.
The minimum component area is `--min-area`, else the members' post.min_component_area, else
PostConfig's. Members whose `post:` values differ are an error that names two of them: the
threshold decides the submission, and a silent fallback to a default would hide it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kit.config import PostConfig
from kit.errors import KitError
from kit.run import PredictionDir


@dataclass(frozen=True)
class ThresholdPolicy:
    """How a submission's ink maps are cut, and where each setting came from."""

    kind: Literal["fixed", "percentile"]
    value: float  # fixed: probability threshold in [0, 1]; percentile: percent in (0, 100]
    min_area: int  # drop 8-connected ink blobs smaller than this
    source: str  # where `value` came from, in words
    min_area_source: str

    def threshold_for(self, prob: np.ndarray, mask: np.ndarray | None) -> float:
        """The threshold (0..1) for one fragment's uint8 map (H, W) and bool mask (H, W)."""
        if self.kind == "fixed":
            return self.value
        from kit.postprocess import percentile_threshold

        mask = np.ones(prob.shape, bool) if mask is None else mask
        return percentile_threshold(prob, mask, self.value)

    def describe(self) -> str:
        """One line for the log that says what the threshold is and where it came from."""
        what = (
            f"threshold {self.value:.4f}"
            if self.kind == "fixed"
            else f"threshold per fragment at the top {self.value:g} % of mask pixels"
        )
        area = f"min component area {self.min_area} from {self.min_area_source}"
        return f"{what} from {self.source}; {area}"

    def to_dict(self) -> dict:
        return asdict(self)


def decide_threshold(
    pred: Path,
    *,
    threshold: float | None = None,
    percentile: float | None = None,
    min_area: int | None = None,
    evaluation: Path | None = None,
) -> ThresholdPolicy:
    """The policy for the maps in prediction directory `pred`, in the order the module doc says."""
    check_options(threshold=threshold, percentile=percentile, min_area=min_area)
    if threshold is not None:
        kind, value, source = "fixed", float(threshold), "--threshold"
    elif percentile is not None:
        kind, value, source = "percentile", float(percentile), "--percentile"
    else:
        kind = "fixed"
        value, source = _evaluation_threshold(pred, evaluation)
    if value is None or min_area is None:
        posts, why_none = _member_posts(pred)
    if value is None:
        searched = source
        kind, value, source = _post_threshold(posts, why_none)
        source = f"{source}; {searched}"
    if min_area is None:
        min_area, min_area_source = _post_min_area(posts, why_none)
    else:
        min_area_source = "--min-area"
    return ThresholdPolicy(kind, value, min_area, source, min_area_source)


def check_options(
    *, threshold: float | None, percentile: float | None, min_area: int | None
) -> None:
    """A one-line KitError for options out of range or given together (before any work)."""
    if threshold is not None and percentile is not None:
        raise KitError("--threshold and --percentile are mutually exclusive: give one of them")
    if threshold is not None:
        _threshold(threshold, "--threshold")
    if percentile is not None:
        _percentile(percentile, "--percentile")
    if min_area is not None and min_area < 0:
        raise KitError(f"--min-area must be >= 0 (pixels), got {min_area}")


def member_checkpoints(pred: Path) -> list[Path]:
    """The checkpoints of the ensemble that predicted `pred` (from its predict.json)."""
    return [Path(m["checkpoint"]) for m in PredictionDir(pred).record().get("members", [])]


def evaluation_candidates(pred: Path | None, checkpoints: list[Path]) -> list[Path]:
    """Where evaluation.json may be, in search order (see the module doc)."""
    return [
        p
        for b in _search_folders(pred, checkpoints)
        for p in (b / "evaluation.json", b / "evaluation" / "evaluation.json")
    ]


def find_evaluation(pred: Path | None, checkpoints: list[Path]) -> Path | None:
    """The first existing evaluation_candidates(pred, checkpoints), else None."""
    return next((p for p in evaluation_candidates(pred, checkpoints) if p.is_file()), None)


def _search_folders(pred: Path | None, checkpoints: list[Path]) -> list[Path]:
    """PRED, PRED/.., RUNS, RUNS/.. (absolute, without repeats)."""
    folders = []
    if pred is not None:
        folders += [pred.resolve(), pred.resolve().parent]
    if checkpoints:
        runs = Path(os.path.commonpath([str(_run_home(c)) for c in checkpoints]))
        folders += [runs, runs.parent]
    return list(dict.fromkeys(folders))


def _run_home(checkpoint: Path) -> Path:
    """The folder holding a member's run (RUNS for RUNS/<run>/checkpoints/best.pt), or the
    folder of a loose .pt file."""
    checkpoint = checkpoint.resolve()
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent.parent
    return checkpoint.parent


def _evaluation_threshold(pred: Path, evaluation: Path | None) -> tuple[float | None, str]:
    """(threshold, its source) from evaluation.json; (None, what was searched) when none."""
    from kit.io import read_json

    if evaluation is not None:
        if not evaluation.is_file():
            raise KitError(f"{evaluation} does not exist; run `python -m kit evaluate` first")
        path, how = evaluation, "--evaluation"
    else:
        checkpoints = member_checkpoints(pred)
        path, how = find_evaluation(pred, checkpoints), "found beside the predictions or runs"
        if path is None:
            searched = ", ".join(map(str, _search_folders(pred, checkpoints)))
            return None, f"no evaluation.json in {searched} or their evaluation/"
    summary = read_json(path)
    if "threshold" not in summary:
        raise KitError(f"{path} has no 'threshold'; rerun `python -m kit evaluate`")
    return _threshold(summary["threshold"], f"'threshold' of {path}"), f"{path} ({how})"


def _member_posts(pred: Path) -> tuple[list[tuple[Path, PostConfig]], str]:
    """([(checkpoint, its config's post:)] of the members of predict.json, why it is empty)."""
    pred_dir = PredictionDir(pred)
    recorded = pred_dir.member_posts()
    if recorded is not None:  # predict read them from the checkpoints
        from kit.config import config_from_dict

        where = pred_dir.predict_json
        return [(c, config_from_dict({"post": p}, source=f"{where} ({c})").post)
                for c, p in recorded], ""  # fmt: skip
    checkpoints = member_checkpoints(pred)
    if not checkpoints:
        return [], f"{pred_dir.predict_json} lists no members"
    missing = [c for c in checkpoints if not c.is_file()]
    if missing:
        return [], f"member checkpoint {missing[0]} not found"
    from kit.checkpoint import checkpoint_config, load_checkpoint

    return [(c, checkpoint_config(load_checkpoint(c, mmap=True), c).post) for c in checkpoints], ""


def _post_threshold(
    posts: list[tuple[Path, PostConfig]], why_none: str
) -> tuple[Literal["fixed", "percentile"], float, str]:
    """(kind, value, source): the members' post.percentile when > 0, else post.threshold."""
    if not posts:
        return *_post_setting(PostConfig(), "PostConfig"), f"PostConfig defaults ({why_none})"
    settings = [_post_setting(post, str(c)) for c, post in posts]
    _check_agreement(posts, settings, "post.percentile / post.threshold", "--threshold")
    return *settings[0], _members_source(posts)


def _post_setting(post: PostConfig, owner: str) -> tuple[Literal["fixed", "percentile"], float]:
    if post.percentile > 0:
        return "percentile", _percentile(post.percentile, f"post.percentile of {owner}")
    return "fixed", _threshold(post.threshold, f"post.threshold of {owner}")


def _post_min_area(posts: list[tuple[Path, PostConfig]], why_none: str) -> tuple[int, str]:
    if not posts:
        return PostConfig().min_component_area, f"PostConfig defaults ({why_none})"
    areas = [post.min_component_area for _, post in posts]
    for (c, _), area in zip(posts, areas, strict=True):
        if area < 0:
            raise KitError(f"post.min_component_area of {c} must be >= 0 (pixels), got {area}")
    _check_agreement(posts, areas, "post.min_component_area", "--min-area")
    return areas[0], _members_source(posts)


def _check_agreement(
    posts: list[tuple[Path, PostConfig]], values: list, what: str, option: str
) -> None:
    """A KitError naming two members whose `values` differ: the ensemble has one threshold."""
    for (c, _), v in zip(posts, values, strict=True):
        if v != values[0]:
            raise KitError(
                f"the ensemble's members disagree on {what}: {posts[0][0]} has {values[0]}, "
                f"{c} has {v}; pass {option} (or give their configs the same post: section)"
            )


def _members_source(posts: list[tuple[Path, PostConfig]]) -> str:
    record = PredictionDir(".").predict_json.name
    return f"the post: section of the members' configs ({len(posts)} checkpoints in {record})"


def _threshold(value: float, name: str) -> float:
    if not 0 <= value <= 1:
        raise KitError(f"{name} must be a probability in [0, 1], got {value}")
    return float(value)


def _percentile(value: float, name: str) -> float:
    if not 0 < value <= 100:
        raise KitError(f"{name} must be a percentage in (0, 100], got {value}")
    return float(value)
