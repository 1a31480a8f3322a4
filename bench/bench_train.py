"""Where a training step's time goes: data loading, normalise + augment, model (fwd/bwd/optim).

    python bench/bench_train.py [--data DIR] [--config cpu-demo] [--steps 30] [--workers 0 2]

Runs the real training pieces (`kit.train.loop` trainer: sampler, TileDataset/DataLoader,
`Stepper.prepare` = to-device + normalize + augment_batch, `Stepper.optimise` = micro-batches +
AdamW) on fold 0 and prints, per num_workers value, the share of the step spent waiting for
data and augmenting, and the tiles/s. Without --data it generates the default demo dataset in a
temp directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without install
from kit.config import apply_overrides, load_config
from kit.train import ddp
from kit.train.dataset import TileDataset, tile_loader
from kit.train.loop import _Trainer
from kit.train.sampler import epoch_tiles


def _dataset(data: str | None, tmp: Path) -> tuple[Path, Path]:
    if data is None:
        from kit.data.demo import make_demo_data

        data_dir = tmp / "demo"
        make_demo_data(data_dir, seed=0)
    else:
        data_dir = Path(data)
    folds = data_dir / "folds.csv" if (data_dir / "folds.csv").is_file() else Path("folds.csv")
    return data_dir, folds


def bench(config, data_dir: Path, folds: Path, out: Path, *, steps: int, warmup: int) -> dict:
    trainer = _Trainer(
        config, data_dir=data_dir, fold=0, folds_csv=folds, out=out, max_steps=None,
        resume=False, log_images=False, info=ddp.DistInfo(), device=torch.device("cpu"),
        progress=False,
    )  # fmt: skip
    trainer._setup(None)
    t = config.train
    per_step = t.batch_size * t.accumulate
    tiles = epoch_tiles(trainer.candidates, epoch=0, count=(steps + warmup) * per_step, seed=t.seed,
                        ink_fraction=t.ink_fraction, jitter=t.jitter)  # fmt: skip
    dataset = TileDataset(
        trainer.data.train, trainer.data.train_labels, trainer.stats, tiles, config.data
    )
    loader = iter(
        tile_loader(
            dataset, batch_size=per_step, num_workers=t.num_workers, device=torch.device("cpu")
        )
    )
    times = np.zeros((steps, 3))
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        x, y, _ = trainer.stepper.prepare(batch)
        t2 = time.perf_counter()
        trainer.stepper.optimise(x, y)
        t3 = time.perf_counter()
        if i >= warmup:
            times[i - warmup] = (t1 - t0, t2 - t1, t3 - t2)
    total = times.sum()
    load, aug, model = times.sum(axis=0) / total
    return {"load": load, "augment": aug, "model": model, "step_ms": 1000 * total / steps,
            "tiles_per_s": steps * per_step / total}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="dataset dir (default: generate demo data)")
    parser.add_argument("--config", default="cpu-demo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, folds = _dataset(args.data, Path(tmp))
        for workers in args.workers:
            config = load_config(args.config, args.overrides)
            config = apply_overrides(config, [f"train.num_workers={workers}"])
            r = bench(
                config,
                data_dir,
                folds,
                Path(tmp) / f"run{workers}",
                steps=args.steps,
                warmup=args.warmup,
            )
            print(f"{args.config} num_workers={workers} batch={config.train.batch_size} "
                  f"tile={config.data.tile} C={config.data.in_channels}: "
                  f"data {r['load']:.1%} + augment {r['augment']:.1%} = "
                  f"{r['load'] + r['augment']:.1%} of a step, model {r['model']:.1%}; "
                  f"{r['step_ms']:.0f} ms/step, {r['tiles_per_s']:.1f} tiles/s")  # fmt: skip


if __name__ == "__main__":
    main()
