"""Byte-identity of the pipeline's outputs between two commits (for refactors that keep behaviour).

    python bench/identity.py --base REV [--head REV] [--keep DIR]
    python bench/identity.py --base REV --demo-data demo,reversed,deep   # the generator only

Checks out each commit into a temporary git worktree, runs `run_all.sh` there on the same small
demo (DEMO_SCALE 0.03, two folds, `--max-steps 6`, no time budget), and compares the SHA-256 of
every OOF map, prediction map and submission.csv. HEAD defaults to the working tree as it is
(uncommitted changes included). Exit 0 when every file matches, 1 otherwise (the differing
files are listed). With --demo-data it compares instead every file of `kit demo-data DIR
--variant NAME` (default seed and scale) for each named variant: a generator refactor must write
the same bytes. Results: BENCHMARKS.md, "Refactor identity".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDS = "fragment,fold,row_start,row_end\n1,0,0.0,1.0\n2,1,0.0,1.0\n3,1,0.0,1.0\n"
COMPARED = ("runs/*/*/oof/*.png", "predictions/*.png", "submission.csv")


def run_pipeline(tree: Path, out: Path) -> dict[str, str]:
    """Run run_all.sh of `tree` into `out`; {relative path: sha256} of the compared files."""
    folds = out.parent / f"{out.name}_folds.csv"
    folds.write_text(FOLDS)
    env = {k: v for k, v in os.environ.items() if k not in ("TIME_BUDGET", "TRAIN_ARGS", "CONFIG")}
    env.update(OUT_DIR=str(out), FOLDS=str(folds), NGPUS="0", CPU_JOBS="2", DEMO_SCALE="0.03",
               TRAIN_ARGS="--max-steps 6", TIME_BUDGET="0", PYTHON=sys.executable)  # fmt: skip
    result = subprocess.run(
        ["bash", str(tree / "run_all.sh")], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"run_all.sh in {tree} failed:\n{result.stderr[-3000:]}")
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for pattern in COMPARED
        for p in sorted(out.glob(pattern))
    }


def make_data(tree: Path, out: Path, variants: list[str]) -> dict[str, str]:
    """`kit demo-data` of `tree` for each variant into out/<variant>; {relative path: sha256}
    of every file written."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    for variant in variants:
        cmd = [sys.executable, "-m", "kit", "demo-data", str(out / variant), "--variant", variant,
               "--no-progress"]  # fmt: skip
        result = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"kit demo-data in {tree} failed:\n{result.stderr[-3000:]}")
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)  # fmt: skip
    return where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="commit whose outputs are the reference")
    p.add_argument("--head", default=None, help="commit to compare (default: the working tree)")
    p.add_argument("--keep", default=None, help="keep both output folders here")
    p.add_argument("--demo-data", default=None, help="compare these variants' demo datasets")
    args = p.parse_args(argv)
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="identity_"))
    scratch.mkdir(parents=True, exist_ok=True)
    trees = []
    try:
        base_tree = checkout(args.base, scratch / "base_tree")
        trees.append(base_tree)
        head_tree = ROOT
        if args.head:
            head_tree = checkout(args.head, scratch / "head_tree")
            trees.append(head_tree)
        if args.demo_data:
            variants = args.demo_data.split(",")
            base = make_data(base_tree, scratch / "base_out", variants)
            head = make_data(head_tree, scratch / "head_out", variants)
        else:
            base = run_pipeline(base_tree, scratch / "base_out")
            head = run_pipeline(head_tree, scratch / "head_out")
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)  # fmt: skip
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    differ = sorted(k for k in base.keys() | head.keys() if base.get(k) != head.get(k))
    print(json.dumps({"base": args.base, "head": args.head or "working tree",
                      "files": len(base), "differ": differ}, indent=2))  # fmt: skip
    return 1 if differ or not base else 0


if __name__ == "__main__":
    raise SystemExit(main())
