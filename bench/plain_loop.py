"""The kit's training step against the plain fine-tuning loop a user would write (issue 15).

    PYTHONPATH=. python bench/plain_loop.py [--members cpu-demo cpu-demo-unet vit_b-256]
        [--steps 3] [--repeats 5] [--threads 1] [--device cpu] [--set key=value ...]
        [--kit NAME=key=value,key=value ...]

The plain loop (`PlainSam`, `PlainUnet`, `plain_step`): segment_anything's `ImageEncoderViT`,
`PromptEncoder` and `MaskDecoder` built at the tile size with the member's hyperparameters (as
build_sam.py builds them) and called as their docstrings show: one prompt-free decoder call for
the batch, `multimask_output=False`, the low-res mask upsampled to the tile. In front, the
member's adapter and input gain, so both sides compute the same function. The U-Net's plain
counterpart is the same timm encoder and decoder (`kit.models.unet.TimmUnet`). fp32,
`torch.optim.Adam`, BCE + Dice (+ the IoU MSE for SAM, as the kit's loss), float tiles indexed
from a NumPy array in memory; no AMP, no compile, no clipping, no augmentation.

The kit: the member's config through the real trainer's `Stepper.step` (to the device,
normalise, augment, micro-batches, loss, backward, clipping, AdamW, schedule, EMA when on) on the
same tiles, as uint16 like the loader gives them, and the same batch size. `--kit` adds variants
(e.g. `--kit compile=model.compile=true`); `--without` adds the kit's step without each of issue
15's speed paths in turn ("no-sdpa": Meta's attention, SAM only; "no-fused": torch's default
AdamW; "no-channels-last": contiguous convolution weights); `--before` adds the step without
all three, as it was before issue 15.

Both sides start from the same weights (the plain modules load the kit model's state dict
strictly); the first forward's max |logit difference| is printed. Timing: one warm-up step per
side, then `repeats` rounds, each timing `steps` steps of every side back to back (the order
alternating between rounds); ratios plain / kit are taken within each round (> 1: the kit is
faster) and the median is reported, so machine load moves both sides alike. Wall time and the
process's CPU time are both timed: on a shared CPU with one torch thread the CPU time is what
other jobs disturb least.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without install
from kit.config import Config, apply_overrides, load_config

# member -> (preset, overrides): the presets' "auto" fields fixed (what the probe would choose
# on the demo data), vit_b at 256 px with a CPU-sized batch.
FIXED_WINDOW = ["data.z_start=27", "data.z_end=37", "data.reverse=false", "data.flatten=false"]
VIT_B_256 = [
    "data.z_start=24",
    "data.z_end=40",
    "data.reverse=false",
    "data.flatten=false",
    "data.tile=256",
]
MEMBERS: dict[str, tuple[str, list[str]]] = {
    "cpu-demo": ("cpu-demo", [*FIXED_WINDOW, "model.input_gain=40"]),
    "cpu-demo-unet": ("cpu-demo-unet", FIXED_WINDOW),
    "vit_b-256": ("sam-vit-b", [*VIT_B_256, "train.batch_size=2"]),
}
N_TILES = 64  # distinct tiles in the in-memory array; batches cycle through them


# -- the plain loop ------------------------------------------------------------------------------
class PlainSam(nn.Module):
    """The member's adapter, SAM's pixel normalisation, then segment_anything's three modules as
    build_sam.py builds them, at the tile size. x (B, C, T, T) in [0, 1] -> (logits, iou)."""

    def __init__(self, config: Config) -> None:
        from segment_anything.modeling import (
            ImageEncoderViT,
            MaskDecoder,
            PromptEncoder,
            TwoWayTransformer,
        )

        from kit.models.adapters import build_adapter
        from kit.models.sam import PIXEL_MEAN, PIXEL_STD
        from kit.models.sam_family import SAM_VARIANTS

        super().__init__()
        s, m, tile = SAM_VARIANTS[config.model.variant], config.model, config.data.tile
        self.adapter = build_adapter(m.adapter, config.data.in_channels)
        self.tile, self.input_gain = tile, float(m.input_gain)
        img = tile * self.adapter.scale
        tokens = img // s.patch_size
        self.image_encoder = ImageEncoderViT(
            img_size=img, patch_size=s.patch_size, embed_dim=s.embed_dim, depth=s.depth,
            num_heads=s.num_heads, mlp_ratio=4, out_chans=s.prompt_dim, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=s.global_attn_indexes, window_size=s.window_size,
        )  # fmt: skip
        self.prompt_encoder = PromptEncoder(
            embed_dim=s.prompt_dim, image_embedding_size=(tokens, tokens),
            input_image_size=(img, img), mask_in_chans=16,
        )  # fmt: skip
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=s.prompt_dim,
                                          mlp_dim=s.decoder_mlp_dim, num_heads=s.decoder_heads),
            transformer_dim=s.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=s.iou_hidden_dim,
        )  # fmt: skip
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.adapter(x)
        if self.input_gain > 0:
            image = 0.5 + self.input_gain * (image - image.mean(dim=(2, 3), keepdim=True))
        image = (image * 255.0 - self.pixel_mean) / self.pixel_std
        embeddings = self.image_encoder(image)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        low_res, iou = self.mask_decoder(
            image_embeddings=embeddings, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # fmt: skip
        size = (self.tile, self.tile)
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False), iou


class PlainUnet(nn.Module):
    """The same timm encoder and decoder (kit.models.unet.TimmUnet). x -> (logits, None)."""

    def __init__(self, config: Config) -> None:
        from kit.models.unet import TimmUnet

        super().__init__()
        m = config.model
        self.net = TimmUnet(
            m.variant, in_channels=config.data.in_channels, decoder_channels=m.decoder_channels
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x).logits, None

    def load_kit_state(self, state: dict) -> None:
        self.net.load_state_dict(state, strict=True)


def plain_model(config: Config) -> nn.Module:
    return PlainSam(config) if config.model.family == "sam" else PlainUnet(config)


def plain_loss(logits: torch.Tensor, iou: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the batch (+ MSE of the predicted IoU against the real one)."""
    loss = F.binary_cross_entropy_with_logits(logits, y)
    prob = torch.sigmoid(logits)
    loss = loss + 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)
    if iou is not None:
        with torch.no_grad():
            pred, truth = logits > 0, y > 0.5
            inter = (pred & truth).flatten(1).sum(1).float()
            union = (pred | truth).flatten(1).sum(1).float()
            actual = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        loss = loss + F.mse_loss(iou, actual[:, None])
    return loss


def plain_step(model, optimizer, images: np.ndarray, labels: np.ndarray, device) -> None:
    """One step of the loop a user writes: float tiles (B, C, T, T) from a NumPy array."""
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).to(device)
    logits, iou = model(x)
    loss = plain_loss(logits, iou, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# -- the two sides -------------------------------------------------------------------------------
class Tiles:
    """N_TILES random tiles in memory: uint16 (the loader's dtype, for the kit), the same
    normalised to float32 [0, 1] (for the plain loop), and blob labels."""

    def __init__(self, config: Config, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        c, t = config.data.in_channels, config.data.tile
        self.raw = rng.integers(20000, 40000, size=(N_TILES, c, t, t), dtype=np.uint16)
        self.stats = np.array([20000.0, 20000.0], dtype=np.float32)  # offset, scale
        self.images = np.clip((self.raw - self.stats[0]) / self.stats[1], 0, 1).astype(np.float32)
        yy, xx = np.mgrid[:t, :t]
        centre = rng.uniform(0, t, size=(N_TILES, 2))
        r2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
        self.labels = (r2 < (t / 4) ** 2).astype(np.float32)[:, None]

    def batch(self, step: int, size: int) -> np.ndarray:
        return (np.arange(size) + step * size) % N_TILES

    def kit_batch(self, index: np.ndarray) -> dict:
        n = len(index)
        return {"image": torch.from_numpy(self.raw[index]),
                "label": torch.from_numpy(self.labels[index].astype(np.uint8)),
                "stats": torch.from_numpy(np.tile(self.stats, (n, 1))),
                "tile": torch.from_numpy(np.stack([np.zeros(n, np.int64), index, index], 1))}  # fmt: skip


BEFORE = "before"  # the kit variant without issue 15's speed paths (--before)
# the speed paths a kit variant can go without (--without): name -> what replaces it
PATHS = ("no-sdpa", "no-fused", "no-channels-last")


class KitSide:
    """The kit's model and Stepper for `config`, `without` some of PATHS ("no-sdpa" is set in
    the config: model.attention=meta)."""

    def __init__(
        self,
        name: str,
        config: Config,
        tiles: Tiles,
        device: torch.device,
        without: tuple[str, ...] = (),
    ) -> None:
        from unittest import mock

        from kit.models import build_model, training_hooks
        from kit.train import step
        from kit.train.ddp import DistInfo

        self.name, self.config, self.tiles = name, config, tiles
        torch.manual_seed(0)
        self.model = build_model(config).to(device)
        hooks = training_hooks(config, self.model, fragments=["bench"], n_tiles=N_TILES,
                               device=device)  # fmt: skip
        undo = contextlib.ExitStack()
        if "no-channels-last" in without:
            undo.enter_context(mock.patch.object(step, "channels_last", lambda model: model))
        if "no-fused" in without:
            undo.enter_context(mock.patch.object(step, "adamw", _unfused_adamw))
        with undo:
            self.stepper = step.Stepper(config, self.model, hooks, info=DistInfo(), device=device)
        self.count = 0

    def step(self) -> None:
        index = self.tiles.batch(self.count, self.config.train.batch_size)
        self.stepper.step(self.tiles.kit_batch(index))
        self.count += 1


def _unfused_adamw(groups: list[dict], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class PlainSide:
    """The plain loop, from the kit model's initial weights."""

    def __init__(self, config: Config, tiles: Tiles, device: torch.device, start: dict) -> None:
        self.name, self.config, self.tiles, self.device = "plain", config, tiles, device
        self.model = plain_model(config)
        if isinstance(self.model, PlainUnet):
            self.model.load_kit_state(start)
        else:
            self.model.load_state_dict(start, strict=True)
        self.model.to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr)
        self.count = 0

    def step(self) -> None:
        index = self.tiles.batch(self.count, self.config.train.batch_size)
        plain_step(self.model, self.optimizer, self.tiles.images[index],
                   self.tiles.labels[index], self.device)  # fmt: skip
        self.count += 1


def logit_difference(kit: KitSide, plain: PlainSide) -> float:
    """max |kit logits − plain logits| of one eval-mode forward of the same tiles."""
    x = torch.from_numpy(kit.tiles.images[:2]).to(plain.device)
    kit.model.eval(), plain.model.eval()
    with torch.no_grad():
        diff = (kit.model(x).logits - plain.model(x)[0]).abs().max().item()
    kit.model.train(), plain.model.train()
    return diff


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    config: Config,
    *,
    device: torch.device,
    steps: int,
    repeats: int,
    kit_variants: dict[str, list[str]] | None = None,
) -> dict:
    """Time the plain loop and each kit variant on the same tiles (see the module docstring):
    per side median ms/step, images/s and (CUDA) peak memory; per kit side the median ratio."""
    tiles, cuda = Tiles(config), device.type == "cuda"
    allocated = partial(torch.cuda.memory_allocated, device) if cuda else lambda: 0
    sides, static = [], {}

    def build(make):  # a side, and the memory its weights take
        before = allocated()
        side = make()
        static[side.name] = allocated() - before
        return side

    for name, overrides in (kit_variants or {"kit": []}).items():
        without = PATHS if name == BEFORE else tuple(p for p in PATHS if p == name)
        if "no-sdpa" in without and config.model.family == "sam":
            overrides = [*overrides, "model.attention=meta"]
        kit_config = apply_overrides(config, overrides)
        sides.append(build(lambda: KitSide(name, kit_config, tiles, device, without)))  # noqa: B023
    start = sides[0].model.state_dict()
    plain = build(lambda: PlainSide(config, tiles, device, start))
    sides.insert(0, plain)
    result = {"logit_max_abs_diff": logit_difference(sides[1], plain), "peak_mib": {}}
    first: dict[str, float] = {}  # the warm-up step's seconds (torch.compile compiles in it)
    for side in sides:  # warm-up step; its memory: weights + what the step allocates at most
        before = allocated()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        begin = time.perf_counter()
        side.step()
        _sync(device)
        first[side.name] = time.perf_counter() - begin
        if cuda:
            peak = torch.cuda.max_memory_allocated(device) - before + static[side.name]
            result["peak_mib"][side.name] = peak / 2**20
    wall: dict[str, list[float]] = {s.name: [] for s in sides}
    cpu: dict[str, list[float]] = {s.name: [] for s in sides}
    for r in range(repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            _sync(device)
            begin, begin_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                side.step()
            _sync(device)
            wall[side.name].append((time.perf_counter() - begin) / steps)
            cpu[side.name].append((time.process_time() - begin_cpu) / steps)
    batch = config.train.batch_size
    kit = dict(sides[1].model.named_parameters())
    for side in sides[2:]:  # kit variants, after the same steps on the same batches as "kit"
        theirs = dict(side.model.named_parameters())
        result[f"{side.name}_param_max_abs_diff"] = max(
            (theirs[k] - v).abs().max().item() for k, v in kit.items()
        )
    for side in sides:
        s = statistics.median(wall[side.name])
        result[side.name] = {"ms_per_step": 1000 * s, "images_per_s": batch / s,
                             "cpu_ms_per_step": 1000 * statistics.median(cpu[side.name]),
                             "first_step_s": first[side.name],
                             "peak_mib": result["peak_mib"].get(side.name)}  # fmt: skip
        if side is not plain:
            ratios = [p / k for p, k in zip(wall["plain"], wall[side.name], strict=True)]
            cpu_ratios = [p / k for p, k in zip(cpu["plain"], cpu[side.name], strict=True)]
            result[side.name].update(ratio=statistics.median(ratios), ratios=ratios,
                                     cpu_ratio=statistics.median(cpu_ratios))  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS))
    p.add_argument("--steps", type=int, default=3, help="steps per side per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override for every member and side, e.g. train.batch_size=4",
    )
    p.add_argument(
        "--before",
        action="store_true",
        help=f"also time {BEFORE!r}: the kit's step without issue 15's speed paths",
    )
    p.add_argument(
        "--without",
        action="store_true",
        help=f"also time the kit's step without each speed path in turn: {', '.join(PATHS)}",
    )
    p.add_argument(
        "--kit",
        action="append",
        default=[],
        metavar="NAME=key=value,...",
        help="a kit variant to time as well, e.g. compile=model.compile=true",
    )
    args = p.parse_args()  # fmt: skip
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = {"kit": []}
    for item in args.kit:
        name, _, sets = item.partition("=")
        variants[name] = [s for s in sets.split(",") if s]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    for member in args.members:
        preset, sets = MEMBERS[member]
        config = load_config(preset, [*sets, *args.overrides])
        names = [*(PATHS if args.without else ()), *([BEFORE] if args.before else ())]
        sides = dict(variants)
        for name in names:
            if name != "no-sdpa" or config.model.family == "sam":
                sides[name] = []
        r = compare(config, device=device, steps=args.steps, repeats=args.repeats,
                    kit_variants=sides)  # fmt: skip
        line = [f"{member} (batch {config.train.batch_size}, tile {config.data.tile}, "
                f"{config.data.in_channels} slices): plain {r['plain']['ms_per_step']:.0f} ms "
                f"(CPU {r['plain']['cpu_ms_per_step']:.0f} ms)"]  # fmt: skip
        for name in sides:
            k = r[name]
            rounds = " ".join(f"{x:.2f}" for x in k["ratios"])
            line.append(f"{name} {k['ms_per_step']:.0f} ms (CPU {k['cpu_ms_per_step']:.0f} ms), "
                        f"plain/{name} {k['ratio']:.2f}x "
                        f"(rounds {rounds}; CPU time {k['cpu_ratio']:.2f}x; "
                        f"first step {k['first_step_s']:.1f} s)")  # fmt: skip
        diffs = "".join(f"; {k} {v:.1e}" for k, v in r.items() if k.endswith("param_max_abs_diff"))
        print("; ".join(line) + f"; logits max |diff| at start {r['logit_max_abs_diff']:.2e}"
              + diffs, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
