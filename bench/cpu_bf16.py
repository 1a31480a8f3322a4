"""bf16 on the CPU: the training step's time, and what a budgeted training makes of it.

1. `--step`: one member's optimiser step (forward, loss, backward, AdamW) on a synthetic batch
   of its preset's tile and batch size, float32 against `torch.autocast("cpu", bfloat16)`,
   alternated, 1 thread (as the presets train), ms per step.
2. `--data DIR`: per fold, two `kit train --budget B` of the preset side by side (as run_all.sh
   runs two at a time), one with `train.amp=off infer.amp=off`, one with both `bf16`; each sets
   its step count from its own measured step time. Prints steps, s/step and best held-out F0.5.

    PYTHONPATH=. python bench/cpu_bf16.py --step
    PYTHONPATH=. python bench/cpu_bf16.py --data DIR --folds 0,3 [--config cpu-demo-unet]

The data is a `kit demo-data --variant V` of a tuning variant (see docs/data.md); what the kit
does with bf16 depends on the CPU (kit.precision: native bf16 or float32).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"float32": ["train.amp=off", "infer.amp=off"], "bf16": ["train.amp=bf16", "infer.amp=bf16"]}


def step_times(preset: str, repeats: int = 10) -> dict[str, list[float]]:
    """ms per optimiser step of `preset`'s model, each arm measured twice, alternated."""
    import torch

    from kit.config import load_config
    from kit.models import build_model

    torch.set_num_threads(1)
    fixed = ["data.z_start=0", "data.z_end=10", "data.reverse=false", "data.flatten=false"]
    config = load_config(preset, fixed)
    if config.model.input_gain == "auto":
        config.model.input_gain = 50.0
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    t, b = config.data.tile, config.train.batch_size
    x, y = torch.randn(b, 10, t, t), (torch.rand(b, 1, t, t) > 0.8).float()

    def step(dtype) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(x).logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for arm in [*ARMS, *ARMS]:
        for _ in range(3):
            step(arm)
        start = time.perf_counter()
        for _ in range(repeats):
            step(arm)
        times[arm].append(1000 * (time.perf_counter() - start) / repeats)
    return times


def fold_pair(data: Path, fold: int, preset: str, budget: float, out: Path) -> dict[str, dict]:
    """Both arms of one fold trained at once; per arm steps, s/step and best held-out F0.5."""
    import pandas as pd

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {}
    for arm, sets in ARMS.items():
        run = out / f"fold{fold}-{arm}"
        argv = [sys.executable, "-m", "kit", "train", "--data", str(data), "--folds",
                str(data / "folds.csv"), "--fold", str(fold), "--config", preset, "--out",
                str(run), "--budget", str(budget), "--no-progress", "--overwrite"]  # fmt: skip
        for item in sets:
            argv += ["--set", item]
        log = open(f"{run}.log", "w")  # noqa: SIM115 (closed below)
        procs[arm] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    result = {}
    for arm, (proc, log) in procs.items():
        if proc.wait() != 0:
            sys.exit(f"kit train ({arm}, fold {fold}) failed: {log.name}")
        log.close()
        metrics = pd.read_csv(out / f"fold{fold}-{arm}" / "metrics.csv")
        plan = [line for line in Path(log.name).read_text().splitlines() if " s/step" in line]
        per_step = plan[0].split(" s/step")[0].rsplit(" ", 1)[-1] if plan else "?"
        result[arm] = {"steps": int(metrics.step.max()), "s_per_step": per_step,
                       "f05": float(metrics.f05.max())}  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step", action="store_true", help="time one optimiser step per preset")
    p.add_argument("--data", type=Path, help="a demo-data variant (tuning) to train folds of")
    p.add_argument("--folds", default="0,3")
    p.add_argument("--config", default="cpu-demo-unet")
    p.add_argument("--budget", type=float, default=1.91, help="minutes per training (run_all's)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/cpu_bf16")
    args = p.parse_args()
    from kit.precision import cpu_has_native_bf16

    print(f"native CPU bf16: {cpu_has_native_bf16()}")
    if args.step:
        print("| preset | float32 ms/step | bf16 ms/step | ratio |\n|---|---|---|---|")
        for preset in ("cpu-demo-unet", "cpu-demo"):
            t = step_times(preset)
            f32, b16 = (" / ".join(f"{v:.0f}" for v in t[a]) for a in ARMS)
            ratio = sum(t["float32"]) / sum(t["bf16"])
            print(f"| {preset} | {f32} | {b16} | {ratio:.2f}x |", flush=True)
    if args.data is not None:
        out = args.out / args.data.name / args.config
        out.mkdir(parents=True, exist_ok=True)
        print(f"\n{args.data.name}, {args.config}, --budget {args.budget} min, arms side by side")
        print("| fold | float32 steps (s/step) | bf16 steps (s/step) | float32 F0.5 | bf16 F0.5 "
              "| bf16 − float32 |\n|---|---|---|---|---|---|")  # fmt: skip
        for fold in map(int, args.folds.split(",")):
            r = fold_pair(args.data, fold, args.config, args.budget, out)
            a, b = r["float32"], r["bf16"]
            print(f"| {fold} | {a['steps']} ({a['s_per_step']}) | {b['steps']} "
                  f"({b['s_per_step']}) | {a['f05']:.4f} | {b['f05']:.4f} | "
                  f"{b['f05'] - a['f05']:+.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
