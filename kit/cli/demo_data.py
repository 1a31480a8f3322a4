"""Write synthetic fragments in the competition layout (train/1, 2, 3 with labels; test/a, b).

Also writes sample_submission.csv, folds.csv (the standard split) and solution.csv (the test
fragments' true labels, for checking a pipeline end to end). `--layout segments` or `zarr`
writes the same fragments as scroll segments or zarr volumes. See docs/data.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kit.cli import add_progress_flag

HELP = "write synthetic fragments in the competition layout (or as segments, zarr volumes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    p.add_argument(
        "--scale", type=float, default=1 / 16,
        help="size relative to the real fragments (default 1/16: fragment 1 is 511×396)",
    )  # fmt: skip
    p.add_argument(
        "--variant", default="demo",
        help="a named style (demo, shallow, bold, noisy, reversed, deep, light-ink) or 'random' "
             "(drawn from --seed); default demo",
    )  # fmt: skip
    p.add_argument(
        "--style", dest="style", action="append", default=[], metavar="FIELD=VALUE",
        help="override one style field after --variant, e.g. --style surface_mean=40 "
             "--style reverse=true (repeatable; fields in kit/data/demo.py DemoStyle)",
    )  # fmt: skip
    add_progress_flag(p)
    p.add_argument(
        "--layout", default="competition", choices=["competition", "segments", "zarr"],
        help="competition: <id>/surface_volume/NN.tif; segments: <id>/layers/NN.<layers>, "
             "<id>_mask.png, <id>_inklabels.png; zarr: <id>/<id>.zarr (OME-Zarr 0.4) and the "
             "same PNGs (default competition)",
    )  # fmt: skip
    p.add_argument(
        "--layers", default="tif", choices=["tif", "png", "jpg"],
        help="layer files of --layout segments: uint16 tif, or 8-bit png / jpg (default tif)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import yaml

    from kit.data.demo import make_demo_data, style_from
    from kit.errors import KitError

    if not 0 < args.scale <= 1:
        raise KitError(f"--scale must be in (0, 1], got {args.scale}")
    overrides = {}
    for item in args.style:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KitError(f"--style {item!r} must look like field=value, e.g. surface_mean=40")
        overrides[key.strip()] = yaml.safe_load(value)
    style = style_from(args.variant, overrides, seed=args.seed)
    _check_out(Path(args.out))
    out = make_demo_data(args.out, seed=args.seed, scale=args.scale, style=style,
                         layout=args.layout, layers=args.layers,
                         progress=not args.no_progress)  # fmt: skip
    print(f"demo data ({args.variant}, {args.layout} layout) written to {out}")
    return 0


def _check_out(out: Path) -> None:
    """KitError unless `out` is new, empty or earlier demo data (which is rewritten): demo
    files written over a real dataset would replace its fragments."""
    from kit.data.demo import STYLE_FILE
    from kit.errors import KitError

    if out.exists() and not out.is_dir():
        raise KitError(f"{out} is a file: give a new directory for the demo data")
    if out.is_dir() and any(out.iterdir()) and not (out / STYLE_FILE).is_file():
        raise KitError(
            f"{out} is not empty and holds no demo data (no {STYLE_FILE}): the demo would write "
            "over its train/ and test/; give a new directory"
        )
