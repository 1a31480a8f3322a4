import pytest

from kit.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config


def test_preset_round_trips_through_dict():
    config = load_config("cpu-demo")
    assert config_from_dict(config_to_dict(config)) == config


def test_override_parses_yaml_values_and_rejects_unknown_keys():
    config = apply_overrides(
        load_config("cpu-demo"), ["train.lr=3e-4", "infer.tta=[identity, hflip]"]
    )
    assert config.train.lr == pytest.approx(3e-4)
    assert config.infer.tta == ["identity", "hflip"]
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        apply_overrides(config, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(config, ["train.epochs=many"])


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="cpu-demo"):
        load_config("no-such-preset")


def test_unquoted_off_stays_a_word_for_string_fields(tmp_path):
    """YAML 1.1 reads `off` as false; the amp fields take the word (`--set train.amp=off`)."""
    config = load_config("cpu-demo-unet", ["train.amp=off", "infer.amp=off"])
    assert config.train.amp == "off" and config.infer.amp == "off"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(str(path)).train.amp == "off"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.tile=-48", r"data\.tile=-48 is outside \[1, inf\)"),
        ("train.lr=.nan", r"train\.lr=nan is outside \(0, inf\)"),
        ("train.lr=0", r"train\.lr=0\.0 is outside \(0, inf\)"),
        ("train.batch_size=0", r"train\.batch_size=0 is outside \[1, inf\)"),
        ("train.amp=fp8", r"train\.amp='fp8' is not one of \['auto', 'bf16', 'fp16', 'off'\]"),
        ("infer.window=foo", r"infer\.window='foo' is not one of \['gaussian', 'hann', 'flat'\]"),
        ("infer.tta=[flip]", r"infer\.tta: unknown TTA transform\(s\) \['flip'\]; choose from"),
        ("post.threshold=1.5", r"post\.threshold=1\.5 is outside \[0, 1\]"),
        ("post.percentile=150", r"post\.percentile=150\.0 is outside \[0, 100\]"),
        ("augment.p_flip=2", r"augment\.p_flip=2\.0 is outside \[0, 1\]"),
        ("data.norm=zscore", r"data\.norm='zscore' is not one of"),
        ("data.p_low=99.9", r"data\.p_low=99\.9 must be below data\.p_high=99\.5"),
        ("model.layer_decay=0", r"model\.layer_decay=0\.0 is outside \(0, 1\]"),
        ("model.attention=flash", r"model\.attention 'flash' .*valid: \['auto', 'sdpa', 'meta'\]"),
        ("train.log_every=0", r"train\.log_every=0 is outside \[1, inf\)"),
    ],
)
def test_bad_values_fail_when_the_config_loads_naming_the_key_and_the_valid_ones(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu-demo", [override])


def test_config_command_prints_the_resolved_config(capsys):
    import yaml

    from kit.cli import main

    assert (
        main(["config", "--config", "cpu-demo", "--set", "train.lr=0.5", "--set", "train.seed=3"])
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.5 and printed["train"]["seed"] == 3  # both --set apply
    assert printed == config_to_dict(load_config("cpu-demo", ["train.lr=0.5", "train.seed=3"]))


def test_speed_settings_are_saved_with_the_config():
    config = load_config("cpu-demo", ["model.attention=meta", "model.compile=true"])
    saved = config_from_dict(config_to_dict(config))
    assert (saved.model.attention, saved.model.compile) == ("meta", True)
    with pytest.raises(ConfigError, match=r"model\.attention='sdpa' is for model\.family sam"):
        load_config("cpu-demo-unet", ["model.attention=sdpa"])


def test_base_file_sets_only_what_differs(tmp_path):
    """`base:` starts from a preset or a file (relative to the one naming it); each section's
    keys replace the base's one by one; the file keeps its own name; a loop is refused."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("base: cpu-demo\ntrain:\n  lr: 1.0e-4\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: sub/mid.yaml\nmodel:\n  prompt: box\ndata:\n  tile: 64\n")
    config, preset = load_config(str(child)), load_config("cpu-demo")
    assert (config.name, config.model.prompt, config.data.tile) == ("child", "box", 64)
    assert config.train.lr == pytest.approx(1e-4)
    assert config.model.variant == preset.model.variant  # kept from the base's model section
    assert config.data.stride == preset.data.stride and config.augment == preset.augment
    expected = config_to_dict(apply_overrides(preset, ["model.prompt=box", "data.tile=64",
                                                       "train.lr=1e-4"]))  # fmt: skip
    assert {**config_to_dict(config), "name": "cpu-demo"} == expected
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml does not exist"):
        load_config(str(tmp_path / "c.yaml"))


def test_cascade_preset_is_cpu_demo_with_a_prior():
    cascade = load_config("cpu-demo-cascade")
    assert (cascade.model.prompt, cascade.model.prior_residual) == ("mask", True)
    demo = load_config("cpu-demo", ["model.prompt=mask", "model.prior_residual=true"])
    assert {**config_to_dict(cascade), "name": "cpu-demo"} == config_to_dict(demo)
