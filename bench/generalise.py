"""Does the kit learn data it was not tuned on? run_all.sh's defaults on held-out demo variants.

For each variant: generate it (`kit demo-data DIR --variant NAME --seed S`, kept if it exists),
run `bash run_all.sh` on it (DATA_DIR, OUT_DIR=<out>/<variant>/kit, FOLDS=<data>/folds.csv,
TIME_BUDGET=--minutes when given; output in <out>/<variant>/run_all.log) and time it; score the
kit's submission.csv against the variant's solution.csv (TP/FP/FN pooled over the test
fragments) and read the pooled out-of-fold F0.5 per member and for the ensemble (and the nested
estimate of the tuned weights) from its evaluation.json; then run bench/plain_reference.py for
the kit's wall time on the same number of threads, and bench/baseline_logreg.py --test (not
with --kit-only: comparing kit settings, e.g. CONFIG, side by side on tuning variants).
Writes <out>/<variant>/result.json per variant and <out>/generalise.json, and prints a Markdown
table. Resumable: a variant with a result.json is skipped (unless --force), and a finished kit
run, plain reference or logistic regression of an unfinished variant is kept; an interrupted kit
run starts again from scratch so that its wall time is honest.

    PYTHONPATH=. python bench/generalise.py [--variants a,b,c] [--out DIR] [--minutes M]
        [--seed 0] [--threads 2] [--force] [--kit-only]
    PYTHONPATH=. python bench/generalise.py --smoke   # tiny data and steps: checks the path only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kit.metrics import confusion_counts, fbeta_from_counts
from kit.rle import decode

# Held out: no preset, default or comment may be tuned on these variants (tune on the others).
HELD_OUT = ["reversed", "deep", "light-ink"]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"scale": 0.03, "train_args": "--max-steps 2", "plain_minutes": 0.2, "samples": 5000}


def sh(cmd: list[str], log: Path, env: dict | None = None, echo: str = "==>") -> None:
    """Run cmd, appending its output to log and echoing the lines that start with `echo`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if line.startswith(echo):
                print("   ", line.rstrip(), flush=True)
        if proc.wait():
            raise RuntimeError(f"{cmd[:3]} failed (exit {proc.returncode}); see {log}")


def score_submission(submission: Path, data: Path) -> float:
    """Test F0.5 of a submission.csv against data/solution.csv: TP/FP/FN over every pixel of
    every test fragment, pooled (a fragment missing from the submission counts as all-zero)."""
    with open(data / "solution.csv", newline="") as f:
        solution = {r["Id"]: r for r in csv.DictReader(f)}
    with open(submission, newline="") as f:
        predicted = {r["Id"]: r["Predicted"] for r in csv.DictReader(f)}
    tp = fp = fn = 0
    for fid, row in solution.items():
        shape = (int(row["height"]), int(row["width"]))
        pred = decode(predicted.get(fid, ""), shape)
        c = confusion_counts(pred, decode(row["Predicted"], shape))
        tp, fp, fn = tp + c[0], fp + c[1], fn + c[2]
    return fbeta_from_counts(tp, fp, fn)


def read_evaluation(path: Path) -> dict:
    """Pooled OOF F0.5 per member and for the ensemble, and the tuned weights if present."""
    ev = json.loads(path.read_text())
    out = {
        "ensemble_oof": ev["f05"],
        "ensemble_threshold": ev["threshold"],
        "members_oof": {m: s["f05"] for m, s in ev["members"].items()},
    }
    if "weights" in ev:
        w = ev["weights"]
        out |= {
            "weights": w.get("tuned"),
            "equal_weights_oof": w.get("equal_f05"),
            "nested_oof": w.get("nested_f05"),
            "nested_members_oof": w.get("nested_members"),
        }
    return out


def run_variant(name: str, args: argparse.Namespace) -> dict:
    out = args.out / name
    data = args.out / "data" / name
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = sys.executable
    if not (data / "solution.csv").is_file():
        print(f"  generating {data}", flush=True)
        partial = data.with_name(name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [py, "-m", "kit", "demo-data", str(partial), "--variant", name]
        cmd += ["--seed", str(args.seed)] + (["--scale", str(SMOKE["scale"])] if args.smoke else [])
        sh(cmd, out / "demo_data.log", env)
        partial.rename(data)

    kit_json = out / "kit.json"
    if not kit_json.is_file():
        shutil.rmtree(out / "kit", ignore_errors=True)  # no partial run: its time would be wrong
        log = out / "run_all.log"
        log.unlink(missing_ok=True)
        kit_env = env | {
            "DATA_DIR": str(data),
            "OUT_DIR": str(out / "kit"),
            "FOLDS": str(data / "folds.csv"),
            "PYTHON": py,
        }
        if args.minutes is not None:
            kit_env["TIME_BUDGET"] = f"{args.minutes:g}"
        if args.smoke:
            kit_env["TRAIN_ARGS"] = SMOKE["train_args"]
        print(f"  run_all.sh (log: {log})", flush=True)
        start = time.monotonic()
        sh(["bash", str(ROOT / "run_all.sh")], log, kit_env)
        seconds = time.monotonic() - start
        kit = {"wall_minutes": seconds / 60}
        kit["test_f05"] = score_submission(out / "kit" / "submission.csv", data)
        kit |= read_evaluation(out / "kit" / "evaluation" / "evaluation.json")
        kit_json.write_text(json.dumps(kit, indent=1) + "\n")
    kit = json.loads(kit_json.read_text())
    result = {
        "variant": name,
        "seed": args.seed,
        "smoke": args.smoke,
        "time_budget_minutes": args.minutes,
        "kit": kit,
    }
    if args.kit_only:
        return result

    plain_json = out / "plain_reference.json"
    if not plain_json.is_file():
        minutes = SMOKE["plain_minutes"] if args.smoke else kit["wall_minutes"]
        print(f"  plain reference ({minutes:.1f} min, {args.threads} threads)", flush=True)
        cmd = [py, str(ROOT / "bench" / "plain_reference.py"), "--data", str(data)]
        cmd += ["--minutes", f"{minutes:.3f}", "--threads", str(args.threads), "--seed", "0"]
        sh([*cmd, "--out", str(plain_json)], out / "plain_reference.log", env)
    logreg_json = out / "logreg.json"
    if not logreg_json.is_file():
        print("  logistic regression", flush=True)
        cmd = [py, str(ROOT / "bench" / "baseline_logreg.py"), "--data", str(data), "--test"]
        cmd += ["--folds", str(data / "folds.csv"), "--out", str(logreg_json)]
        cmd += ["--samples", str(SMOKE["samples"])] if args.smoke else []
        sh(cmd, out / "logreg.log", env)
    plain = json.loads(plain_json.read_text())
    return result | {
        "plain_reference": plain,
        "logreg": json.loads(logreg_json.read_text()),
        "margin": kit["test_f05"] - plain["test_f05"],
    }


def is_full(result: dict) -> bool:
    """Whether a variant's result has the references beside the kit (not a --kit-only one)."""
    return "margin" in result


def table(results: list[dict]) -> str:
    head = [
        "variant",
        "kit test F0.5",
        "ensemble OOF",
        "per-member OOF",
        "plain reference test F0.5",
        "logreg test (OOF)",
        "kit wall min",
        "margin (kit − plain)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        k = r["kit"]
        ens = f"{k['ensemble_oof']:.3f}"
        if k.get("nested_oof") is not None:
            ens += f" (nested {k['nested_oof']:.3f})"
        members = ", ".join(f"{m.split(' (')[0]} {v:.3f}" for m, v in k["members_oof"].items())
        lr = r.get("logreg")
        full = is_full(r)
        cells = [
            r["variant"],
            f"{k['test_f05']:.3f}",
            ens,
            members,
            f"{r['plain_reference']['test_f05']:.3f}" if full else "not run",
            f"{lr['test_f05']:.3f} ({lr['oof_f05']:.3f})" if full else "not run",
            f"{k['wall_minutes']:.1f}",
            f"{r['margin']:+.3f}" if full else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variants", default=",".join(HELD_OUT), help="comma-separated names")
    ap.add_argument("--out", type=Path, help="default bench/results/generalise (_smoke)")
    ap.add_argument("--minutes", type=float, help="TIME_BUDGET per variant for run_all.sh")
    ap.add_argument("--seed", type=int, default=0, help="demo-data seed of every variant")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the plain reference")
    ap.add_argument("--force", action="store_true", help="redo variants that have results")
    ap.add_argument("--smoke", action="store_true", help="tiny data and steps: check the path")
    ap.add_argument("--kit-only", action="store_true",
                    help="run_all.sh only, no plain reference or logistic regression")  # fmt: skip
    args = ap.parse_args()
    default_out = "bench/results/generalise" + ("_smoke" if args.smoke else "")
    args.out = (args.out or ROOT / default_out).resolve()
    variants = [v for v in args.variants.split(",") if v]
    try:
        from kit.data.demo import VARIANTS
    except ImportError:
        sys.exit("generalise.py: this kit has no demo variants (kit.data.demo.VARIANTS)")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"generalise.py: unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")

    results, failed = [], []
    for name in variants:
        result_json = args.out / name / "result.json"
        if args.force:
            shutil.rmtree(args.out / name, ignore_errors=True)
        # a --kit-only result does not stand in for a full one (its kit run is kept)
        if result_json.is_file() and (
            args.kit_only or is_full(json.loads(result_json.read_text()))
        ):
            print(f"{name}: done earlier, kept ({result_json})", flush=True)
        else:
            print(f"{name}:", flush=True)
            try:
                result_json.write_text(json.dumps(run_variant(name, args), indent=1) + "\n")
            except RuntimeError as exc:
                print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
                failed.append(name)
                continue
        results.append(json.loads(result_json.read_text()))
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"commit": commit, "cpus": os.cpu_count(), "results": results, "failed": failed}
    (args.out / "generalise.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(table(results))
    if failed:
        sys.exit(f"generalise.py: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
