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
