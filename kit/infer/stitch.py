"""Streamed sliding-window inference over one fragment: the function validation and test share.

    predict_fragment(model, config, fragment, rows=(r0, r1)) -> uint8 (H, W) probability × 255
    predict_fragment(..., own=(a, b))  -> only output rows a..b, bit for bit what the whole run
                                          gives there (one part of a prediction shared out)
    to_channels_last(model) -> model: the layout the CUDA path feeds (rank-4 conv weights only)

The fragment is read in horizontal bands one tile high, one band per row of tiles (each read
reuses the rows it shares with the previous band, so every pixel row is read once), while a
background thread already reads the next band. Tiles without papyrus are skipped; the rest go
to the model in full batches, possibly spanning two bands. Rows no pending or future tile can
reach are finished into the uint8 output, so the float accumulators hold only a band or two.

One path for every device: the band, the tile cutting, normalisation, the model and the weighted
accumulation all live on `device`; only the finished uint8 rows come back to the host, once.
On CUDA that keeps the host out of the loop (with stride T/4 each pixel is in 16 tiles: cutting
them on the host copied and sent 16× the volume); on CPU the same code runs on host tensors.
Device memory beyond the model: one uint16 band, C × T × (c1 - c0) × 2 bytes (30 slices, T=256,
fragment 2's 9506 columns: 146 MB; a transient copy of its shared rows when it advances) and
two float32 row accumulators of at most ~2T rows. Never the whole fragment.
Host memory: the uint8 output, the mask, and the band being read.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from kit.config import Config
from kit.data.fragment import Fragment
from kit.data.preprocess import fragment_stats, normalize, read_window
from kit.infer.tta import check_tta, tta_probabilities
from kit.precision import autocast_dtype
from kit.progress import progress_bar
from kit.tiles import add_tile, finish_uint8, mask_fractions, tile_positions, window_weights


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


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Put every Conv2d/ConvTranspose2d weight in channels_last, in place; returns `model`.

    What cuDNN wants with the channels_last input the CUDA path feeds. `model.to(memory_format=
    torch.channels_last)` is not usable: it raises on any rank-5 tensor (the stem3d adapter's
    Conv3d weights) and also permutes rank-4 tensors that are not images (SAM's pos_embed).
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.to(memory_format=torch.channels_last)
    return model


def predict_fragment(
    model: torch.nn.Module,
    config: Config,
    fragment: Fragment,
    *,
    rows: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    label: str | None = None,
    own: tuple[int, int] | None = None,
) -> np.ndarray:
    """Stitched probability map, uint8 (H, W) = round(p × 255); 0 outside `rows` and the mask.

    `model(x)` takes float32 (B, C, T, T) from `normalize` and returns an object with `.logits`
    (B, 1, T, T) (or the logits tensor itself); it must already be on `device`. TTA
    (config.infer.tta), window (config.infer.window), stride (config.infer.stride, 0 =
    config.data.stride), batch size and AMP (config.infer.*, CUDA only) come from `config`.
    The model's train/eval mode is restored. Device memory: see the module docstring.
    `label` names the progress bar (default "fragment <id>").

    `own` (rows a..b): only those output rows are made (0 elsewhere), from the same tiles in the
    same batches as the whole map: batches that reach none of those rows are skipped, the rest
    run exactly as they would, so the rows equal the whole run's bit for bit (a part of a
    prediction shared between processes or machines; every band is still read).
    """
    plan = plan_tiles(config, fragment, rows)
    wanted = _wanted(own, plan.tile)
    out = np.zeros(fragment.shape, dtype=np.uint8)
    if plan.n_tiles == 0:
        return out
    device = torch.device(device)
    stats = fragment_stats(fragment, config.data).as_tensor().to(device)
    forward = _batch_predictor(model, config, stats, device)
    window = torch.from_numpy(window_weights(plan.tile, config.infer.window)).to(device)
    acc = _RowAccumulator(plan.c0, plan.c1 - plan.c0, window)
    writer = _RowWriter(out, fragment.mask(), _owned(plan, own))
    queue: deque[tuple[int, int, torch.Tensor]] = deque()
    batch_size = max(1, config.infer.batch_size)
    was_training = model.training
    model.eval()
    bar = progress_bar(
        total=plan.n_tiles, desc=label or f"fragment {fragment.id}", unit="tile", enabled=progress
    )
    try:
        with torch.inference_mode():
            for k, band in enumerate(_bands(fragment, config, plan, device)):
                y, t = plan.band_ys[k], plan.tile
                queue.extend(
                    (y, int(x), band[:, :, x - plan.c0 : x - plan.c0 + t]) for x in plan.band_xs[k]
                )
                while len(queue) >= batch_size:
                    batch = [queue.popleft() for _ in range(batch_size)]
                    _run_batch(forward, acc, batch, bar, wanted)
                # the band is overwritten in place by the next one: detach the few pending tiles
                queue = deque((ty, tx, tile.clone()) for ty, tx, tile in queue)
                following = plan.band_ys[k + 1] if k + 1 < len(plan.band_ys) else fragment.shape[0]
                frontier = min(following, queue[0][0]) if queue else following
                writer.put(*acc.flush(frontier))
            if queue:
                _run_batch(forward, acc, list(queue), bar, wanted)
            writer.put(*acc.flush(fragment.shape[0] + plan.tile))
            writer.close()
    finally:
        bar.close()
        model.train(was_training)
    return out


def _batch_predictor(model, config: Config, stats: torch.Tensor, device: torch.device):
    """int16 (B, C, T, T) tiles (uint16 bits) -> probabilities float32 (B, T, T), TTA included.

    Both on `device`, with `stats` (2,) there already: nothing here waits for the device.
    """
    names = check_tta(config.infer.tta)
    cuda = device.type == "cuda"
    amp = autocast_dtype(config.infer.amp, device)

    def logits(x: torch.Tensor) -> torch.Tensor:
        out = model(x.contiguous(memory_format=torch.channels_last) if cuda else x)
        return getattr(out, "logits", out)

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        x = normalize(tiles.view(torch.uint16), stats.expand(len(tiles), 2), config.data)
        autocast = (
            torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        )
        with autocast:
            prob = tta_probabilities(logits, x, names)
        return prob[:, 0].float()

    return predict


def _wanted(own: tuple[int, int] | None, tile: int):
    """Whether a batch of (y, x, tile) items reaches output rows `own` (always, without)."""
    if own is None:
        return lambda items: True
    a, b = own
    return lambda items: any(y < b and y + tile > a for y, _, _ in items)


def _owned(plan: TilePlan, own: tuple[int, int] | None) -> TilePlan:
    """The plan whose output rows are plan.rows cut to `own` (what the writer may write)."""
    if own is None:
        return plan
    from dataclasses import replace

    r0, r1 = plan.rows
    a, b = max(r0, own[0]), min(r1, own[1])
    return replace(plan, rows=(a, max(a, b)))


def _run_batch(forward, acc: _RowAccumulator, items: list, bar, wanted) -> None:
    if not wanted(items):  # reaches none of the rows this part makes
        bar.update(len(items))
        return
    probs = forward(torch.stack([tile for _, _, tile in items]))
    for (y, x, _), prob in zip(items, probs, strict=True):
        acc.add(prob, y, x)
    bar.update(len(items))


def _bands(fragment: Fragment, config: Config, plan: TilePlan, device: torch.device):
    """Yield int16 (C, T, c1 - c0) on `device` (uint16 bits) for each tile row in turn.

    Rows shared with the previous band are kept, not re-read nor re-sent: with stride T/2 that
    halves IO; each pixel row is read, and on CUDA sent to the device, once. The next band's new
    rows are read (and on CUDA pinned) by a background thread, then copied without blocking.
    The yielded tensor is overwritten by the next band (the caller copies what it keeps).
    """
    tile, width = plan.tile, plan.c1 - plan.c0
    cuda = device.type == "cuda"

    def read(y0: int, y1: int) -> torch.Tensor:
        # int16: the same bits, and a dtype every device op (copy, stack, clone) supports
        rows = torch.from_numpy(read_window(fragment, config.data, y0, plan.c0, y1 - y0, width))
        rows = rows.view(torch.int16)
        return rows.pin_memory() if cuda else rows

    # band k needs rows y_k..y_k+T; of those, rows already in band k-1 are kept, not read
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
                keep = tile - fresh.shape[1]
                band[:, :keep] = band[:, y - prev_y :].clone()  # the two ranges overlap
                band[:, keep:].copy_(fresh, non_blocking=cuda)
            else:
                band = fresh.to(device, non_blocking=cuda)
            del fresh
            yield band
            prev_y = y


class _RowAccumulator:
    """Weighted sums and weights for fragment rows top..top+len, columns c0..c0+width.

    float32 tensors on the window's device; tiles are added with kit.tiles.add_tile (which
    takes NumPy arrays and tensors alike).
    """

    def __init__(self, c0: int, width: int, window: torch.Tensor):
        self.c0, self.width, self.window = c0, width, window
        self.top = 0
        self.sums = window.new_zeros((0, width))
        self.weights = window.new_zeros((0, width))

    def add(self, prob: torch.Tensor, y: int, x: int) -> None:
        if len(self.sums) == 0:
            self.top = y
        need = y + len(prob) - self.top
        if need > len(self.sums):  # grow by at least a tile so growth is rare
            extra = max(need - len(self.sums), len(prob))
            pad = self.window.new_zeros((extra, self.width))
            self.sums = torch.cat([self.sums, pad])
            self.weights = torch.cat([self.weights, pad])
        arrays = (self.sums, self.weights, prob, self.window)
        if prob.device.type == "cpu":  # NumPy's small slice ops cost a third of torch's there
            arrays = tuple(a.numpy() for a in arrays)
        add_tile(*arrays, y - self.top, x - self.c0)

    def flush(self, upto: int) -> tuple[int, torch.Tensor]:
        """Finished rows top..min(upto, end) as (first row, uint8 (n, width)), then drop them."""
        n = max(0, min(upto - self.top, len(self.sums)))
        done = finish_uint8(self.sums[:n], self.weights[:n])
        first = self.top
        self.sums, self.weights = self.sums[n:], self.weights[n:]
        self.top += n
        return first, done


class _RowWriter:
    """Finished uint8 rows into `out`, inside plan.rows and the mask only.

    From CUDA the rows come back through pinned memory without blocking and are written once
    their copy is done: at a later put() (at most two bands behind) or at close().
    """

    def __init__(self, out: np.ndarray, mask: np.ndarray, plan: TilePlan):
        self.out, self.mask, self.plan = out, mask, plan
        self.pending: deque[tuple[int, torch.Tensor, torch.cuda.Event]] = deque()

    def put(self, first: int, rows: torch.Tensor) -> None:
        if rows.device.type != "cuda":
            self._write(first, rows.numpy())
            return
        host = torch.empty(rows.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((first, host, done))
        while self.pending and (len(self.pending) > 2 or self.pending[0][2].query()):
            self._write_oldest()

    def close(self) -> None:
        while self.pending:
            self._write_oldest()

    def _write_oldest(self) -> None:
        first, host, done = self.pending.popleft()
        done.synchronize()
        self._write(first, host.numpy())

    def _write(self, first: int, values: np.ndarray) -> None:
        plan, out = self.plan, self.out
        height, width = out.shape
        a, b = max(first, plan.rows[0]), min(first + len(values), plan.rows[1], height)
        if a >= b:
            return
        c1 = min(plan.c1, width)
        out[a:b, plan.c0 : c1] = (
            values[a - first : b - first, : c1 - plan.c0] * self.mask[a:b, plan.c0 : c1]
        )
