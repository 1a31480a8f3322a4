"""What a training run shows in TensorBoard besides its training scalars (train/*, loop.py).

    Board(writer)                         rank 0's SummaryWriter; None on the other ranks, where
                                          every call returns at once (nothing is computed)
    .validation(step, v, config, data)    val/f05, val/threshold, val/loss and its parts, and
                                          val/preview/<fragment>: input | label | prediction of
                                          the held-out rows, at most PREVIEW_WIDTH wide
    .hparams(config, step, best_f05)      the resolved config's main fields (HPARAMS) with the
                                          best held-out F0.5, in TensorBoard's HPARAMS tab

val/loss is Validation.loss: the training loss of the stitched held-out map over its scored
pixels (kit.models.losses.level_loss), so it costs no forward pass. A preview's input and label
panels are read at the first validation and kept; later ones only shrink the new map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kit.config import Config, flat_config
from kit.train.preview import fragment_panels, validation_preview

if TYPE_CHECKING:
    from kit.train.loop import FoldData
    from kit.train.validate import Validation

PREVIEW_WIDTH = 768
# the config fields shown as hyperparameters: what tells runs apart when comparing them
HPARAMS = (
    "name", "model.family", "model.variant", "model.train_mode", "model.adapter", "model.prompt",
    "data.input_mode", "data.z_start", "data.z_end", "data.tile", "data.stride",
    "train.epochs", "train.steps_per_epoch", "train.batch_size", "train.accumulate", "train.lr",
    "train.weight_decay", "train.warmup_steps", "train.ema", "train.ink_fraction", "train.seed",
    "loss.bce", "loss.dice", "loss.focal", "loss.label_smoothing",
)  # fmt: skip
BEST = "hparam/best_f05"  # the metric beside the hyperparameters


class Board:
    """The TensorBoard side of one run (see the module docstring)."""

    def __init__(self, writer) -> None:
        self.writer = writer  # torch.utils.tensorboard.SummaryWriter, or None
        self.panels: dict[str, list] = {}  # fragment id -> its preview's fixed panels

    def validation(self, step: int, v: Validation, config: Config, data: FoldData) -> None:
        if self.writer is None:
            return
        w = self.writer
        w.add_scalar("val/f05", v.score, step)
        w.add_scalar("val/threshold", v.threshold, step)
        w.add_scalar("val/loss", v.loss["total"], step)
        for part, value in v.loss.items():
            if part != "total" and getattr(config.loss, part) > 0:
                w.add_scalar(f"val/loss_{part}", value, step)
        for fragment, ranges in zip(data.val, data.val_rows, strict=True):
            if fragment.id not in self.panels:
                self.panels[fragment.id] = fragment_panels(
                    fragment, config, ranges, max_width=PREVIEW_WIDTH
                )
            fixed, prob = self.panels[fragment.id], v.maps[fragment.id]
            picture = validation_preview(fragment, config, prob, ranges, max_width=PREVIEW_WIDTH,
                                         panels=fixed)  # fmt: skip
            w.add_image(f"val/preview/{fragment.id}", picture[..., ::-1].copy(), step,
                        dataformats="HWC")  # fmt: skip

    def hparams(self, config: Config, step: int, best_f05: float) -> None:
        """Once, at the end of an invocation; run_name "." keeps them in the run's own folder
        (add_hparams would otherwise open a sub-run named by the time)."""
        if self.writer is None:
            return
        self.writer.add_hparams(hparams(config), {BEST: best_f05}, run_name=".", global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def hparams(config: Config) -> dict[str, int | float | str | bool]:
    """HPARAMS of `config`, as values TensorBoard takes (others, e.g. None, as text)."""
    flat = flat_config(config)
    plain = (int, float, str, bool)
    return {k: flat[k] if isinstance(flat[k], plain) else str(flat[k]) for k in HPARAMS}
