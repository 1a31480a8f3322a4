"""Fine-tune one fold: `train_fold(config, data_dir=..., fold=K, out=RUN_DIR)`.

One optimiser step = one loader batch of `batch_size × accumulate` tiles per rank, normalised and
augmented on the device, then split into micro-batches (`batch_size`, halved on CUDA OOM) whose
gradients accumulate. The k-th step of an epoch always sees the same tiles (the sampler is seeded
by seed+epoch), and `last.pt` carries every RNG state, so `--resume` replays the exact next batch.

Run directory (INTERFACE.md):
    config.yaml  run.json  metrics.csv  tensorboard/  report/
    checkpoints/last.pt   model (EMA if on) + optimizer, scheduler, scaler, EMA, RNG, step, ...
    checkpoints/best.pt   model with the best held-out F0.5 so far
    oof/<fragment>.png    uint8 probability of best.pt on the held-out rows, 0 elsewhere
    oof/regions.csv       the held-out regions (fragment,fold,row_start,row_end)
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from kit.augment import augment_batch
from kit.checkpoint import load_checkpoint, save_checkpoint
from kit.config import Config, config_from_dict, config_to_dict, save_config, unresolved
from kit.data.fragment import Fragment
from kit.data.preprocess import fragment_stats, normalize
from kit.errors import KitError
from kit.io import write_png
from kit.train import ddp
from kit.train.budget import fit_budget, resolved_config
from kit.train.dataset import TileDataset, tile_loader
from kit.train.sampler import epoch_tiles, tile_candidates

METRIC_FIELDS = ["epoch", "step", "loss", "lr", "f05", "threshold", "tiles_per_s", "seconds"]


@dataclass
class FoldData:
    """Everything the run reads from the dataset, once."""

    train: list[Fragment]
    train_labels: list[np.ndarray]
    train_rows: list[list[tuple[int, int]]]
    val: list[Fragment]
    val_rows: list[list[tuple[int, int]]]
    regions: list  # kit.data.folds.Region held out in this fold


@dataclass
class TrainState:
    step: int = 0
    best_score: float = -1.0
    best_threshold: float | None = None
    micro_batch: int = 0
    history: list[dict] = field(default_factory=list)
    # The running epoch's totals so far, saved in mid-epoch checkpoints so that a resumed
    # epoch's metrics.csv row still averages the whole epoch.
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_steps: int = 0
    epoch_tiles: int = 0
    epoch_seconds: float = 0.0


def train_fold(
    config: Config,
    *,
    data_dir: Path,
    fold: int,
    folds_csv: Path,
    out: Path,
    max_steps: int | None = None,
    resume: bool = False,
    log_images: bool = False,
    device: str | None = None,
    progress: bool = True,
    started: float | None = None,
) -> dict:
    """Train (or resume) one fold; returns {"step", "best_f05", "threshold", "finished"}.

    `started` (time.monotonic()) is when the job began, for `train.budget_minutes` (default now).
    """
    started = time.monotonic() if started is None else started
    info = ddp.init_distributed()
    try:
        return _Trainer(
            config, data_dir=Path(data_dir), fold=fold, folds_csv=Path(folds_csv), out=Path(out),
            max_steps=max_steps, resume=resume, log_images=log_images, info=info,
            device=ddp.device_for(info, device), progress=progress and info.is_main,
            started=started,
        ).run()  # fmt: skip
    finally:
        ddp.cleanup(info)


def total_steps(config: Config, max_steps: int | None) -> int:
    """Optimiser steps this invocation trains to: all epochs, or fewer with --max-steps."""
    full = config.train.epochs * config.train.steps_per_epoch
    return min(full, max_steps) if max_steps is not None else full


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def finished_run(out: Path, config: Config, max_steps: int | None) -> bool:
    """True when `out` already holds a run of this length with a best.pt (reruns are cheap).
    The length of a budgeted run is the one it resolved, if it had the same budget."""
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    if not (last.is_file() and best.is_file()):
        return False
    state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    saved = state.get("config") or {}
    if (saved.get("train") or {}).get("budget_minutes", 0.0) != config.train.budget_minutes:
        return False  # another budget is another run
    config = resolved_config(config, saved)
    return int(state.get("step", 0)) >= total_steps(config, max_steps)


def load_fold_data(data_dir: Path, fold: int, folds_csv: Path, *, progress: bool) -> FoldData:
    """Fragments, labels and absolute row ranges for the training and held-out regions of `fold`."""
    from kit.data.folds import load_folds, training_regions, validation_regions
    from kit.data.layout import fragment_path

    regions = load_folds(folds_csv)
    held_out = validation_regions(regions, fold)
    if not held_out:
        folds = sorted({r.fold for r in regions})
        raise KitError(f"{folds_csv} has no regions for fold {fold}; folds there: {folds}")
    fragments: dict[str, Fragment] = {}

    def open_fragment(name: str) -> Fragment:
        if name not in fragments:
            fix = (
                f"{folds_csv} names it; write a split for this dataset: "
                f"python -m kit folds --data {data_dir}"
            )
            fragments[name] = Fragment(fragment_path(data_dir, name, fix=fix))
        return fragments[name]

    def grouped(rs) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for r in rs:
            out.setdefault(r.fragment, []).append(r.rows(open_fragment(r.fragment).shape[0]))
        return out

    train_rows, val_rows = grouped(training_regions(regions, fold)), grouped(held_out)
    if not train_rows:
        raise KitError(f"{folds_csv}: fold {fold} leaves no training region")
    names = sorted(train_rows)
    labels = []
    for name in tqdm(names, desc="labels", disable=not progress, leave=False):
        label = fragments[name].labels()
        if label is None:
            raise KitError(f"{fragments[name].files.labels} is missing: cannot train")
        labels.append(label)
    return FoldData(
        train=[fragments[n] for n in names], train_labels=labels,
        train_rows=[train_rows[n] for n in names], val=[fragments[n] for n in sorted(val_rows)],
        val_rows=[val_rows[n] for n in sorted(val_rows)], regions=held_out,
    )  # fmt: skip


def check_embedding_cache(config: Config) -> None:
    """KitError unless `train.embedding_cache` can work: a SAM model with a frozen encoder."""
    m = config.model
    if not config.train.embedding_cache:
        return
    if m.family != "sam":
        raise KitError(
            f"train.embedding_cache=true caches SAM image embeddings, but model.family={m.family!r}; "
            "set train.embedding_cache=false (or use model.family=sam with model.train_mode=frozen)"
        )
    if m.train_mode != "frozen":
        raise KitError(
            f"train.embedding_cache=true needs a frozen SAM encoder, but model.train_mode="
            f"{m.train_mode!r} changes it every step; set model.train_mode=frozen, "
            "or train.embedding_cache=false"
        )


def cache_ignores(config: Config) -> list[str]:
    """The settings an embedding-cache run ignores: jitter and every image augmentation (the
    cached embedding is the unaugmented tile's; no transform of it equals encoding a transformed
    tile)."""
    ignored = ["train.jitter"] if config.train.jitter else []
    return ignored + [
        f"augment.{k}" for k, v in asdict(config.augment).items() if k.startswith("p_") and v > 0
    ]


class _SomeRankOutOfMemory(Exception):
    """A DDP rank ran out of CUDA memory in this micro-batch: every rank halves it together."""


class _Trainer:
    """The state of one training run; `run()` is the whole job."""

    def __init__(self, config: Config, *, data_dir, fold, folds_csv, out, max_steps, resume,
                 log_images, info, device, progress, started=None):  # fmt: skip
        self.config, self.data_dir, self.fold, self.folds_csv = config, data_dir, fold, folds_csv
        # time.monotonic() when the job began (train.budget_minutes); default: now
        self.started = time.monotonic() if started is None else started
        self.budget: dict | None = None  # the budget calibration's record (run.json)
        self.writer = None
        self.data: FoldData | None = None
        self.probe: dict | None = None  # the window the run's "auto" data fields came from
        self.init_record: dict | None = None  # what model.init_from loaded and skipped
        self.out, self.max_steps, self.resume, self.log_images = out, max_steps, resume, log_images
        self.info, self.device, self.progress = info, device, progress
        self.last_path = out / "checkpoints" / "last.pt"
        self.best_path = out / "checkpoints" / "best.pt"
        self.state = TrainState(micro_batch=config.train.batch_size)
        self.last_tiles = np.zeros((0, 3), dtype=np.int64)  # this rank's tiles of the epoch
        self._last_points = None

    # -- setup ---------------------------------------------------------------------------------
    def run(self) -> dict:
        if finished_run(self.out, self.config, self.max_steps):
            state = torch.load(self.last_path, map_location="cpu", weights_only=False, mmap=True)
            self._say(f"{self.out}: run finished ({state['step']} steps); nothing to do")
            return self._summary(
                state["step"], state.get("best_score"), state.get("best_threshold"), True
            )
        if unresolved(self.config):  # before resuming: the resolved config is the run's
            self._resolve_auto()
        if self.last_path.is_file() and not self.resume:
            raise KitError(
                f"{self.last_path} holds an unfinished run; add --resume to continue it, "
                "or give another --out (or delete that directory) to start over"
            )
        resume_state = (
            load_checkpoint(self.last_path) if self.resume and self.last_path.is_file() else None
        )
        if resume_state is not None:  # a budgeted run keeps the length it resolved
            self.config = resolved_config(self.config, resume_state["config"])
            self._check_resumable(resume_state)
        self._setup(resume_state)
        self._train(total_steps(self.config, self.max_steps))
        ddp.barrier(self.info)
        return self._summary(
            self.state.step, self.state.best_score, self.state.best_threshold, True
        )

    def _resolve_auto(self) -> None:
        """Resolve every "auto" field from this fold's training rows only (held-out labels never
        choose the window): data.z_start/z_end/reverse by the probe, then model.input_gain from
        the contrast of tiles in that window."""
        from kit.data import probe as p

        self.data = load_fold_data(self.data_dir, self.fold, self.folds_csv, progress=self.progress)
        fd, record = self.data, {}
        if self.config.data.unresolved:
            probe = p.probe_fragments(fd.train, fd.train_labels, fd.train_rows)
            self.config = p.resolve_auto(self.config, probe)
            d = self.config.data
            record = {"window": list(probe.window), "reverse": probe.reverse, "notes": probe.notes}
            self._say(f"probe (training rows of fold {self.fold}): {p.describe(probe)}; "
                      f"data.z_start={d.z_start} z_end={d.z_end} reverse={d.reverse}")  # fmt: skip
        if self.config.model.input_gain == "auto":
            contrast = p.tile_contrast(fd.train, fd.train_rows, self.config.data)
            self.config = p.resolve_input_gain(self.config, contrast)
            record["tile_contrast"] = contrast
            self._say(
                f"tile contrast {contrast:.4f}: model.input_gain={self.config.model.input_gain}"
            )
        self.probe = record

    def _check_resumable(self, saved: dict) -> None:
        ours, theirs = config_to_dict(self.config), saved["config"]
        with contextlib.suppress(KitError):  # fields added since it was saved: their defaults
            theirs = config_to_dict(config_from_dict(theirs))
        free = ("epochs", "num_workers", "checkpoint_every")  # may change on resume
        for section in ours:  # the rest defines the run
            if section == "train":
                a = {k: v for k, v in ours[section].items() if k not in free}
                b = {k: v for k, v in theirs[section].items() if k not in free}
            else:
                a, b = ours[section], theirs.get(section)
            if a != b:
                raise KitError(
                    f"--resume: section {section!r} differs from the config in {self.last_path}; "
                    "resume with the same --config/--set, or give a new --out"
                )

    def _setup(self, saved: dict | None) -> None:
        from kit.models import build_model, load_pretrained

        config, t = self.config, self.config.train
        check_embedding_cache(config)
        if self.device.type == "cpu" and t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        if self.data is None:
            self.data = load_fold_data(
                self.data_dir, self.fold, self.folds_csv, progress=self.progress
            )
        self.stats = torch.stack(
            [fragment_stats(f, config.data).as_tensor() for f in self.data.train]
        )
        self.candidates = tile_candidates(
            self.data.train, self.data.train_labels, self.data.train_rows, config.data
        )
        model = build_model(config)
        if config.model.pretrained and saved is None:
            load_pretrained(model, config)
        if config.model.init_from and saved is None:
            from kit.checkpoint import init_from

            self.init_record = init_from(model, config, config.model.init_from)
            r = self.init_record
            skipped = "; ".join(r["skipped"]) or "none"
            self._say(f"init from {r['checkpoint']}: {r['loaded']} tensors; skipped: {skipped}")
        self.model = model.to(self.device)
        self.cache = self._make_cache()
        self._build_optimisation()
        if saved is not None:
            self._restore(saved)
        self.ddp_model = self.model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if saved is None and self.config.train.budget_minutes > 0:
            self.budget = fit_budget(self)  # resolves train.steps_per_epoch and warmup_steps
        if self.info.is_main:
            self._write_run_files()
        self.writer = None
        if self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def _build_optimisation(self) -> None:
        """A fresh optimizer, LR schedule, grad scaler, EMA and augmentation generator for
        `self.model` and `self.config` (again after a budget calibration moved them on)."""
        from kit.models import param_groups

        t = self.config.train
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, self.config), lr=t.lr, weight_decay=t.weight_decay
        )
        self.total = t.epochs * t.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup=t.warmup_steps, total=self.total)
        )
        cuda = self.device.type == "cuda"
        self.amp_dtype = (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp) if cuda else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.ema = None
        if t.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True
            )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(t.seed * 1_000_003 + self.info.rank)

    def _write_run_files(self) -> None:
        (self.out / "oof").mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        save_config(self.config, self.out / "config.yaml")
        run = {"data": str(self.data_dir.resolve()), "fold": self.fold,
               "folds_csv": str(self.folds_csv.resolve())}  # fmt: skip
        budget = self.budget
        if budget is None and self.config.train.budget_minutes > 0:  # resumed: keep the record
            with contextlib.suppress(OSError, ValueError):
                budget = json.loads((self.out / "run.json").read_text()).get("budget")
        if budget is not None:
            run["budget"] = budget
        if self.probe is not None:
            run["probe"] = self.probe
        if self.init_record is not None:
            run["init_from"] = self.init_record
        (self.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        with open(self.out / "oof" / "regions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["fragment", "fold", "row_start", "row_end"])
            for r in self.data.regions:
                w.writerow([r.fragment, r.fold, r.row_start, r.row_end])

    def _make_cache(self):
        """The run's EmbeddingCache on the device, or None; prints what it ignores and costs."""
        if not self.config.train.embedding_cache:
            return None
        from kit.models.embedding_cache import EmbeddingCache

        ignored = cache_ignores(self.config)
        if ignored:
            self._say(
                "embedding cache: tiles are neither jittered nor augmented, so each tile's "
                f"embedding is computed once; ignoring {', '.join(ignored)} (set them to 0/false "
                "to silence this note)"
            )
        pe = self.model.prompt_encoder
        h, w = pe.image_embedding_size
        per_tile = pe.embed_dim * h * w * 4
        n = len(self.candidates)
        self._say(
            f"embedding cache: at most {n} tiles × {pe.embed_dim}×{h}×{w} × 4 B = "
            f"{n * per_tile / 2**20:.1f} MiB on {self.device}"
        )
        return EmbeddingCache(device=str(self.device))

    def _cache_keys(self, tiles: torch.Tensor) -> list[tuple] | None:
        """tile_key of each (fragment index, y, x) row of `tiles` (B, 3), or None without a cache."""
        if self.cache is None:
            return None
        from kit.models.embedding_cache import tile_key

        d = self.config.data
        return [
            tile_key(self.data.train[f].id, y, x, d.z_start, d.z_end) for f, y, x in tiles.tolist()
        ]

    # -- checkpoints ---------------------------------------------------------------------------
    def _inference_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _save_last(self) -> None:
        s = self.state
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(), "augment": self.generator.get_state()}  # fmt: skip
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.last_path, {
            "config": config_to_dict(self.config),
            "model": self._inference_model().state_dict(),
            "train_model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            "step": s.step,
            "epoch": s.step // self.config.train.steps_per_epoch,
            "best_score": s.best_score,
            "best_threshold": s.best_threshold,
            "micro_batch": s.micro_batch,
            "accumulate": self._tiles_per_step() // s.micro_batch,
            "history": s.history,
            "epoch_progress": {"sums": s.epoch_sums, "steps": s.epoch_steps,
                               "tiles": s.epoch_tiles, "seconds": s.epoch_seconds},
        })  # fmt: skip

    def _restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["train_model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.load_state_dict(saved["ema"])
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["augment"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        s = self.state
        s.step, s.best_score, s.best_threshold = (
            saved["step"],
            saved["best_score"],
            saved["best_threshold"],
        )
        s.micro_batch, s.history = saved["micro_batch"], list(saved.get("history", []))
        if s.step % self.config.train.steps_per_epoch and "epoch_progress" in saved:
            p = saved["epoch_progress"]
            s.epoch_sums, s.epoch_steps = dict(p["sums"]), p["steps"]
            s.epoch_tiles, s.epoch_seconds = p["tiles"], p["seconds"]
        self._say(f"resuming {self.out} at step {s.step}")

    # -- training ------------------------------------------------------------------------------
    def _tiles_per_step(self) -> int:
        return self.config.train.batch_size * self.config.train.accumulate

    def _train(self, target: int) -> None:
        t, s = self.config.train, self.state
        bar = tqdm(total=target, initial=s.step, desc=f"train fold {self.fold}",
                   disable=not self.progress, dynamic_ncols=True)  # fmt: skip
        per_step = self._tiles_per_step()
        while s.step < target:
            epoch, first = divmod(s.step, t.steps_per_epoch)
            tiles = epoch_tiles(
                self.candidates, epoch=epoch, seed=t.seed, ink_fraction=t.ink_fraction,
                jitter=t.jitter and self.cache is None,
                count=t.steps_per_epoch * per_step * self.info.world_size,
            )  # fmt: skip
            tiles = ddp.shard(tiles, self.info)[first * per_step :]
            self.last_tiles = tiles
            dataset = TileDataset(
                self.data.train, self.data.train_labels, self.stats, tiles, self.config.data,
                skip_image=self._cached_tiles(tiles),
            )  # fmt: skip
            loader = tile_loader(
                dataset, batch_size=per_step, num_workers=t.num_workers, device=self.device
            )
            if first == 0:  # else: resumed mid-epoch with the saved totals
                s.epoch_sums, s.epoch_steps, s.epoch_tiles, s.epoch_seconds = {}, 0, 0, 0.0
            start = time.perf_counter() - s.epoch_seconds
            for batch in loader:
                parts = self._step(batch)
                s.step += 1
                s.epoch_steps += 1
                s.epoch_tiles += per_step * self.info.world_size
                for k, v in parts.items():
                    s.epoch_sums[k] = s.epoch_sums.get(k, 0.0) + v
                s.epoch_seconds = time.perf_counter() - start
                rate = s.epoch_tiles / max(s.epoch_seconds, 1e-9)
                lr = self._head_lr()
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.4f}", lr=f"{lr:.2e}", tiles_s=f"{rate:.1f}")
                if self.writer is not None:
                    for k, v in parts.items():
                        self.writer.add_scalar(f"train/{k}", v, s.step)
                    self.writer.add_scalar("train/lr", lr, s.step)
                if s.step >= target:
                    break
                if self._mid_epoch_checkpoint_due():  # a SIGKILL loses < checkpoint_every steps
                    self._save_last()
            seconds = s.epoch_seconds
            epoch_end = s.step % t.steps_per_epoch == 0
            row = {"epoch": epoch + 1, "step": s.step, "lr": self._head_lr(),
                   "tiles_per_s": s.epoch_tiles / max(seconds, 1e-9), "seconds": seconds}  # fmt: skip
            row.update(
                {
                    ("loss" if k == "total" else f"loss_{k}"): v / max(s.epoch_steps, 1)
                    for k, v in s.epoch_sums.items()
                }
            )
            if s.step >= target or (epoch_end and (epoch + 1) % t.val_every == 0):
                row.update(self._validate(epoch + 1))
            if self.info.is_main:
                s.history.append(row)
                self._save_last()
                self._write_metrics()
            ddp.barrier(self.info)
        bar.close()

    def _cached_tiles(self, tiles: np.ndarray) -> np.ndarray | None:
        """bool (N,): tiles whose embedding is cached already, so the loader need not read them
        (None without a cache, or with --log-images, whose preview shows the input)."""
        if self.cache is None or self.log_images:
            return None
        keys = self._cache_keys(torch.from_numpy(np.asarray(tiles)).reshape(-1, 3))
        return np.array([k in self.cache for k in keys], dtype=bool)

    def _mid_epoch_checkpoint_due(self) -> bool:
        """Rank 0, every train.checkpoint_every steps, except at epoch ends (saved anyway)."""
        every, step = self.config.train.checkpoint_every, self.state.step
        mid_epoch = step % self.config.train.steps_per_epoch != 0
        return self.info.is_main and every > 0 and step % every == 0 and mid_epoch

    def _head_lr(self) -> float:
        """The learning rate of the group with `lr_scale` 1 (the head; train.lr × schedule).
        Under layer decay param_groups[0] is the lowest layer's, train.lr × decay^L."""
        groups = self.optimizer.param_groups
        return max(groups, key=lambda g: g.get("lr_scale", 1.0))["lr"]

    def _step(self, batch: dict) -> dict[str, float]:
        """One optimiser step over a loader batch; returns the mean loss parts."""
        x, y = self._prepare(batch)
        return self._optimise(x, y, keys=self._cache_keys(batch["tile"]))

    def _prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Loader batch -> device, normalised and augmented: x (B, C, T, T), y (B, 1, T, T).
        With the embedding cache, no augmentation (cached embeddings are of the plain tile)."""
        nb = self.device.type == "cuda"
        x = batch["image"].to(self.device, non_blocking=nb)
        y = batch["label"].to(self.device, non_blocking=nb).float()
        x = normalize(x, batch["stats"], self.config.data)
        if self.cache is None:
            x, y = augment_batch(x, y, config=self.config.augment, generator=self.generator)
        self._last_batch = (x, y, self._cache_keys(batch["tile"]))
        return x, y

    def _optimise(
        self, x: torch.Tensor, y: torch.Tensor, *, keys: list | None = None
    ) -> dict[str, float]:
        """Forward/backward over micro-batches, clip, optimiser, scheduler and EMA steps.
        `keys` (one per tile) look the embeddings up in the embedding cache, if any."""
        from kit.models.losses import segmentation_loss

        while True:
            try:
                parts = self._accumulate(x, y, segmentation_loss, keys)
                break
            except (torch.cuda.OutOfMemoryError, _SomeRankOutOfMemory) as error:
                if self.info.distributed and isinstance(error, torch.cuda.OutOfMemoryError):
                    raise RuntimeError(
                        f"rank {self.info.rank}: CUDA out of memory in the last micro-batch of a "
                        "step (the one whose backward synchronises the gradients), which the "
                        "ranks cannot agree to retry; lower train.batch_size and raise "
                        "train.accumulate by the same factor (same effective batch)"
                    ) from error
                if self.state.micro_batch <= 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                if self.info.distributed:  # the failed forward left this flag rank-dependent
                    self.ddp_model.require_forward_param_sync = True
                old = self.state.micro_batch
                self.state.micro_batch = old // 2
                every = " on every rank" if self.info.distributed else ""
                msg = (f"CUDA out of memory at micro-batch {old}: now micro-batch {old // 2} × "
                       f"{-(-len(x) // (old // 2))} accumulation steps{every} (same batch)")  # fmt: skip
                if self.info.is_main:
                    tqdm.write(msg)
                if self.writer is not None:
                    self.writer.add_text("oom", msg, self.state.step)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return parts

    def _accumulate(self, x: torch.Tensor, y: torch.Tensor, loss_fn, keys) -> dict[str, float]:
        """Gradients of the batch over micro-batches; returns the mean loss parts.

        Under DDP the ranks must run the same micro-batches (forwards broadcast buffers, the
        last backward all-reduces gradients): after each non-final micro-batch (forward and
        backward under `no_sync`) they all-reduce an out-of-memory flag, and if any rank ran
        out, all raise `_SomeRankOutOfMemory` and retry with half the micro-batch together.
        The last micro-batch's forward arms DDP's gradient hooks, so an OOM there cannot be
        retried consistently: under DDP it stops the run (single process: halved as well).
        """
        self.optimizer.zero_grad(set_to_none=True)
        micro = self.state.micro_batch
        prompts = self._prompts(x, y, keys)
        totals: dict[str, float] = {}
        starts = range(0, len(x), micro)
        for i, start in enumerate(starts):
            part = slice(start, start + micro)
            xc, yc = x[part], y[part]
            kwargs = {}
            if keys is not None:
                kwargs.update(cache=self.cache, cache_keys=keys[part])
            if prompts is not None:
                kwargs["prompts"] = type(prompts)(
                    *(p[part] if p is not None else None for p in prompts)
                )
            final = i == len(starts) - 1
            sync = not self.info.distributed or final
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            weight = len(xc) / len(x)
            if final:
                losses = self._forward(xc, yc, kwargs, loss_fn)
                self._backward(losses, weight)
            else:
                out_of_memory = False
                try:
                    with ctx:
                        losses = self._forward(xc, yc, kwargs, loss_fn)
                        self._backward(losses, weight)
                except torch.cuda.OutOfMemoryError:
                    if not self.info.distributed:
                        raise
                    out_of_memory = True
                if self.info.distributed and ddp.any_flag(self.info, out_of_memory):
                    raise _SomeRankOutOfMemory
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) * weight
        return totals

    def _forward(self, x: torch.Tensor, y: torch.Tensor, kwargs: dict, loss_fn) -> dict:
        """Model and loss of one micro-batch under autocast: the loss parts (tensors)."""
        autocast = torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )
        with autocast:
            output = self.ddp_model(x, **kwargs)
            return loss_fn(output, y, config=self.config.loss)

    def _backward(self, losses: dict, weight: float) -> None:
        self.scaler.scale(losses["total"].float() * weight).backward()

    def _prompts(self, x: torch.Tensor, y: torch.Tensor, keys: list | None):
        """SAM point prompts for `model.prompt: points` (a training experiment), else None."""
        if self.config.model.prompt != "points":
            return None
        from kit.models.prompts import training_prompts

        pred = None
        if self.config.model.point_sampling == "error":  # points on the current model's errors
            cached = {"cache": self.cache, "cache_keys": keys} if keys is not None else {}
            with torch.no_grad():
                pred = self.model(x, **cached).logits
        prompts = training_prompts(self.config.model, y, pred_logits=pred, generator=self.generator)
        self._last_points = (prompts.coords, prompts.labels) if prompts is not None else None
        return prompts

    # -- validation ----------------------------------------------------------------------------
    def _validate(self, epoch: int) -> dict[str, float]:
        """Stitch every held-out region (rank 0), F0.5 at the best threshold, keep best.pt."""
        if not self.info.is_main:
            return {}
        from kit.infer.stitch import predict_fragment
        from kit.metrics import best_threshold

        model = self._inference_model()
        model.eval()
        maps, probs, targets = {}, [], []
        for fragment, ranges in zip(self.data.val, self.data.val_rows, strict=True):
            full = np.zeros(fragment.shape, dtype=np.uint8)
            keep = np.zeros(fragment.shape[0], dtype=bool)
            for r0, r1 in ranges:
                pred = predict_fragment(model, self.config, fragment, rows=(r0, r1),
                                        device=str(self.device), progress=False)  # fmt: skip
                full[r0:r1] = pred[r0:r1]
                keep[r0:r1] = True
            labels = fragment.labels()
            if labels is None:
                raise KitError(f"{fragment.path / 'inklabels.png'} is missing: cannot validate")
            inside = fragment.mask() & keep[:, None]
            maps[fragment.id] = full
            probs.append(full[inside])
            targets.append(labels[inside])
        model.train()
        threshold, score = best_threshold(np.concatenate(probs), np.concatenate(targets))
        threshold, score = float(threshold), float(score)
        s = self.state
        if score > s.best_score:
            s.best_score, s.best_threshold = score, threshold
            for name, full in maps.items():
                write_png(self.out / "oof" / f"{name}.png", full)
            save_checkpoint(self.best_path, {
                "config": config_to_dict(self.config), "model": model.state_dict(),
                "step": s.step, "epoch": epoch, "score": score, "threshold": threshold,
            })  # fmt: skip
        if self.writer is not None:
            self.writer.add_scalar("val/f05", score, s.step)
            self.writer.add_scalar("val/threshold", threshold, s.step)
        if self.log_images:
            self._previews(epoch, maps)
        if self.progress:
            tqdm.write(f"epoch {epoch} step {s.step}: held-out F0.5 {score:.4f} at threshold "
                       f"{threshold:.3f} (best {s.best_score:.4f})")  # fmt: skip
        return {"f05": score, "threshold": threshold}

    def _previews(self, epoch: int, maps: dict[str, np.ndarray]) -> None:
        from kit.train.preview import training_preview, validation_preview

        folder = self.out / "report"
        folder.mkdir(exist_ok=True)
        for fragment, ranges in zip(self.data.val, self.data.val_rows, strict=True):
            picture = validation_preview(fragment, self.config, maps[fragment.id], ranges)
            cv2.imwrite(str(folder / f"epoch{epoch:03d}_{fragment.id}.png"), picture)
        x, y, keys = self._last_batch
        cached = {"cache": self.cache, "cache_keys": keys[:4]} if keys is not None else {}
        with torch.no_grad():
            self.model.eval()
            logits = self.model(x[:4], **cached).logits.float()
            self.model.train()
        picture = training_preview(
            x[:4], y[:4], torch.sigmoid(logits), getattr(self, "_last_points", None)
        )
        cv2.imwrite(str(folder / f"epoch{epoch:03d}_train.png"), picture)

    # -- output --------------------------------------------------------------------------------
    def _write_metrics(self) -> None:
        keys = list(METRIC_FIELDS)
        for row in self.state.history:
            keys += [k for k in row if k not in keys]
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in self.state.history:
                w.writerow(row)

    def _say(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, flush=True)

    def _summary(self, step, score, threshold, finished) -> dict:
        return {"step": step, "best_f05": score, "threshold": threshold, "finished": finished}
