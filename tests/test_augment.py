import dataclasses

import pytest
import torch

from kit.augment import augment_batch, random_affine, random_flip, random_rot90, random_zshift
from kit.config import AugmentConfig

OFF = AugmentConfig(
    **{f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.startswith("p_")}
)


def _blocks(
    b: int = 8, c: int = 4, t: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blocky labels (B, 1, T, T) drawn into every channel of the image."""
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand((b, 1, t // 4, t // 4), generator=g) < 0.4).float()
    y = coarse.repeat_interleave(4, -1).repeat_interleave(4, -2)
    y[:, :, : t // 2, : t // 4] = 0  # break the symmetry so a wrong rotation shows
    return y.repeat(1, c, 1, 1), y


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _near_edge(y: torch.Tensor) -> torch.Tensor:
    """bool (B, 1, T, T): pixels within 1 px of a label edge."""
    pooled_max = torch.nn.functional.max_pool2d(y, 3, stride=1, padding=1)
    pooled_min = -torch.nn.functional.max_pool2d(-y, 3, stride=1, padding=1)
    return pooled_max != pooled_min


@pytest.mark.parametrize("transform", [random_flip, random_rot90])
def test_exact_geometric_transforms_keep_label_aligned(transform):
    x, y = _blocks()
    xa, ya = transform(x.clone(), y.clone(), p=1.0, generator=_generator())
    assert not torch.equal(ya, y)  # something moved
    assert torch.equal(xa, ya.expand_as(xa))


def test_affine_keeps_label_aligned_up_to_interpolated_edges():
    x, y = _blocks()
    config = dataclasses.replace(OFF, p_affine=1.0, rotate_deg=20.0, scale=0.2, shift=0.1)
    xa, ya = random_affine(x.clone(), y.clone(), config=config, generator=_generator())
    assert set(ya.unique().tolist()) <= {0.0, 1.0}
    mismatch = (xa[:, :1] > 0.5).float() != ya
    assert (ya != y).float().mean() > 0.1  # the warp moved the labels
    assert not (mismatch & ~_near_edge(ya)).any()  # differences only where bilinear blends edges
    assert mismatch.float().mean() < 0.05


def test_full_pipeline_geometric_alignment_and_label_values():
    x, y = _blocks(b=16)
    config = dataclasses.replace(AugmentConfig(), p_flip=0.5, p_rot90=0.5, p_affine=0.5)
    # Intensity transforms change x but not where the label sits: compare geometry only.
    geometric = dataclasses.replace(
        OFF,
        p_flip=0.5,
        p_rot90=0.5,
        p_affine=0.5,
        scale=config.scale,
        rotate_deg=config.rotate_deg,
        shift=config.shift,
    )
    xa, ya = augment_batch(x, y, config=geometric, generator=_generator(3))
    mismatch = (xa[:, :1] > 0.5).float() != ya
    assert not (mismatch & ~_near_edge(ya)).any()
    xf, yf = augment_batch(x, y, config=config, generator=_generator(3))
    assert set(yf.unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(xf).all()


def test_same_seed_same_batch_and_samples_differ():
    x, y = _blocks()
    config = AugmentConfig(p_flip=0.5, p_rot90=0.5, p_affine=0.5, p_noise=1.0)
    a = augment_batch(x, y, config=config, generator=_generator(7))
    b = augment_batch(x, y, config=config, generator=_generator(7))
    c = augment_batch(x, y, config=config, generator=_generator(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # per-sample parameters: identical inputs come out different
    same = torch.ones(4, 2, 16, 16) * 0.5
    out, _ = augment_batch(same, torch.zeros(4, 1, 16, 16), config=config, generator=_generator())
    assert not torch.allclose(out[0], out[1])


def test_zshift_moves_slices_and_zero_fills():
    x = torch.arange(6.0)[None, :, None, None].expand(5, 6, 2, 2).clone() + 1
    out = random_zshift(x.clone(), p=1.0, max_shift=2, generator=_generator(4))
    for sample in out:
        profile = sample[:, 0, 0]
        nz = profile[profile > 0]
        shift = int(nz[0] - 1) if profile[0] > 0 else -int((profile == 0).sum())
        expected = torch.tensor(
            [v + 1 + shift if 0 <= v + shift < 6 else 0 for v in range(6)]
        ).float()
        assert torch.equal(profile, expected)


def test_all_probabilities_zero_is_identity():
    x, y = _blocks()
    x0, y0 = x.clone(), y.clone()
    xa, ya = augment_batch(x, y, config=OFF, generator=_generator())
    assert torch.equal(xa, x) and torch.equal(ya, y)
    xf, _ = augment_batch(x, y, config=AugmentConfig(p_noise=1.0), generator=_generator())
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    assert not torch.equal(xf, x)


def test_coarse_dropout_zeroes_square_holes_and_keeps_labels():
    x, y = torch.ones(3, 2, 40, 40), torch.ones(3, 1, 40, 40)
    config = dataclasses.replace(OFF, p_coarse_dropout=1.0, coarse_holes=1, coarse_size=0.25)
    xa, ya = augment_batch(x, y, config=config, generator=_generator())
    assert torch.equal(ya, y)
    for sample in xa:
        assert int((sample[0] == 0).sum()) == 100  # one 10×10 hole
        assert torch.equal(sample[0], sample[1])  # all slices of the hole


def _whole_batch(monkeypatch):
    """Augment as on a GPU: the whole-batch path, no host reads (kit.augment docstring)."""
    monkeypatch.setattr("kit.augment.PER_SAMPLE_DEVICES", ())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_batch_path_equals_the_per_sample_loop(monkeypatch, seed):
    x, y = _blocks(b=16, c=6)
    x = x * torch.rand_like(x) - 0.2  # negative values too: the general intensity formula
    config = dataclasses.replace(AugmentConfig(), p_noise=0.0)  # every other transform on
    loop = augment_batch(x, y, config=config, generator=_generator(seed))
    _whole_batch(monkeypatch)
    batched = augment_batch(x, y, config=config, generator=_generator(seed))
    for a, b in zip(loop, batched, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(loop[0], x)  # something was augmented


def test_whole_batch_noise_touches_only_chosen_samples(monkeypatch):
    _whole_batch(monkeypatch)
    x = torch.zeros(64, 2, 16, 16)
    config = dataclasses.replace(OFF, p_noise=0.5, noise_std=0.1)
    out, _ = augment_batch(x, x[:, :1], config=config, generator=_generator())
    noisy = out.flatten(1).abs().amax(dim=1) > 0
    assert 16 < int(noisy.sum()) < 48
    assert out[noisy].std().item() == pytest.approx(0.1, rel=0.05)
