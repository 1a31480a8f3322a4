"""Training with `train.embedding_cache`: same first loss as without it, each tile encoded once."""

from pathlib import Path

import pytest

from kit.config import load_config
from kit.errors import KitError
from kit.models.embedding_cache import EmbeddingCache
from kit.models.sam import SamSegmenter
from kit.models.sam_family import cache_ignores
from kit.models.sam_training import SamTrainingHooks
from kit.train import loop
from kit.train.loop import train_fold
from kit.train.step import Stepper

TINY = [
    "data.tile=32", "data.stride=32", "data.z_start=26", "data.z_end=34",
    "train.batch_size=4", "train.accumulate=2", "train.steps_per_epoch=3", "train.epochs=3",
    "train.warmup_steps=1", "train.num_workers=0", "train.val_every=100", "train.jitter=false",
    "infer.batch_size=64", "model.train_mode=frozen",
]  # fmt: skip
NO_AUGMENT = [f"augment.{p}=0" for p in ("p_flip", "p_rot90", "p_affine", "p_intensity",
              "p_slice_jitter", "p_zshift", "p_slice_dropout", "p_coarse_dropout", "p_noise")]  # fmt: skip


def _train(demo_dir: Path, out: Path, *extra: str, preset="cpu-demo", **kwargs) -> dict:
    config = load_config(preset, [*TINY, *NO_AUGMENT, *extra])
    return train_fold(
        config, data_dir=demo_dir, fold=0, folds_csv=demo_dir / "folds.csv", out=out,
        progress=False, **kwargs,
    )  # fmt: skip


def test_cached_training_matches_uncached_and_encodes_each_tile_once(
    demo_dir, tmp_path, monkeypatch
):
    losses: list[float] = []
    encoded: list[int] = []  # tiles through the encoder in training mode (not validation)
    keys: list[tuple] = []
    step, encode, embeddings = Stepper.step, SamSegmenter.encode, EmbeddingCache.embeddings

    def counting_step(self, batch):
        parts = step(self, batch)
        losses.append(parts["total"])
        return parts

    def counting_encode(self, x):
        if self.training:
            encoded.append(x.shape[0])
        return encode(self, x)

    def recording_embeddings(self, model, x, cache_keys):
        keys.extend(cache_keys)
        return embeddings(self, model, x, cache_keys)

    monkeypatch.setattr(Stepper, "step", counting_step)
    monkeypatch.setattr(SamSegmenter, "encode", counting_encode)
    monkeypatch.setattr(EmbeddingCache, "embeddings", recording_embeddings)

    _train(demo_dir, tmp_path / "plain", max_steps=1)
    plain_loss, plain_encoded = losses[0], sum(encoded)
    assert plain_encoded == 8 and not keys
    losses.clear(), encoded.clear()

    _train(demo_dir, tmp_path / "cached", "train.embedding_cache=true")
    assert len(losses) == 9
    # Same init (seed), same tiles: the first step's loss is the uncached one.
    assert losses[0] == pytest.approx(plain_loss, rel=1e-5)
    assert len(keys) == 9 * 8
    distinct = len(set(keys))
    # Each distinct tile went through the encoder exactly once; repeats came from the cache.
    assert sum(encoded) == distinct < len(keys)

    # Cached tiles are not even read (zeros in their place); reading them changes nothing.
    reads: list[int] = []
    read_window = loop.TileDataset.__getitem__.__globals__["read_window"]

    def counting_read(*args, **kwargs):
        reads.append(1)
        return read_window(*args, **kwargs)

    monkeypatch.setattr("kit.train.dataset.read_window", counting_read)
    cached_losses = list(losses)
    losses.clear()
    _train(demo_dir, tmp_path / "cached-again", "train.embedding_cache=true")
    assert losses == cached_losses
    skipped = len(reads)
    reads.clear(), losses.clear()
    monkeypatch.setattr(SamTrainingHooks, "cached", lambda self, tiles: None)
    _train(demo_dir, tmp_path / "cached-read-all", "train.embedding_cache=true")
    assert losses == cached_losses
    assert len(reads) == 9 * 8 > skipped


def test_cache_ignores_jitter_and_augmentation():
    default = load_config("cpu-demo", ["train.embedding_cache=true", "model.train_mode=frozen"])
    ignored = cache_ignores(default)
    assert "train.jitter" in ignored and "augment.p_flip" in ignored
    quiet = load_config("cpu-demo", [*TINY, *NO_AUGMENT, "train.embedding_cache=true"])
    assert cache_ignores(quiet) == []


@pytest.mark.parametrize(
    ("extra", "preset", "message"),
    [
        (["model.train_mode=full"], "cpu-demo", "model.train_mode=frozen"),
        ([], "cpu-demo-unet", "model.family"),
    ],
)
def test_cache_refuses_configs_that_cannot_use_it(demo_dir, tmp_path, extra, preset, message):
    with pytest.raises(KitError, match=message):
        _train(demo_dir, tmp_path / "run", "train.embedding_cache=true", *extra, preset=preset)
    assert not (tmp_path / "run" / "checkpoints").exists()
