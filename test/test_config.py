"""Parameter table, validation with reasons, and the shipped YAML."""
from pathlib import Path

import pytest
import yaml

from robot_vision_ros.core import config
from robot_vision_ros.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    cfg = config.validate({})
    assert cfg.backbone == "resnet18"
    assert cfg.input_size == (224, 224)
    assert cfg.to_params() == config.defaults()


def test_every_spec_maps_to_a_config_field():
    assert sorted(p.field for p in config.PARAMETERS) == sorted(config.field_names())


def test_shipped_yaml_lists_every_parameter_with_its_default():
    params = config.load_yaml(REPO / "config" / "vision.yaml")
    assert params == config.defaults()
    # The shipped file is the generated one: a comment for every key.
    shipped = (REPO / "config" / "vision.yaml").read_text()
    assert shipped == config.render_yaml(), (
        "regenerate: python -m robot_vision_ros.tools.params_yaml > config/vision.yaml")


@pytest.mark.parametrize("name,value,reason", [
    ("output_dim", -1, "must be >= 0"),
    ("output_dim", "big", "must be an integer"),
    ("precision", "fp8", "must be one of fp32, fp16, bf16"),
    ("device", "gpu", "must be auto, cpu, cuda or cuda:N"),
    ("input_size", [224], "must have 2 elements"),
    ("input_size", [224, 100], "multiples of 32"),
    ("target_fps", 0.0, "must be >= 0.1"),
    ("target_fps", float("nan"), "must be finite"),
    ("autostart", 1, "must be true or false"),
    ("sync.slop_s", 5.0, "must be <= 1"),
])
def test_bad_values_are_rejected_with_the_reason(name, value, reason):
    with pytest.raises(ConfigError) as err:
        config.validate({name: value})
    assert name in str(err.value) and reason in str(err.value)


def test_all_reasons_reported_at_once():
    with pytest.raises(ConfigError) as err:
        config.validate({"output_dim": -5, "precision": "x", "no_such": 1})
    text = str(err.value)
    assert "output_dim" in text and "precision" in text and "unknown parameter 'no_such'" in text


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        config.validate({"backbone": "resnet1000"})
    assert "resnet1000" in str(err.value) and "resnet18" in str(err.value)


def test_depth_range_cross_check():
    with pytest.raises(ConfigError, match="depth.min_m"):
        config.validate({"depth.min_m": 5.0, "depth.max_m": 1.0})


def test_replace_validates():
    cfg = config.validate({})
    assert cfg.replace(**{"target_fps": 10.0}).target_fps == 10.0
    with pytest.raises(ConfigError):
        cfg.replace(**{"target_fps": -1.0})


def test_load_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("other_node:\n  ros__parameters: {a: 1}\n")
    with pytest.raises(ConfigError, match="no 'vision: ros__parameters:' section"):
        config.load_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_yaml(tmp_path / "missing.yaml")
    nested = tmp_path / "ok.yaml"
    nested.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"sync": {"slop_s": 0.05}}}}))
    assert config.load_yaml(nested) == {"sync.slop_s": 0.05}


def test_readme_parameter_table_is_current():
    from robot_vision_ros.tools.readme_params import refresh
    text = (REPO / "README.md").read_text()
    assert refresh(text) == text, \
        "regenerate: python -m robot_vision_ros.tools.readme_params README.md"
    for spec in config.PARAMETERS:
        assert f"`{spec.name}`" in text
