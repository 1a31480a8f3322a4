"""Offline test-time path for a Kaggle-style notebook: checkpoints + test data -> submission.csv.

    python /kaggle/input/inkkit-wheels/predict.py --runs /kaggle/input/inkkit-runs/*/ \
        --data /kaggle/input/vesuvius-challenge-ink-detection/test \
        --out /kaggle/working/submission.csv [--work /kaggle/working/predictions] [--kit SRC]

The kit is imported from --kit SRC (a folder holding kit/) when given, else from the checkout
this file sits in, else as installed (the inkkit wheel of submission/README.md's recipe).

--runs is a directory of run directories (each with checkpoints/best.pt) and/or .pt files, or
several of those; each checkpoint carries its config, so nothing else is needed. It runs exactly
`python -m kit predict` then `python -m kit submit` (same code as the kit's CLI). evaluation.json
is looked for as `kit submit` looks for it (kit.post.threshold.find_evaluation: in the folder
holding the runs or its parent, and their evaluation/; copy the one `evaluate` wrote next to
your runs). The threshold is --threshold or --percentile (not both), else that evaluation.json's,
else the runs' own `post:` config section, else PostConfig's default. When that evaluation.json
holds weights tuned by `evaluate --tune-weights`, the members get them (unless --runs gives
RUN:W). No network access is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _import_kit(kit_path: str | None) -> None:
    """Make `import kit` work from an attached dataset holding the source tree (or an install)."""
    candidates = [Path(kit_path)] if kit_path else []
    candidates.append(Path(__file__).resolve().parents[1])  # running from a checkout
    for path in candidates:
        if (path / "kit" / "__init__.py").is_file():
            sys.path.insert(0, str(path))
            return
    try:
        import kit  # noqa: F401  (installed from a wheel)
    except ImportError:
        raise SystemExit(
            "cannot import kit: pass --kit DIR (the folder that holds kit/) or pip install the "
            "inkkit wheel from an attached dataset (see submission/README.md)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--runs", nargs="+", required=True, help="run dirs, .pt files or folders of them"
    )
    p.add_argument("--data", required=True, help="the test/ directory (or a fragment directory)")
    p.add_argument("--out", default="submission.csv")
    p.add_argument(
        "--kit", default=None, help="folder holding the kit/ source (an attached dataset)"
    )
    p.add_argument("--work", default="predictions", help="where the probability maps go")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--percentile", type=float, default=None)
    p.add_argument("--min-area", type=int, default=None)
    p.add_argument("--tta", default=None, help="comma-separated TTA set, e.g. identity,hflip,vflip")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    _import_kit(args.kit)
    from kit.cli import main as kit_main
    from kit.errors import KitError
    from kit.infer.ensemble import explicit_weights, resolve_members
    from kit.io import read_json
    from kit.post.threshold import check_options, find_evaluation

    try:  # before predicting: a bad option should not cost a whole prediction
        check_options(threshold=args.threshold, percentile=args.percentile, min_area=args.min_area)
        checkpoints = [m.checkpoint for m in resolve_members(args.runs)]
        evaluation = find_evaluation(Path(args.work), checkpoints)
        tuned = evaluation is not None and "weights" in read_json(evaluation)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predict = ["predict", "--data", args.data, "--runs", *args.runs, "--out", args.work]
    if tuned and not explicit_weights(args.runs):
        predict += ["--evaluation", str(evaluation)]
    if args.tta:
        predict += ["--set", f"infer.tta=[{args.tta}]"]
    if args.device:
        predict += ["--device", args.device]
    code = kit_main(predict)
    if code:
        return code
    submit = ["submit", "--pred", args.work, "--data", args.data, "--out", args.out]
    if args.threshold is not None:
        submit += ["--threshold", str(args.threshold)]
    if args.percentile is not None:
        submit += ["--percentile", str(args.percentile)]
    if evaluation is not None:
        submit += ["--evaluation", str(evaluation)]  # the file whose weights predict used
    if args.min_area is not None:
        submit += ["--min-area", str(args.min_area)]
    return kit_main(submit)


if __name__ == "__main__":
    raise SystemExit(main())
