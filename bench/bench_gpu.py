"""GPU check of the kit's CUDA paths (AMP bf16, channels_last, the GPU presets): one section per call.

    python bench/bench_gpu.py SECTION --results OUT/gpu_results.json --work DIR [--smoke]

Sections (each adds `results[SECTION]` to the JSON file, so one failing leaves the others):
    env          torch/CUDA versions, device name, TF32 flags
    cli          demo-data, train sam-vit-b and unet-resnet34 (random init, --max-steps), evaluate,
                 predict (both runs as an ensemble), submit, validate: the real CLI, timed
    train_step   tiles/s and peak CUDA memory of one training step of each GPU preset at its
                 real tile and batch size (the real trainer's Stepper.prepare/optimise), model
                 only and with the DataLoader
    encoder      SAM vit_b image encoder, bf16: per-tile ms at 256 px vs upscaled to 1024, and
                 Meta's 14-token windows vs one 16-token window at 256 px
    plain_loop   vit_b at tile 256 and 512, batch 8 and 32: the kit's training step (sam-vit-b:
                 bf16, sdpa attention, fused AdamW, EMA) against the plain fp32 loop
                 (bench/plain_loop.py): images/s, peak memory, ratio; the kit compiled too
    attention    vit_b encoder (bench/bench_attention.py), bf16, training and inference:
                 model.attention meta vs sdpa, Meta's 14-token windows vs one 16-token window
    infer        predict_fragment tiles/s for sam-vit-b over a generated fragment, and
                 predict_fragment / pure-forward time (tta identity)
    consistency  same tiny checkpoints, predict_fragment on the device (fp32, also without
                 TF32, and bf16) vs on the CPU: max |difference| of the uint8 maps
    summary      one line per section (ok / FAILED / incomplete); marks sections with no result

`--smoke` shrinks every size so the whole check runs on a 2-core CPU in a few minutes (see
bench/gpu_check.sh, GPU_CHECK_SMOKE=1); without it the sizes are the presets' real ones.
Random weights throughout: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without install
sys.path.insert(0, str(ROOT / "bench"))  # bench_predict.write_fragment

GPU_PRESETS = ("sam-vit-b", "unet-resnet34")


# -- sizes ---------------------------------------------------------------------------------------
def sizes(smoke: bool) -> dict:
    """Every size the check uses; smoke mode differs from the GPU mode only here."""
    if smoke:
        return {
            "demo_scale": 1 / 16,
            "train_steps": 2,
            "train_workers": 0,
            # tile 64 = 4×4 tokens for vit_b: the same code path as 256. vit_b pads its windowed
            # blocks to 14×14 tokens whatever the tile, so a CPU can afford few forwards:
            # no TTA, stride = tile.
            "preset_sets": [
                "data.tile=64",
                "data.stride=64",
                "infer.stride=64",
                "infer.batch_size=8",
                "infer.tta=[identity]",
            ],
            "batch": {"sam-vit-b": 2, "unet-resnet34": 2},
            "step_warmup": 1,
            "step_steps": 1,
            "loader_steps": 1,
            "enc_tile": 64,
            "enc_batch": 2,
            "enc_up_batch": 1,
            "enc_repeats": 2,
            "frag": (384, 320, 30),
            "infer_repeats": 1,
            # vit_tiny16: patch 16 and 14-token windows like vit_b, a fraction of its weights
            "plain_variant": "vit_tiny16",
            "plain_sizes": [(32, 2)],
            "plain_steps": 1,
            "plain_repeats": 1,
            "plain_compile": False,
            "attn_variant": "vit_tiny16",
            "attn_tile": 64,
            "attn_batch": 1,
            "attn_windows": [14, 4],
            "attn_repeats": 1,
        }
    return {
        "demo_scale": 0.125,
        "train_steps": 60,
        "train_workers": loader_workers(6),
        "preset_sets": [],
        "batch": {},  # the presets' own (sam-vit-b 16, unet-resnet34 32)
        "step_warmup": 5,
        "step_steps": 25,
        "loader_steps": 20,
        "enc_tile": 256,
        "enc_batch": 16,
        "enc_up_batch": 4,
        "enc_repeats": 10,
        "frag": (4000, 3000, 30),
        "infer_repeats": 2,
        "plain_variant": "vit_b",
        "plain_sizes": [(256, 8), (256, 32), (512, 8), (512, 32)],
        "plain_steps": 5,
        "plain_repeats": 3,
        "plain_compile": True,  # the kit with model.compile too, at the first size
        "attn_variant": "vit_b",
        "attn_tile": 256,
        "attn_batch": 16,
        "attn_windows": [14, 16],
        "attn_repeats": 10,
    }


def loader_workers(wanted: int) -> int:
    """`wanted` DataLoader workers, or 0 where /dev/shm is too small for their batches in flight
    (a container's default 64 MB: workers die with a bus error). 6 workers × prefetch 4 × 67 MB
    (unet-resnet34: 32 tiles × 16 slices × 256² × 2 B) is 1.6 GB."""
    import shutil

    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return 0
    return wanted if free >= 2 * 2**30 else 0


# -- results file --------------------------------------------------------------------------------
def load_results(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_section(path: Path, name: str, value: dict) -> None:
    """results[name] = value, written atomically (sections run one after another)."""
    results = load_results(path)
    results[name] = value
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def device_name(args) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_mib(device) -> float | None:
    import torch

    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def reset_peak(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def demo_data(work: Path, scale: float) -> Path:
    """WORK/data (made by the cli section, else here): the demo dataset at `scale`."""
    data = work / "data"
    if not (data / "folds.csv").is_file():
        from kit.data.demo import make_demo_data

        make_demo_data(data, seed=0, scale=scale, progress=False)
    return data


# -- env -----------------------------------------------------------------------------------------
def section_env(args) -> dict:
    import numpy as np
    import torch

    r = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
         "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version(), "device": device_name(args),
         "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
         "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cpu_count": os.cpu_count(),
         "train_workers_used": sizes(args.smoke)["train_workers"]}  # fmt: skip
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        r.update(gpu=p.name, gpu_mib=p.total_memory // 2**20, capability=f"{p.major}.{p.minor}",
                 bf16_supported=torch.cuda.is_bf16_supported())  # fmt: skip
    try:
        import segment_anything

        r["segment_anything"] = str(Path(segment_anything.__file__).parent)
    except ImportError as exc:
        r["segment_anything"] = f"missing: {exc}"
    for k, v in r.items():
        print(f"{k}: {v}")
    return r


# -- cli -----------------------------------------------------------------------------------------
def section_cli(args) -> dict:
    """The real commands in subprocesses, each timed; stops at the first failure."""
    s = sizes(args.smoke)
    work, data = args.work, args.work / "data"
    runs = {p: work / "runs" / p for p in GPU_PRESETS}
    pred, csv = work / "pred", work / "submission.csv"
    n = s["train_steps"]

    def train(preset: str) -> list[str]:
        sets = ["train.epochs=1", f"train.steps_per_epoch={n}", "train.warmup_steps=10",
                f"train.num_workers={s['train_workers']}", *s["preset_sets"]]  # fmt: skip
        if preset in s["batch"]:
            sets.append(f"train.batch_size={s['batch'][preset]}")
        cmd = ["train", "--data", str(data), "--fold", "0", "--config", preset,
               "--max-steps", str(n), "--out", str(runs[preset])]  # fmt: skip
        return cmd + [x for v in sets for x in ("--set", v)]

    steps = [
        ("demo_data", ["demo-data", str(data), "--scale", str(s["demo_scale"])]),
        *((f"train_{p}", train(p)) for p in GPU_PRESETS),
        (
            "evaluate",
            ["evaluate", "--runs", *map(str, runs.values()), "--no-pictures", "--no-progress"],
        ),
        (
            "predict",
            [
                "predict",
                "--data",
                str(data / "test"),
                "--runs",
                *map(str, runs.values()),
                "--out",
                str(pred),
                "--no-progress",
            ],
        ),
        ("submit", ["submit", "--pred", str(pred), "--out", str(csv)]),
        ("validate", ["validate", str(csv), "--data", str(data / "test")]),
    ]
    out: dict = {"steps": {}}
    env = {**os.environ, "TQDM_MININTERVAL": "5"}  # a line every 5 s in the log, not per step
    for name, cmd in steps:
        left = args.deadline - time.monotonic()
        if left < 5:
            out["steps"][name] = {"ok": False, "skipped": "time budget spent"}
            break
        full = [sys.executable, "-m", "kit", *cmd]
        print(f"--- {name}: {' '.join(full[1:])}", flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(full, cwd=ROOT, env=env, timeout=left).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        seconds = round(time.perf_counter() - start, 2)
        out["steps"][name] = {"ok": rc == 0, "rc": rc, "seconds": seconds}
        print(f"--- {name}: rc {rc}, {seconds} s", flush=True)
        args.partial(out)
        if rc != 0:
            break
    for preset, run in runs.items():
        out[f"run_{preset}"] = run_summary(run)
    out["ok"] = all(v.get("ok") for v in out["steps"].values()) and len(out["steps"]) == len(steps)
    return out


def run_summary(run: Path) -> dict:
    """The last metrics.csv row (loss, F0.5, training tiles/s) and which files exist."""
    import csv

    r = {f: (run / f).is_file() for f in ("checkpoints/best.pt", "checkpoints/last.pt",
                                          "oof/regions.csv", "metrics.csv")}  # fmt: skip
    r["oof_maps"] = sorted(p.name for p in (run / "oof").glob("*.png"))
    if r["metrics.csv"]:
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            r["last_metrics"] = rows[-1]
    return r


# -- train_step ----------------------------------------------------------------------------------
def section_train_step(args) -> dict:
    import torch

    s = sizes(args.smoke)
    data = demo_data(args.work, s["demo_scale"])
    out = {}
    for preset in GPU_PRESETS:
        out[preset] = train_step(preset, data, args, s)
        args.partial(out)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def train_step(preset: str, data: Path, args, s: dict) -> dict:
    """Model-only steps (batch already normalised on the device) and full loader steps."""
    import numpy as np
    import torch

    from kit.config import load_config
    from kit.train import ddp
    from kit.train.dataset import TileDataset, tile_loader
    from kit.train.loop import _Trainer
    from kit.train.sampler import epoch_tiles

    device = torch.device(device_name(args))
    sets = [*s["preset_sets"], f"train.num_workers={s['train_workers']}"]
    if preset in s["batch"]:
        sets.append(f"train.batch_size={s['batch'][preset]}")
    config = load_config(preset, sets)
    trainer = _Trainer(
        config, data_dir=data, fold=0, folds_csv=data / "folds.csv",
        out=args.work / "step" / preset, max_steps=None, resume=False, log_images=False,
        info=ddp.DistInfo(), device=device, progress=False,
    )  # fmt: skip
    trainer._setup(None)
    t, d = config.train, config.data
    per_step = t.batch_size * t.accumulate
    amp = t.amp if device.type == "cuda" else "off (cpu)"
    r = {"batch": per_step, "tile": d.tile, "in_channels": d.in_channels, "amp": amp,
         "params_m": sum(p.numel() for p in trainer.stepper.model.parameters()) / 1e6}  # fmt: skip

    # (a) model only: fwd + bwd + clip + AdamW + EMA on a batch already on the device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(per_step, d.in_channels, d.tile, d.tile, generator=g).to(device)
    y = (torch.rand(per_step, 1, d.tile, d.tile, generator=g) > 0.7).float().to(device)
    for _ in range(s["step_warmup"]):
        trainer.stepper.optimise(x, y)
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(s["step_steps"]):
        parts = trainer.stepper.optimise(x, y)
    sync(device)
    seconds = time.perf_counter() - start
    r.update(model_step_ms=1000 * seconds / s["step_steps"],
             model_tiles_per_s=s["step_steps"] * per_step / seconds,
             peak_mib=peak_mib(device), loss=parts["total"], micro_batch=trainer.stepper.micro_batch)  # fmt: skip

    # (b) full step: DataLoader (train.num_workers) -> Stepper.prepare (normalise, augment) -> optimise
    n = s["loader_steps"] + s["step_warmup"]
    tiles = epoch_tiles(trainer.candidates, epoch=0, count=n * per_step, seed=t.seed,
                        ink_fraction=t.ink_fraction, jitter=t.jitter)  # fmt: skip
    dataset = TileDataset(trainer.data.train, trainer.data.train_labels, trainer.stats, tiles, d)
    loader = iter(tile_loader(dataset, batch_size=per_step, num_workers=t.num_workers,
                              device=device))  # fmt: skip
    times = np.zeros((s["loader_steps"], 3))
    for i in range(n):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        xb, yb, _ = trainer.stepper.prepare(batch)
        sync(device)
        t2 = time.perf_counter()
        trainer.stepper.optimise(xb, yb)
        sync(device)
        if i >= s["step_warmup"]:
            times[i - s["step_warmup"]] = (t1 - t0, t2 - t1, time.perf_counter() - t2)
    total = times.sum()
    r.update(loader_workers=t.num_workers, loader_step_ms=1000 * total / s["loader_steps"],
             loader_tiles_per_s=s["loader_steps"] * per_step / total,
             share_wait_data=times[:, 0].sum() / total, share_prepare=times[:, 1].sum() / total,
             share_optimise=times[:, 2].sum() / total)  # fmt: skip
    print(f"{preset}: batch {per_step} tile {d.tile} C {d.in_channels} amp {amp} on {device}: "
          f"model-only {r['model_tiles_per_s']:.0f} tiles/s ({r['model_step_ms']:.1f} ms/step), "
          f"peak {r['peak_mib']} MiB; with loader ({t.num_workers} workers) "
          f"{r['loader_tiles_per_s']:.0f} tiles/s, waiting for data {r['share_wait_data']:.0%}")  # fmt: skip
    return r


# -- encoder -------------------------------------------------------------------------------------
def section_encoder(args) -> dict:
    """SAM vit_b image encoder, bf16 autocast on CUDA (fp32 on the CPU), per-tile ms:
    the kit's model at tile T (T/16 tokens a side, adapter included) vs Meta's encoder on the tile
    upscaled 4× (the naive approach: 1024 px for T=256); and Meta's encoder at T with its
    14-token windows (a 16×16-token grid pads to 28×28 in the 8 windowed blocks) vs one window
    of T/16 tokens (no padding; Meta's windowed rel_pos would need resizing to use it)."""
    import contextlib
    from functools import partial

    import torch
    import torch.nn.functional as F
    from segment_anything.modeling import ImageEncoderViT

    from kit.config import load_config
    from kit.models import build_model

    s = sizes(args.smoke)
    device = torch.device(device_name(args))
    tile, up = s["enc_tile"], 4 * s["enc_tile"]
    config = load_config("sam-vit-b", [f"data.tile={tile}"])
    torch.manual_seed(0)
    native = build_model(config).eval().to(device)

    def meta(img_size: int, window: int) -> torch.nn.Module:
        """build_sam_vit_b's image encoder (segment_anything/build_sam.py) at `img_size`."""
        return ImageEncoderViT(
            depth=12, embed_dim=768, img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=[2, 5, 8, 11],
            window_size=window, out_chans=256,
        ).eval().to(device)  # fmt: skip

    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    b, ub, reps = s["enc_batch"], s["enc_up_batch"], s["enc_repeats"]
    x = torch.rand(b, config.data.in_channels, tile, tile, device=device)

    def ms_per_tile(fn, batch: int, repeats: int) -> tuple[float, float | None]:
        fn()  # warm-up: cuDNN/cuBLAS selection, allocator
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        return 1000 * (time.perf_counter() - start) / repeats / batch, peak_mib(device)

    r = {"tile": tile, "upscaled": up, "batch_native": b, "batch_upscaled": ub,
         "dtype": "bf16" if cuda else "fp32"}  # fmt: skip
    with torch.inference_mode(), amp:
        image = native.adapter(x).float()
        big = F.interpolate(image[:ub], size=(up, up), mode="bilinear")
        r["native_ms_per_tile"], r["native_peak_mib"] = ms_per_tile(
            lambda: native.encode(x), b, reps
        )
        enc = meta(up, 14)
        r["upscaled_ms_per_tile"], r["upscaled_peak_mib"] = ms_per_tile(
            lambda: enc(big), ub, max(1, reps // 2)
        )
        for window in (14, tile // 16):
            enc = meta(tile, window)
            r[f"meta_{tile}_window{window}_ms_per_tile"], _ = ms_per_tile(
                lambda enc=enc: enc(image), b, reps
            )
    r["ratio"] = r["upscaled_ms_per_tile"] / r["native_ms_per_tile"]
    w14, wt = (
        r[f"meta_{tile}_window14_ms_per_tile"],
        r[f"meta_{tile}_window{tile // 16}_ms_per_tile"],
    )
    r["window14_over_single_window"] = w14 / wt
    print(f"vit_b encoder on {device} ({r['dtype']}): {tile} px native {r['native_ms_per_tile']:.3f}"
          f" ms/tile (batch {b}), {up} px upscaled {r['upscaled_ms_per_tile']:.3f} ms/tile "
          f"(batch {ub}): ratio {r['ratio']:.1f}x; at {tile} px window 14 {w14:.3f} vs window "
          f"{tile // 16} {wt:.3f} ms/tile ({w14 / wt:.2f}x)")  # fmt: skip
    return r


# -- plain_loop ----------------------------------------------------------------------------------
def section_plain_loop(args) -> dict:
    """bench/plain_loop.compare for vit_b at each (tile, batch): the kit's training step as the
    sam-vit-b preset runs it against the plain fp32 loop on the same tiles, images/s and peak
    memory (each side's weights, optimizer state and step; the kit's includes its EMA copy)."""
    import gc

    import torch
    from plain_loop import compare

    from kit.config import load_config

    s = sizes(args.smoke)
    device = torch.device(device_name(args))
    out = {"variant": s["plain_variant"], "device": str(device)}
    for i, (tile, batch) in enumerate(s["plain_sizes"]):
        name = f"tile{tile}_batch{batch}"
        if args.deadline - time.monotonic() < 20:
            out[name] = {"skipped": "time budget spent"}
            continue
        config = load_config("sam-vit-b", [
            f"model.variant={s['plain_variant']}", "data.z_start=24", "data.z_end=40",
            "data.reverse=false", "data.flatten=false", f"data.tile={tile}", f"train.batch_size={batch}",
        ])  # fmt: skip
        variants = {"kit": []}
        if i == 0 and s["plain_compile"]:
            variants["kit_compiled"] = ["model.compile=true"]
        try:
            r = compare(config, device=device, steps=s["plain_steps"],
                        repeats=s["plain_repeats"], kit_variants=variants)  # fmt: skip
        except torch.cuda.OutOfMemoryError as exc:
            r = {"error": f"CUDA out of memory: {str(exc).splitlines()[0]}"}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out[name] = r
        args.partial(out)
        if "error" not in r:
            line = ", ".join(
                f"{k} {r[k]['images_per_s']:.1f} img/s"
                + (f", peak {r[k]['peak_mib']:.0f} MiB" if r[k]["peak_mib"] is not None else "")
                + (f" ({r[k]['ratio']:.2f}x plain)" if k != "plain" else "")
                for k in ("plain", *variants)
            )  # fmt: skip
            print(f"vit {s['plain_variant']} tile {tile} batch {batch} on {device}: {line}",
                  flush=True)  # fmt: skip
    out["ok"] = all("error" not in v for k, v in out.items() if k.startswith("tile"))
    return out


# -- attention -----------------------------------------------------------------------------------
def section_attention(args) -> dict:
    """bench/bench_attention.measure: the encoder's two attention kernels and two window sizes,
    training and inference, bf16 on CUDA."""
    import torch
    from bench_attention import measure

    s = sizes(args.smoke)
    r = measure(tile=s["attn_tile"], batch=s["attn_batch"], windows=s["attn_windows"],
                modes=["train", "infer"], repeats=s["attn_repeats"],
                device=torch.device(device_name(args)), variant=s["attn_variant"])  # fmt: skip
    for mode, rows in r.items():
        print(f"{s['attn_variant']} encoder at {s['attn_tile']} px, {mode}: " + ", ".join(
            f"{k} {v['ms_per_tile']:.3f} ms/tile ({v['ratio']:.2f}x)" for k, v in rows.items()
        ))  # fmt: skip
    return {"variant": s["attn_variant"], "tile": s["attn_tile"], "batch": s["attn_batch"], **r}


# -- infer ---------------------------------------------------------------------------------------
def section_infer(args) -> dict:
    """predict_fragment of sam-vit-b (infer batch 32, bf16, the preset's TTA) over a generated
    fragment, then with tta identity against the pure forward on the same batches."""
    import tempfile

    import torch
    from bench_predict import write_fragment

    from kit.config import apply_overrides, load_config
    from kit.data.fragment import Fragment
    from kit.infer.stitch import plan_tiles, predict_fragment
    from kit.models import build_model

    s = sizes(args.smoke)
    device = torch.device(device_name(args))
    cuda = device.type == "cuda"
    h, w, slices = s["frag"]
    # the preset reads 16 slices (24..39); the generated fragment has `slices`: the middle 16
    z0 = (slices - 16) // 2
    config = load_config("sam-vit-b", [*s["preset_sets"], f"data.z_start={z0}",
                                       f"data.z_end={z0 + 16}"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config).eval().to(device)
    if cuda:  # as kit.infer.ensemble.load_members does
        from kit.infer.stitch import to_channels_last

        to_channels_last(model)
    r = {"fragment": [h, w, slices], "tile": config.data.tile,
         "stride": config.infer.stride or config.data.stride,
         "batch": config.infer.batch_size, "amp": config.infer.amp if cuda else "off (cpu)",
         "tta": list(config.infer.tta)}  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        start = time.perf_counter()
        fragment = Fragment(write_fragment(Path(tmp), h, w, slices))
        r["write_s"] = time.perf_counter() - start
        n = plan_tiles(config, fragment).n_tiles
        r["tiles"] = n
        tile = config.data.tile
        predict_fragment(model, config, fragment, rows=(0, 2 * tile), device=device,
                         progress=False)  # warm-up  # fmt: skip
        sync(device)
        reset_peak(device)
        start = time.perf_counter()
        predict_fragment(model, config, fragment, device=device, progress=False)
        sync(device)
        seconds = time.perf_counter() - start
        r.update(predict_s=seconds, tiles_per_s=n / seconds,
                 forwards_per_s=n * len(config.infer.tta) / seconds, peak_mib=peak_mib(device))  # fmt: skip
        args.partial(r)
        print(f"predict_fragment {h}x{w}x{slices} ({n} tiles, TTA {len(config.infer.tta)}) on "
              f"{device}: {seconds:.2f} s, {r['tiles_per_s']:.0f} tiles/s", flush=True)  # fmt: skip

        # ratio, tta identity: the same tiles and batch sizes through the model alone
        plain = apply_overrides(config, ["infer.tta=[identity]"])
        b = plain.infer.batch_size
        batches = [b] * (n // b) + ([n % b] if n % b else [])
        x = torch.rand(b, plain.data.in_channels, tile, tile, device=device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
        forward_s, predict_s = [], []
        for _ in range(s["infer_repeats"]):
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode(), amp:
                for size in batches:
                    torch.sigmoid(model(x[:size]).logits)
            sync(device)
            forward_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            predict_fragment(model, plain, fragment, device=device, progress=False)
            sync(device)
            predict_s.append(time.perf_counter() - start)
    f, p = min(forward_s), min(predict_s)
    r.update(identity_forward_s=f, identity_predict_s=p, predict_over_forward=p / f,
             identity_tiles_per_s=n / p, forward_tiles_per_s=n / f)  # fmt: skip
    print(f"tta identity: pure forward {f:.2f} s ({n / f:.0f} tiles/s), predict_fragment "
          f"{p:.2f} s ({n / p:.0f} tiles/s): ratio {p / f:.2f}")  # fmt: skip
    return r


# -- consistency ---------------------------------------------------------------------------------
def section_consistency(args) -> dict:
    """Tiny random-init checkpoints (cpu-demo SAM with its Conv3d stem, cpu-demo-unet) through a
    checkpoint file and what `kit predict` runs (load_members, predict_ensemble) on a demo test
    fragment: device fp32 vs CPU, also with TF32 convolutions and matmuls off (torch's default
    lets cuDNN use TF32 for fp32 convolutions) and in bf16.
    The last layer is scaled so the logits spread (std ~3) over the fragment: a random-init
    model's map is nearly constant, which would make any comparison pass."""
    import numpy as np
    import torch

    from kit.checkpoint import save_checkpoint
    from kit.config import config_to_dict, load_config
    from kit.data.fragment import Fragment
    from kit.infer.ensemble import load_members, predict_ensemble, resolve_members
    from kit.models import build_model

    s = sizes(args.smoke)
    data = demo_data(args.work, s["demo_scale"])
    fragment = Fragment(data / "test" / "a")
    device = torch.device(device_name(args))
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    out = {"fragment": [*fragment.shape], "device": str(device), "cudnn_allow_tf32": cudnn_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}  # fmt: skip
    variants = (("device_fp32", "off", True), ("device_fp32_no_tf32", "off", False),
                ("device_bf16", "bf16", True))  # fmt: skip
    for preset in ("cpu-demo", "cpu-demo-unet"):
        torch.manual_seed(0)
        config = load_config(preset)
        model = build_model(config).eval()
        scale = spread_logits(model, config, fragment)
        path = args.work / "consistency" / f"{preset}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, {"config": config_to_dict(config), "model": model.state_dict()})
        maps = {}
        for name, dev, amp, tf32 in (("cpu", "cpu", "off", True),
                                     *((n, device, a, t) for n, a, t in variants)):  # fmt: skip
            # what `kit predict` runs: load_members (channels_last on CUDA), predict_ensemble
            members = load_members(resolve_members([str(path)]), device=str(dev),
                                   overrides=[f"infer.amp='{amp}'"])  # fmt: skip
            torch.backends.cudnn.allow_tf32 = cudnn_tf32 and tf32
            old_matmul = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = old_matmul and tf32
            try:
                pred = predict_ensemble(members, fragment, device=str(dev), progress=False)
            finally:
                torch.backends.cudnn.allow_tf32 = cudnn_tf32
                torch.backends.cuda.matmul.allow_tf32 = old_matmul
            maps[name] = pred.astype(np.int16)
        mask = fragment.mask()
        r = {"head_scale": scale, "cpu_map_mean": float(maps["cpu"][mask].mean()),
             "cpu_map_std": float(maps["cpu"][mask].std())}  # fmt: skip
        for name, _, _ in variants:
            diff = np.abs(maps[name] - maps["cpu"])
            r[f"{name}_max_abs_diff"] = int(diff.max())
            r[f"{name}_mean_abs_diff"] = float(diff[mask].mean())
            r[f"{name}_share_diff_gt1"] = float((diff[mask] > 1).mean())
        print(f"{preset}: cpu map mean {r['cpu_map_mean']:.1f} std {r['cpu_map_std']:.1f}; "
              f"{device} vs cpu max |diff|: fp32 {r['device_fp32_max_abs_diff']} (mean "
              f"{r['device_fp32_mean_abs_diff']:.3f}), fp32 without TF32 "
              f"{r['device_fp32_no_tf32_max_abs_diff']}, bf16 {r['device_bf16_max_abs_diff']} "
              f"(mean {r['device_bf16_mean_abs_diff']:.3f})")  # fmt: skip
        out[preset] = r
        args.partial(out)
    out["ok"] = all(out[p]["device_fp32_max_abs_diff"] <= 2 for p in ("cpu-demo", "cpu-demo-unet"))
    return out


def spread_logits(model, config, fragment) -> float:
    """Scale the layer that makes the logits so that they vary (std ~3) over two tiles of
    `fragment` (the U-Net's also centred on 0); returns the factor. Logits are linear in that layer's weights (and bias, for
    SAM's hypernetwork MLPs, whose output is dotted with the upscaled embedding)."""
    import numpy as np
    import torch

    from kit.data.preprocess import fragment_stats, normalize, read_window

    t, (h, w) = config.data.tile, fragment.shape
    tiles = np.stack([read_window(fragment, config.data, y, x, t, t)
                      for y, x in ((h // 2 - t // 2, w // 2 - t // 2), (h // 4, w // 4))])  # fmt: skip
    stats = fragment_stats(fragment, config.data).as_tensor().expand(len(tiles), 2)
    with torch.no_grad():
        x = normalize(torch.from_numpy(tiles), stats, config.data)
        k = float(min(max(3.0 / (model(x).logits.std().item() + 1e-12), 1.0), 1e5))
        if config.model.family == "unet":
            model.head.weight.mul_(k)
            model.head.bias.sub_(model(x).logits.mean())  # centred: few saturated pixels
        else:
            for mlp in model.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(k)
                mlp.layers[-1].bias.mul_(k)
    return k


# -- summary -------------------------------------------------------------------------------------
def section_summary(args) -> dict:
    """One line per section; a section with no entry (killed by its timeout) is marked so."""
    results = load_results(args.results)
    chosen = os.environ.get("GPU_CHECK_SECTIONS", "").split() or list(SECTIONS)  # gpu_check.sh
    for name in chosen:
        if name != "summary" and name not in results:
            results[name] = {
                "ok": False,
                "error": "no result: skipped (budget spent), killed by its timeout, or crashed",
            }
            save_section(args.results, name, results[name])
    failed = []
    for name, value in results.items():
        if name == "summary":
            continue
        bad = "error" in value or value.get("ok") is False or value.get("partial", False)
        why = f": {value['error'].strip().splitlines()[-1]}" if "error" in value else ""
        why = why or (": incomplete (killed by its timeout)" if value.get("partial") else "")
        print(f"{name:12s} {'FAILED' if bad else 'ok':6s} {value.get('seconds', '?')} s{why}")
        failed += [name] if bad else []
    return {"failed": failed}


SECTIONS = {"env": section_env, "cli": section_cli, "train_step": section_train_step,
            "encoder": section_encoder, "infer": section_infer,
            "consistency": section_consistency, "plain_loop": section_plain_loop,
            "attention": section_attention, "summary": section_summary}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("section", choices=list(SECTIONS))
    p.add_argument("--results", type=Path, required=True, help="JSON file to add the section to")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_check_work"), help="scratch dir")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check of the script)")
    p.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    p.add_argument("--budget", type=float, default=1e9, help="seconds this section may take")
    args = p.parse_args()
    args.deadline = time.monotonic() + args.budget
    # what a section has so far, kept if its timeout kills it (summary marks it incomplete)
    args.partial = lambda value: save_section(
        args.results, args.section, {**value, "partial": True}
    )
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = SECTIONS[args.section](args)
        rc = 0 if result.get("ok", True) else 1
    except Exception:  # recorded in the JSON so that the other sections still report
        traceback.print_exc()
        result, rc = {"ok": False, "error": traceback.format_exc()[-3000:]}, 1
    result["seconds"] = round(time.perf_counter() - start, 2)
    save_section(args.results, args.section, result)
    return rc


if __name__ == "__main__":
    sys.exit(main())
