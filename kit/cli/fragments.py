"""List the fragments of a dataset as every command finds them (kit.data.layout.find_fragments).

One line per fragment: id, layout, number of slices (a zarr volume: its name), whether it has ink
labels, directory. Only file names are looked at (nothing is opened), so it is instant; a dataset without fragments, or
with a directory that is no fragment, exits 2 naming the missing file. run_all.sh checks its
DATA_DIR with it.
"""

from __future__ import annotations

import argparse

HELP = "list the fragments of a dataset (the search every command uses)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="dataset directory (train/, test/), a folder of fragments or one fragment")  # fmt: skip
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="which fragments of a dataset directory (default: train)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from kit.data.layout import find_fragments, layout_of

    for path in find_fragments(args.data, args.split):
        layout = layout_of(path)
        files = layout.files(path)
        volume = f"{len(files.slices)} slices" if files.volume is None else files.volume.name
        print(f"{files.id}\t{layout.name}\t{volume}\t"
              f"{'labels' if files.has_labels else 'no labels'}\t{path}")  # fmt: skip
    return 0
