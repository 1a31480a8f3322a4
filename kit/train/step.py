"""One optimiser step: `Stepper(config, model, hooks, ...).step(batch)`.

A loader batch of `batch_size × accumulate` tiles goes to the device, is normalised and
augmented there (with the run's seeded generator), then split into micro-batches (`batch_size`,
halved on CUDA out-of-memory) whose gradients accumulate under autocast; then gradient
clipping, AdamW, the LR schedule and EMA. The model family's `TrainingHooks` add what its
forward takes besides x (SAM: cached embeddings, point prompts). Under DDP the ranks run the
same micro-batches and only the last one synchronises gradients.

Speed (BENCHMARKS.md, "Kit against the plain loop"): convolution weights are channels-last,
AdamW is fused where torch has the kernel, `model.compile` compiles the training forward, and
a step never waits for the device: the loss parts come back as device tensors (the trainer
reads them at its log interval) and the EMA counts its updates on the host.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable

import torch
from tqdm import tqdm

from kit.augment import augment_batch
from kit.config import Config
from kit.data.preprocess import normalize
from kit.models import TrainingHooks, param_groups
from kit.models.losses import segmentation_loss
from kit.precision import autocast_dtype
from kit.train import ddp


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class _SomeRankOutOfMemory(Exception):
    """A DDP rank ran out of CUDA memory in this micro-batch: every rank halves it together."""


class Stepper:
    """The model and everything that moves it: optimizer, schedule, scaler, EMA, generator.
    Puts the model's convolution weights in channels-last order (`channels_last`)."""

    def __init__(
        self,
        config: Config,
        model: torch.nn.Module,
        hooks: TrainingHooks,
        *,
        info: ddp.DistInfo,
        device: torch.device,
        on_oom: Callable[[str], None] | None = None,
    ) -> None:
        self.model, self.hooks, self.info, self.device = model, hooks, info, device
        channels_last(model)
        self.ddp_model = model  # DistributedDataParallel(model) once `distribute` ran
        self.forward_model = _compiled(model, config)  # what training steps call
        self.micro_batch = config.train.batch_size  # halved on CUDA out-of-memory
        self.on_oom = on_oom  # told each halving (the trainer prints and logs it)
        self.last_batch: tuple | None = None  # (x, y, tiles) of the last step, for previews
        self.reset(config)

    def reset(self, config: Config) -> None:
        """A fresh optimizer, LR schedule, grad scaler, EMA and augmentation generator for
        `config` (again after a budget calibration moved them on)."""
        self.config = config
        t = config.train
        self.optimizer = adamw(param_groups(self.model, config), lr=t.lr,
                               weight_decay=t.weight_decay)  # fmt: skip
        self.total = t.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup=t.warmup_steps, total=self.total)
        )
        self.amp_dtype = autocast_dtype(t.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.ema = None
        if t.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True
            )
        self.ema_updates = 0  # = ema.n_averaged, kept on the host (restore() sets it)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(t.seed * 1_000_003 + self.info.rank)

    def relength(self, config: Config) -> None:
        """`config`'s length (a budget's re-fit or cut) for the LR schedule's total; nothing
        else changes: the optimizer and schedule go on from the current step."""
        self.config = config
        self.total = config.train.total_steps

    def distribute(self) -> None:
        """Wrap the model in DistributedDataParallel (a no-op in a single process)."""
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self.forward_model = _compiled(self.ddp_model, self.config)

    def inference_model(self) -> torch.nn.Module:
        """The weights validation and checkpoints use: the EMA's if on."""
        return self.ema.module if self.ema is not None else self.model

    def head_lr(self) -> float:
        """The learning rate of the group with `lr_scale` 1 (the head; train.lr × schedule).
        Under layer decay param_groups[0] is the lowest layer's, train.lr × decay^L."""
        groups = self.optimizer.param_groups
        return max(groups, key=lambda g: g.get("lr_scale", 1.0))["lr"]

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimiser step over a loader batch; returns the mean loss parts (0-d tensors on
        the device: reading one waits for the step to finish)."""
        x, y, valid = self.prepare(batch)
        return self.optimise(x, y, tiles=batch["tile"], valid=valid)

    def prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Loader batch -> device, normalised and augmented: x (B, C, T, T), y (B, 1, T, T) and
        the loss weights valid (B, 1, T, T), 0 on ignored pixels (None: the batch has none).
        No augmentation when the hooks need plain tiles (cached embeddings are the plain tile's)."""
        nb = self.device.type == "cuda"
        x = batch["image"].to(self.device, non_blocking=nb)
        y = batch["label"].to(self.device, non_blocking=nb).float()
        ignore = batch.get("ignore")
        ignored = None  # the key is there only when some training fragment has an ignore mask
        if ignore is not None:
            ignored = ignore.to(self.device, non_blocking=nb).float()
            y = torch.cat([y, ignored], dim=1)  # warped together with the labels
        x = normalize(x, batch["stats"], self.config.data)
        if not self.hooks.plain_tiles:
            x, y = augment_batch(x, y, config=self.config.augment, generator=self.generator,
                                 channels=self.config.data.in_channels)  # fmt: skip
        if ignored is not None:
            y, ignored = y[:, :1], y[:, 1:]
        self.last_batch = (x, y, batch["tile"])
        return x, y, None if ignored is None else 1 - ignored

    def optimise(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        tiles: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward/backward over micro-batches, clip, optimiser, scheduler and EMA steps.
        `tiles` (one row per tile) are what the hooks look up (e.g. cached embeddings); `valid`
        (B, 1, T, T) weighs each pixel's loss (0 = ignored)."""
        while True:
            try:
                parts = self._accumulate(x, y, tiles, valid)
                break
            except (torch.cuda.OutOfMemoryError, _SomeRankOutOfMemory) as error:
                if self.info.distributed and isinstance(error, torch.cuda.OutOfMemoryError):
                    raise RuntimeError(
                        f"rank {self.info.rank}: CUDA out of memory in the last micro-batch of a "
                        "step (the one whose backward synchronises the gradients), which the "
                        "ranks cannot agree to retry; lower train.batch_size and raise "
                        "train.accumulate by the same factor (same effective batch)"
                    ) from error
                if self.micro_batch <= 1:
                    raise
                self._halve(len(x))
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            update_ema(self.ema, self.model, first=self.ema_updates == 0)
            self.ema_updates += 1
        return parts

    def _halve(self, batch: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        if self.info.distributed:  # the failed forward left this flag rank-dependent
            self.ddp_model.require_forward_param_sync = True
        old = self.micro_batch
        self.micro_batch = old // 2
        every = " on every rank" if self.info.distributed else ""
        msg = (f"CUDA out of memory at micro-batch {old}: now micro-batch {old // 2} × "
               f"{-(-batch // (old // 2))} accumulation steps{every} (same batch)")  # fmt: skip
        if self.info.is_main:
            tqdm.write(msg)
        if self.on_oom is not None:
            self.on_oom(msg)

    def _accumulate(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        tiles: torch.Tensor | None,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Gradients of the batch over micro-batches; returns the mean loss parts.

        Under DDP the ranks must run the same micro-batches (forwards broadcast buffers, the
        last backward all-reduces gradients): after each non-final micro-batch (forward and
        backward under `no_sync`) they all-reduce an out-of-memory flag, and if any rank ran
        out, all raise `_SomeRankOutOfMemory` and retry with half the micro-batch together.
        The last micro-batch's forward arms DDP's gradient hooks, so an OOM there cannot be
        retried consistently: under DDP it stops the run (single process: halved as well).
        """
        self.optimizer.zero_grad(set_to_none=True)
        micro = self.micro_batch
        kwargs_of = self.hooks.step_kwargs(x, y, tiles, generator=self.generator)
        totals: dict[str, torch.Tensor] = {}
        starts = range(0, len(x), micro)
        for i, start in enumerate(starts):
            part = slice(start, start + micro)
            xc, yc, kwargs = x[part], y[part], kwargs_of(part)
            vc = None if valid is None else valid[part]
            final = i == len(starts) - 1
            sync = not self.info.distributed or final
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            weight = len(xc) / len(x)
            if final:
                losses = self._forward(xc, yc, kwargs, vc)
                self._backward(losses, weight)
            else:
                out_of_memory = False
                try:
                    with ctx:
                        losses = self._forward(xc, yc, kwargs, vc)
                        self._backward(losses, weight)
                except torch.cuda.OutOfMemoryError:
                    if not self.info.distributed:
                        raise
                    out_of_memory = True
                if self.info.distributed and ddp.any_flag(self.info, out_of_memory):
                    raise _SomeRankOutOfMemory
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() * weight
        return totals

    def _forward(
        self, x: torch.Tensor, y: torch.Tensor, kwargs: dict, valid: torch.Tensor | None = None
    ) -> dict:
        """Model and loss of one micro-batch under autocast: the loss parts (tensors)."""
        autocast = torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )
        with autocast:
            output = self.forward_model(x, **kwargs)
            return segmentation_loss(output, y, config=self.config.loss, valid=valid)

    def _backward(self, losses: dict, weight: float) -> None:
        self.scaler.scale(losses["total"].float() * weight).backward()


def adamw(groups: list[dict], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel for these parameters (CUDA; the CPU since torch
    2.4): one pass over all parameters instead of a dozen per tensor, +2-3 % per training step
    on the CPU (BENCHMARKS.md), the same update up to float rounding. Else torch's default."""
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convolution weights in channels-last order, in place (values unchanged): 2D convs as
    kit.infer.stitch.to_channels_last does, 3D convs (stem3d) channels_last_3d. The convolutions
    then run channels-last: on the CPU oneDNN's fast kernels (the demo members' steps +14-19 %,
    BENCHMARKS.md), on CUDA cuDNN's tensor-core layout."""
    from kit.infer.stitch import to_channels_last

    to_channels_last(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
    return model


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, *, first: bool) -> None:
    """AveragedModel.update_parameters(model) for `use_buffers=True` without its two host
    reads of the device counter `n_averaged` (`first`: no update yet, so copy). Same results."""
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

    averaged = [p.detach() for p in itertools.chain(ema.module.parameters(), ema.module.buffers())]
    current = [p.detach() for p in itertools.chain(model.parameters(), model.buffers())]
    if first:
        torch._foreach_copy_(averaged, current)
    else:
        groups = _group_tensors_by_device_and_dtype([averaged, current])
        for (device, _), ([mine, theirs], _) in groups.items():
            ema.multi_avg_fn(mine, theirs, ema.n_averaged.to(device))
    ema.n_averaged += 1


def _compiled(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    """`model`, through torch.compile when `model.compile` (the state dict stays the model's)."""
    return torch.compile(model) if config.model.compile else model
