"""kit.data.surface: the surface found from the volume alone, and reads along it; flattening
through the one preprocessing path."""

from dataclasses import replace

import numpy as np
import pytest

from kit.config import load_config
from kit.data.demo import N_SLICES, REAL_SHAPES, DemoStyle, _scaled, make_demo_data, synth_fragment
from kit.data.fragment import Fragment
from kit.data.preprocess import read_window
from kit.data.probe import probe_fragments, resolve_auto
from kit.data.surface import read_flat, surface_map

SCALE = 1 / 40


@pytest.mark.parametrize("reverse", [False, True])
def test_surface_map_follows_the_generated_surface(tmp_path, reverse):
    style = DemoStyle(surface_mean=30, surface_wander=6, reverse=reverse)
    path = make_demo_data(tmp_path / "d", seed=3, scale=SCALE, style=style)
    truth = synth_fragment(_scaled(REAL_SHAPES["1"], SCALE), seed=3, index=0, scale=SCALE,
                           style=style).surface  # fmt: skip
    if reverse:
        truth = N_SLICES - 1 - truth
    fragment = Fragment(path / "train" / "1")
    h, w = fragment.shape
    found = surface_map(fragment, reverse).depth(slice(0, h), slice(0, w))
    inside = fragment.mask()
    error = np.abs(found - truth)[inside]
    assert np.percentile(error, 90) <= 1.5, np.percentile(error, [50, 90, 99])
    # a map that ignored the wander (its mean everywhere) would be off by far more
    assert np.percentile(np.abs(truth[inside] - truth[inside].mean()), 90) > 3


class _Stack:
    """A fragment stand-in whose slice z holds the value z everywhere."""

    n_slices = 10

    def read(self, z0, z1, rows, cols):
        h, w = rows.stop - rows.start, cols.stop - cols.start
        return np.broadcast_to(np.arange(z0, z1, dtype=np.uint16)[:, None, None], (z1 - z0, h, w))


def test_read_flat_reads_each_pixel_at_its_shift_clamped_into_the_volume():
    shift = np.array([[0, 2], [-3, 7]])
    out = read_flat(_Stack(), 2, 5, slice(0, 2), slice(0, 2), shift)
    assert out.shape == (3, 2, 2) and out.dtype == np.uint16
    assert out[:, 0, 0].tolist() == [2, 3, 4]
    assert out[:, 0, 1].tolist() == [4, 5, 6]
    assert out[:, 1, 0].tolist() == [0, 0, 1]  # slice -1 clamped to 0
    assert out[:, 1, 1].tolist() == [9, 9, 9]  # slices 9..11 clamped to 9


def test_flattening_puts_the_ink_at_one_model_slice(tmp_path):
    """Read along the surface, the ink's contrast peaks sharper than in file order: the window
    read with the resolved config holds it at one depth wherever the surface wanders."""
    style = DemoStyle(surface_mean=30, surface_wander=6, surface_length=80)
    path = make_demo_data(tmp_path / "d", seed=1, scale=SCALE, style=style)
    fragments = [Fragment(path / "train" / i) for i in "123"]
    probe = probe_fragments(fragments, [f.labels() for f in fragments])
    assert probe.flatten  # the wander smears the file-order signal
    auto = load_config("cpu-demo-unet")
    flat = resolve_auto(auto, probe).data
    assert flat.flatten and flat.surface_depth == probe.surface_depth
    assert (flat.z_start, flat.z_end) == probe.flat_window
    # the same slices without flattening, for comparison
    plain = replace(flat, flatten=False)
    fragment = fragments[1]
    h, w = fragment.shape
    ink = fragment.labels() > 0
    contrast = {}
    for name, data in (("flat", flat), ("plain", plain)):
        image = read_window(fragment, data, 0, 0, h, w).astype(np.float64)
        paper = fragment.mask() & ~ink
        contrast[name] = np.max(np.abs(image[:, ink].mean(1) - image[:, paper].mean(1)))
    assert contrast["flat"] > 1.2 * contrast["plain"], contrast


def test_a_level_surface_is_not_flattened(tmp_path):
    style = DemoStyle(surface_mean=30, surface_wander=0.0)
    path = make_demo_data(tmp_path / "d", seed=1, scale=SCALE, style=style)
    fragments = [Fragment(path / "train" / i) for i in "123"]
    probe = probe_fragments(fragments, [f.labels() for f in fragments])
    assert not probe.flatten
    data = resolve_auto(load_config("cpu-demo-unet"), probe).data
    assert data.flatten is False and (data.z_start, data.z_end) == probe.file_window
