"""kit.data.probe: the ink window, layer order and surface depth of generated variants, and the
resolution of "auto" config fields."""

from dataclasses import replace

import numpy as np
import pytest

from kit.config import ConfigError, load_config, unresolved
from kit.data.demo import N_SLICES, VARIANTS, DemoStyle, make_demo_data
from kit.data.fragment import Fragment
from kit.data.probe import (
    TILE_CONTRAST,
    DatasetProbe,
    probe_fragments,
    recommend_window,
    resolve_auto,
    resolve_input_gain,
    tile_contrast,
)

SCALE = 1 / 40


def _probe(path):
    fragments = [Fragment(path / "train" / i) for i in "123"]
    return probe_fragments(fragments, [f.labels() for f in fragments])


def _ink_centre(style: DemoStyle) -> tuple[float, float]:
    """File-index range of the ink layer's centre over the surface's wander."""
    lo = style.surface_mean - style.surface_wander + style.ink_depth
    hi = style.surface_mean + style.surface_wander + style.ink_depth
    if style.reverse:
        lo, hi = N_SLICES - 1 - hi, N_SLICES - 1 - lo
    return lo, hi


STYLES = {
    "demo": VARIANTS["demo"],
    "shallow": VARIANTS["shallow"],
    "deep-reversed": DemoStyle(surface_mean=44, surface_wander=4, reverse=True),
    "lighter-ink": DemoStyle(surface_mean=18, ink_density=-2900),
}


@pytest.mark.parametrize("name", sorted(STYLES))
def test_probe_finds_the_ink_window_and_layer_order(name, tmp_path):
    style = STYLES[name]
    probe = _probe(make_demo_data(tmp_path / name, seed=1, scale=SCALE, style=style))
    lo, hi = probe.file_window
    centre_lo, centre_hi = _ink_centre(style)
    # the window holds the ink layer's centre wherever the surface wanders (to a slice: the
    # surface's extremes cover little of the papyrus)
    assert lo <= centre_lo + 1 and centre_hi - 1 <= hi - 1, (probe.window, (centre_lo, centre_hi))
    assert hi - lo <= 24
    # along the surface (moved to surface_depth), the window holds the ink's depth behind it
    lo, hi = probe.flat_window
    ink = probe.surface_depth + (-style.ink_depth if style.reverse else style.ink_depth)
    assert lo <= ink <= hi - 1 and hi - lo <= 16, (probe.flat_window, ink)
    assert probe.window == (probe.flat_window if probe.flatten else probe.file_window)
    assert probe.reverse == style.reverse
    peak = int(np.argmax(probe.signal))
    assert centre_lo - 1 <= peak <= centre_hi + 1
    for f in probe.fragments:
        surface = style.surface_mean if not style.reverse else N_SLICES - 1 - style.surface_mean
        assert abs(f.surface["median"] - surface) <= style.surface_wander + 1
        assert f.reversed == style.reverse
        sign = np.sign(f.signal[int(np.argmax(np.abs(f.signal)))])
        assert sign == np.sign(style.ink_density)


def test_probe_reads_only_the_rows_it_is_given(tmp_path):
    path = make_demo_data(tmp_path / "d", seed=0, scale=SCALE)
    fragment = Fragment(path / "train" / "1")
    labels = fragment.labels()
    rows = [(0, fragment.shape[0] // 2)]
    top = probe_fragments([fragment], [labels], [rows])
    hidden = labels.copy()
    hidden[fragment.shape[0] // 2 :] = 0  # labels outside the rows change nothing...
    assert probe_fragments([fragment], [hidden], [rows]).signal == top.signal
    assert probe_fragments([fragment], [labels]).signal != top.signal  # ...inside they do


def test_recommend_window_bounds():
    signal = np.zeros(65)
    signal[40] = 1.0
    lo, hi = recommend_window(signal)
    assert lo <= 40 < hi and 8 <= hi - lo <= 9  # widened to the minimum around the peak
    wide = np.ones(65)
    lo, hi = recommend_window(wide)
    assert hi - lo == 32
    edge = np.zeros(65)
    edge[0] = 1.0
    assert recommend_window(edge) == (0, 8)
    edge = np.zeros(65)
    edge[64] = 1.0
    assert recommend_window(edge) == (57, 65)


def _dataset_probe(window, reverse=False, flat=None) -> DatasetProbe:
    """A probe choosing `window` in file slices, or `flat` along the surface (at 31.5)."""
    return DatasetProbe(
        fragments=[], signal=[0.0] * 65, window=flat or window, reverse=reverse,
        flatten=flat is not None, surface_depth=31.5, file_window=window,
        flat_window=flat or window,
    )  # fmt: skip


def test_auto_fields_resolve_from_the_probe_and_fixed_ones_stay():
    config = load_config("cpu-demo-unet")
    assert set(unresolved(config)) == {"data.z_start", "data.z_end", "data.reverse",
                                       "data.flatten", "data.surface_depth"}  # fmt: skip
    with pytest.raises(ConfigError, match="not resolved"):
        _ = config.data.in_channels
    resolved = resolve_auto(config, _dataset_probe((30, 42), reverse=True))
    assert (resolved.data.z_start, resolved.data.z_end, resolved.data.reverse) == (30, 42, True)
    assert resolved.data.in_channels == 12 and not unresolved(resolved)
    assert resolved.data.flatten is False
    flat = resolve_auto(config, _dataset_probe((30, 42), flat=(33, 41))).data
    assert (flat.flatten, flat.surface_depth, flat.z_start, flat.z_end) == (True, 31.5, 33, 41)
    # flattening asked for: the flat window and the surface depth, whatever the probe chose
    forced = resolve_auto(load_config("cpu-demo-unet", ["data.flatten=true"]),
                          _dataset_probe((30, 42))).data  # fmt: skip
    assert (forced.flatten, forced.surface_depth) == (True, 31.5)
    fixed_window = load_config("cpu-demo-unet", ["data.z_start=30", "data.z_end=40"])
    assert fixed_window.data.in_channels == 10  # only data.reverse is left to the probe
    fixed = load_config(
        "cpu-demo-unet", ["data.z_start=20", "data.reverse=false", "data.flatten=false"]
    )
    fixed = resolve_auto(fixed, _dataset_probe((30, 42), reverse=True))
    assert (fixed.data.z_start, fixed.data.z_end, fixed.data.reverse) == (20, 32, False)
    end = resolve_auto(load_config("cpu-demo-unet", ["data.z_end=50"]), _dataset_probe((30, 42)))
    assert (end.data.z_start, end.data.z_end) == (38, 50)


def test_auto_values_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match="'auto'"):
        load_config("cpu-demo-unet", ["data.z_start=middle"])
    with pytest.raises(ConfigError, match="input_gain"):
        load_config("cpu-demo", ["model.input_gain=loud"])
    with pytest.raises(ConfigError, match="above"):
        load_config("cpu-demo-unet", ["data.z_start=30", "data.z_end=30"])


def test_models_refuse_unresolved_configs():
    from kit.models import build_model

    with pytest.raises(ConfigError, match="resolved"):
        build_model(load_config("cpu-demo"))


def test_input_gain_auto_scales_the_tile_contrast_to_a_fixed_spread(tmp_path):
    path = make_demo_data(tmp_path / "d", seed=0, scale=SCALE)
    fragments = [Fragment(path / "train" / i) for i in "12"]
    rows = [[(0, f.shape[0])] for f in fragments]
    config = resolve_auto(load_config("cpu-demo"), _dataset_probe((28, 40)))
    contrast = tile_contrast(fragments, rows, config.data)
    gain = resolve_input_gain(config, contrast).model.input_gain
    assert gain * contrast == pytest.approx(TILE_CONTRAST, rel=0.01)
    # a wider normalisation range squeezes the same papyrus into less contrast: more gain
    wide = replace(config, data=replace(config.data, p_low=0.0, p_high=100.0))
    wide_contrast = tile_contrast(fragments, rows, wide.data)
    assert wide_contrast < 0.9 * contrast
    assert resolve_input_gain(wide, wide_contrast).model.input_gain > gain
    assert resolve_input_gain(load_config("sam-vit-b"), contrast).model.input_gain == 0.0


def test_probe_command_keeps_its_result_only_for_the_same_fragment_files(
    tmp_path, demo_dir, capsys
):
    import json
    import shutil

    from kit.cli import main

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    out = tmp_path / "probe"
    assert main(["probe", "--data", str(data), "--out", str(out)]) == 0
    record = json.loads((out / "probe.json").read_text())
    assert set(record["data"]) == {"1", "2", "3"}
    capsys.readouterr()
    assert main(["probe", "--data", str(data), "--out", str(out)]) == 0
    assert "same fragments, kept" in capsys.readouterr().out
    labels = data / "train" / "2" / "inklabels.png"
    labels.write_bytes(labels.read_bytes())  # same bytes, new mtime: a new input
    assert main(["probe", "--data", str(data), "--out", str(out)]) == 0
    assert "kept" not in capsys.readouterr().out
    assert json.loads((out / "probe.json").read_text())["data"] != record["data"]
