"""What self-training is worth on the demo family: one training fragment's labels hidden, then
`run_all.sh` with SELF_TRAIN_ROUNDS rounds of pseudo-labels from that fragment.

For each variant: generate it (`kit demo-data --variant NAME --seed S`), move fragment 3 (the
hidden one) out of train/ into unlabelled/ without its inklabels.png, keep the folds of
fragments 1 and 2 (folds 0..2 of the standard split), and run `run_all.sh` with
SELF_TRAIN_ROUNDS=R, SELF_TRAIN_DATA=<data>/unlabelled, a fixed step count per training (no time
budget: every round trains exactly as long, so only the labels differ) and CONFIG (default the
U-Net member). Per round it reads the pooled out-of-fold F0.5 on the labelled folds
(evaluation.json), scores that round's submission.csv against the variant's solution.csv, and
rates its pseudo-labels of fragment 3 against the hidden true labels (precision and recall of
the ink pseudo-labels, share of the papyrus ignored). Prints a Markdown table; writes
<out>/<variant>/result.json.

    PYTHONPATH=. python bench/self_train.py [--variants demo,shallow] [--rounds 2]
        [--steps 400] [--config cpu-demo-unet] [--out DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generalise import read_evaluation, score_submission  # noqa: E402

from kit.data.folds import load_folds, write_folds  # noqa: E402
from kit.data.fragment import Fragment  # noqa: E402

HIDDEN = "3"


def prepare(name: str, data: Path, seed: int, scale: float | None) -> None:
    """The variant with fragment HIDDEN's labels moved aside (kept as hidden_labels.png)."""
    if (data / "folds.csv").is_file():
        return
    partial = data.with_name(data.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [sys.executable, "-m", "kit", "demo-data", str(partial), "--variant", name,
           "--seed", str(seed), "--no-progress"] + (["--scale", str(scale)] if scale else [])  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    (partial / "unlabelled").mkdir()
    hidden = partial / "unlabelled" / HIDDEN
    (partial / "train" / HIDDEN).rename(hidden)
    (hidden / "inklabels.png").rename(partial / "hidden_labels.png")
    regions = [r for r in load_folds(partial / "folds.csv") if r.fragment != HIDDEN]
    write_folds(regions, partial / "folds.csv")
    partial.rename(data)


def rate_pseudo_labels(round_dir: Path, data: Path) -> dict:
    """Precision and recall of round_dir's ink pseudo-labels of HIDDEN against the true labels,
    and the share of its papyrus they ignore."""
    import cv2

    made = Fragment(round_dir / "data" / "train" / HIDDEN)
    truth = cv2.imread(str(data / "hidden_labels.png"), cv2.IMREAD_GRAYSCALE) > 0
    mask, ink, ignore = made.mask(), made.labels(), made.ignore()
    kept = mask & ~ignore
    tp = np.count_nonzero(ink & truth & kept)
    return {
        "precision": tp / max(np.count_nonzero(ink), 1),
        "recall": tp / max(np.count_nonzero(truth & mask), 1),
        "ignored": np.count_nonzero(ignore) / max(np.count_nonzero(mask), 1),
        "background_wrong": np.count_nonzero(kept & ~ink & truth) / max(np.count_nonzero(kept & ~ink), 1),
    }  # fmt: skip


def run_variant(name: str, args: argparse.Namespace) -> dict:
    out = args.out / name
    data = args.out / "data" / name
    prepare(name, data, args.seed, 0.03 if args.smoke else None)
    result_json = out / "result.json"
    if result_json.is_file():
        return json.loads(result_json.read_text())
    env = dict(os.environ, PYTHONPATH=str(ROOT), DATA_DIR=str(data), OUT_DIR=str(out / "kit"),
               FOLDS=str(data / "folds.csv"), PYTHON=sys.executable, CONFIG=args.config,
               SELF_TRAIN_ROUNDS=str(args.rounds), SELF_TRAIN_DATA=str(data / "unlabelled"),
               TIME_BUDGET="0", PSEUDO_ARGS=args.pseudo_args,
               TRAIN_ARGS=f"--max-steps {args.steps} --set train.steps_per_epoch={args.steps // 4}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run_all.log"
    print(f"{name}: run_all.sh, {args.rounds} self-training round(s) (log: {log})", flush=True)
    start = time.monotonic()
    with open(log, "a") as f:
        subprocess.run(["bash", str(ROOT / "run_all.sh")], cwd=ROOT, env=env, stdout=f,
                       stderr=subprocess.STDOUT, check=True)  # fmt: skip
    rounds = []
    for r in range(args.rounds + 1):
        where = out / "kit" if r == 0 else out / "kit" / "self_train" / f"round{r}"
        # OUT_DIR/submission.csv is the last round's; round 0 keeps its own in self_train/round0
        submission = out / "kit" / "self_train" / f"round{r}" / "submission.csv"
        row = {"round": r, "test_f05": score_submission(submission, data)}
        row["oof_f05"] = read_evaluation(where / "evaluation" / "evaluation.json")["ensemble_oof"]
        if r > 0:
            row["pseudo"] = rate_pseudo_labels(where, data)
        rounds.append(row)
    result = {"variant": name, "seed": args.seed, "steps": args.steps, "config": args.config,
              "pseudo_args": args.pseudo_args, "minutes": (time.monotonic() - start) / 60,
              "rounds": rounds}  # fmt: skip
    result_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(results: list[dict]) -> str:
    head = ["variant", "round", "OOF F0.5 (labelled folds)", "test F0.5",
            "pseudo-labels of fragment 3: precision / recall / ignored"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        for r in res["rounds"]:
            p = r.get("pseudo")
            rated = f"{p['precision']:.3f} / {p['recall']:.3f} / {p['ignored']:.1%}" if p else "–"
            cells = [
                res["variant"],
                str(r["round"]),
                f"{r['oof_f05']:.4f}",
                f"{r['test_f05']:.4f}",
                rated,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variants", default="demo", help="comma-separated demo variants")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps of every training")
    ap.add_argument("--config", default="cpu-demo-unet", help="CONFIG for run_all.sh")
    ap.add_argument("--pseudo-args", default="--ink 0.9 --background 0.1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny data and steps: the path only")
    args = ap.parse_args()
    if args.smoke:
        args.steps = min(args.steps, 8)
    args.out = args.out or ROOT / "bench" / "results" / (
        "self_train_smoke" if args.smoke else "self_train"
    )
    results = [run_variant(v, args) for v in args.variants.split(",")]
    (args.out / "self_train.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
