"""Streamed sliding-window inference over one fragment: the function validation and test share.

    predict_fragment(model, config, fragment, rows=(r0, r1)) -> uint8 (H, W) probability × 255

The fragment is read in horizontal bands one tile high, one band per row of tiles (each read
reuses the rows it shares with the previous band, so every pixel row is read once), while a
background thread already reads the next band. Tiles without papyrus are skipped; the rest go
to the model in full batches, possibly spanning two bands. Rows no pending or future tile can
reach are normalised and written into the uint8 output, so the float accumulators hold only a
band or two: peak memory is one band of input plus the uint8 output, whatever the slice count
or fragment height.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from kit.config import Config
from kit.data.fragment import Fragment
from kit.data.preprocess import fragment_stats, normalize, read_window
from kit.infer.tta import check_tta, tta_probabilities
from kit.tiles import add_tile, finish, mask_fractions, tile_positions, to_uint8, window_weights

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TilePlan:
    """Tiles to predict, grouped by tile row; columns c0..c1 bound every kept tile."""

    tile: int
    rows: tuple[int, int]  # output rows r0..r1
    band_ys: list[int]  # y of each tile row that keeps at least one tile, ascending
    band_xs: list[np.ndarray]  # x of the kept tiles in that row
    c0: int
    c1: int

    @property
    def n_tiles(self) -> int:
        return int(sum(len(xs) for xs in self.band_xs))


def plan_tiles(config: Config, fragment: Fragment, rows: tuple[int, int] | None = None) -> TilePlan:
    """Tile positions over `rows` of the fragment, keeping tiles that touch the mask."""
    height = fragment.shape[0]
    r0, r1 = rows if rows is not None else (0, height)
    if not 0 <= r0 < r1 <= height:
        raise ValueError(f"rows {r0}..{r1} are not inside fragment {fragment.id} (H={height})")
    tile = config.data.tile
    stride = config.infer.stride or config.data.stride
    positions = tile_positions(fragment.shape, tile, stride, rows=(r0, r1))
    positions = positions[mask_fractions(fragment.mask(), positions, tile) > 0]
    ys, xs = [], []
    for y in np.unique(positions[:, 0]):
        ys.append(int(y))
        xs.append(positions[positions[:, 0] == y, 1])
    c0 = int(positions[:, 1].min()) if len(positions) else 0
    c1 = int(positions[:, 1].max()) + tile if len(positions) else 0
    return TilePlan(tile, (r0, r1), ys, xs, c0, c1)


def predict_fragment(
    model: torch.nn.Module,
    config: Config,
    fragment: Fragment,
    *,
    rows: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Stitched probability map, uint8 (H, W) = round(p × 255); 0 outside `rows` and the mask.

    `model(x)` takes float32 (B, C, T, T) from `normalize` and returns an object with `.logits`
    (B, 1, T, T) (or the logits tensor itself). TTA (config.infer.tta), window
    (config.infer.window), stride (config.infer.stride, 0 = config.data.stride), batch size and
    AMP (config.infer.*, CUDA only) come from `config`. The model's train/eval mode is restored.
    """
    plan = plan_tiles(config, fragment, rows)
    out = np.zeros(fragment.shape, dtype=np.uint8)
    if plan.n_tiles == 0:
        return out
    device = torch.device(device)
    stats = fragment_stats(fragment, config.data).as_tensor()
    forward = _batch_predictor(model, config, stats, device)
    window = window_weights(plan.tile, config.infer.window)
    acc = _RowAccumulator(plan.c0, plan.c1 - plan.c0, window)
    mask = fragment.mask()
    queue: deque[tuple[int, int, np.ndarray]] = deque()
    batch_size = max(1, config.infer.batch_size)
    was_training = model.training
    model.eval()
    bar = tqdm(
        total=plan.n_tiles, desc=f"fragment {fragment.id}", unit="tile", disable=not progress
    )
    try:
        for k, band in enumerate(_bands(fragment, config, plan)):
            y = plan.band_ys[k]
            queue.extend(
                (y, int(x), band[:, :, x - plan.c0 : x - plan.c0 + plan.tile])
                for x in plan.band_xs[k]
            )
            while len(queue) >= batch_size:
                _run_batch(forward, acc, [queue.popleft() for _ in range(batch_size)], bar)
            # the band buffer is reused in place for the next band: detach the few pending tiles
            queue = deque((ty, tx, tile.copy()) for ty, tx, tile in queue)
            following = plan.band_ys[k + 1] if k + 1 < len(plan.band_ys) else fragment.shape[0]
            frontier = min(following, queue[0][0]) if queue else following
            _write_rows(out, mask, plan, acc.flush(frontier))
        if queue:
            _run_batch(forward, acc, list(queue), bar)
        _write_rows(out, mask, plan, acc.flush(fragment.shape[0] + plan.tile))
    finally:
        bar.close()
        model.train(was_training)
    return out


def _batch_predictor(model, config: Config, stats: torch.Tensor, device: torch.device):
    """uint16 (B, C, T, T) numpy -> probabilities float32 (B, T, T) numpy, TTA included."""
    names = check_tta(config.infer.tta)
    cuda = device.type == "cuda"
    amp = _AMP.get(config.infer.amp) if cuda else None

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = model(x.contiguous(memory_format=torch.channels_last) if cuda else x)
        return getattr(out, "logits", out)

    def predict(tiles: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(tiles).to(device, non_blocking=cuda)
        x = normalize(batch, stats.expand(len(tiles), 2), config.data)
        autocast = (
            torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            prob = tta_probabilities(logits, x, names)
        return prob[:, 0].float().cpu().numpy()

    return predict


def _run_batch(forward, acc: _RowAccumulator, items: list, bar: tqdm) -> None:
    probs = forward(np.stack([tile for _, _, tile in items]))
    for (y, x, _), prob in zip(items, probs, strict=True):
        acc.add(prob, y, x)
    bar.update(len(items))


def _bands(fragment: Fragment, config: Config, plan: TilePlan):
    """Yield uint16 (C, T, c1 - c0) for each tile row, reading the next one in the background.

    Rows shared with the previous band are reused, not re-read: with stride T/2 that halves IO.
    The yielded array is overwritten by the next band (the caller copies what it keeps).
    """
    tile, width = plan.tile, plan.c1 - plan.c0

    def read(y0: int, y1: int) -> np.ndarray:
        return read_window(fragment, config.data, y0, plan.c0, y1 - y0, width)

    # band k needs rows y_k..y_k+T; of those, rows already in band k-1 are copied, not read
    spans, prev_end = [], None
    for y in plan.band_ys:
        start = y if prev_end is None or prev_end <= y else prev_end
        spans.append((start, y + tile))
        prev_end = y + tile
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="band-reader") as pool:
        pending: Future = pool.submit(read, *spans[0])
        band, prev_y = None, None
        for k, y in enumerate(plan.band_ys):
            fresh = pending.result()
            if k + 1 < len(spans):
                pending = pool.submit(read, *spans[k + 1])
            if band is not None and spans[k][0] > y:
                # shift the shared rows up in place and append the new ones: one band buffer
                keep = tile - len(fresh[0])
                band[:, :keep] = band[:, y - prev_y :]
                band[:, keep:] = fresh
            else:
                band = fresh
            del fresh
            yield band
            prev_y = y


class _RowAccumulator:
    """Weighted sums and weights for fragment rows top..top+len, columns c0..c0+width."""

    def __init__(self, c0: int, width: int, window: np.ndarray):
        self.c0, self.width, self.window = c0, width, window
        self.top = 0
        self.sums = np.zeros((0, width), np.float32)
        self.weights = np.zeros((0, width), np.float32)

    def add(self, prob: np.ndarray, y: int, x: int) -> None:
        if len(self.sums) == 0:
            self.top = y
        need = y + len(prob) - self.top
        if need > len(self.sums):  # grow by at least a tile so growth is rare
            extra = max(need - len(self.sums), len(prob))
            pad = np.zeros((extra, self.width), np.float32)
            self.sums = np.concatenate([self.sums, pad])
            self.weights = np.concatenate([self.weights, pad])
        add_tile(self.sums, self.weights, prob, self.window, y - self.top, x - self.c0)

    def flush(self, upto: int) -> tuple[int, np.ndarray]:
        """Finished rows top..min(upto, end) as (first row, float32 (n, width)), then drop them."""
        n = max(0, min(upto - self.top, len(self.sums)))
        done = finish(self.sums[:n], self.weights[:n])
        first = self.top
        self.sums, self.weights = self.sums[n:], self.weights[n:]
        self.top += n
        return first, done


def _write_rows(out: np.ndarray, mask: np.ndarray, plan: TilePlan, rows) -> None:
    """Write finished probability rows into `out`, keeping only plan.rows and the mask."""
    first, prob = rows
    height, width = out.shape
    a, b = max(first, plan.rows[0]), min(first + len(prob), plan.rows[1], height)
    if a >= b:
        return
    c1 = min(plan.c1, width)
    values = to_uint8(prob[a - first : b - first, : c1 - plan.c0])
    out[a:b, plan.c0 : c1] = values * mask[a:b, plan.c0 : c1]
