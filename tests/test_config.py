"""frcnn.config: params.yaml -> frozen dataclasses; every bad value names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from frcnn.config import Config, ConfigError, config_from_dict, load_config

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_params_yaml_loads_and_equals_the_dataclass_defaults():
    cfg = load_config(PARAMS)
    assert isinstance(cfg, Config)
    # params.yaml and the dataclass defaults describe the same run (the YAML writes 1/9 as 0.111)
    assert cfg.loss.smooth_l1_beta == pytest.approx(1 / 9, abs=1e-3)
    assert dataclasses.replace(cfg, loss=Config().loss) == Config()
    assert cfg.loss.lambda_ == 5.0 and cfg.rpn.pos_iou_thresh == 0.7
    assert cfg.anchors.scales == (24.0, 48.0, 96.0, 192.0)
    assert isinstance(cfg.anchors.scales, tuple)


def test_override_by_dotted_key_converts_the_type():
    cfg = load_config(PARAMS, {"loss.lambda": 10, "anchors.scales": [32, 64], "roi.op": "pool"})
    assert cfg.loss.lambda_ == 10.0 and isinstance(cfg.loss.lambda_, float)
    assert cfg.anchors.scales == (32.0, 64.0)
    assert cfg.roi.op == "pool"
    assert load_config(PARAMS).loss.lambda_ == 5.0  # the file itself is not changed


def test_override_below_a_scalar_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"^seed\.x: seed is not a section"):
        config_from_dict({"seed": 0}, {"seed.x": 1})


def test_config_is_frozen_and_round_trips_through_dicts():
    cfg = config_from_dict({}, {"loss.lambda": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.lambda_ = 3.0  # type: ignore[misc]
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["loss"]["lambda"] == 2.0  # the YAML name, not the Python one
    flat = cfg.flat()
    assert flat["loss.lambda"] == 2.0 and flat["anchors.ratios"] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("overrides, message", [
    ({"rpn.foo": 1}, "rpn.foo: unknown key"),
    ({"nonsense": 1}, "nonsense: unknown key"),
    ({"rpn.neg_iou_thresh": 0.7}, "rpn.neg_iou_thresh: must be >= 0 and < rpn.pos_iou_thresh"),
    ({"rpn.neg_iou_thresh": 0.8}, "rpn.neg_iou_thresh: must be >= 0 and < rpn.pos_iou_thresh"),
    ({"loss.lambda": -1}, "loss.lambda: must be >= 0"),
    ({"anchors.scales": []}, "anchors.scales: must not be empty"),
    ({"anchors.ratios": [1.0, 0.0]}, "anchors.ratios: must all be > 0"),
    ({"roi.output_size": 0}, "roi.output_size: must be >= 1"),
    ({"roi.op": "max"}, "roi.op: must be one of align_grid | align | pool, got 'max'"),
    ({"model.backbone": "vgg16"}, "model.backbone: must be one of"),
    ({"rpn.batch_size_per_image": 2.5}, "rpn.batch_size_per_image: must be an integer"),
    ({"rpn.batch_size_per_image": True}, "rpn.batch_size_per_image: must be an integer"),
    ({"model.pretrained": "yes"}, "model.pretrained: must be true or false"),
    ({"loss.lambda": "ten"}, "loss.lambda: must be a number"),
    ({"loss.lambda": float("nan")}, "loss.lambda: must be finite"),
    ({"anchors.scales": 32}, "anchors.scales: must be a list"),
    ({"anchors.scales": [32, "x"]}, "anchors.scales[1]: must be a number"),
    ({"rpn": 3}, "rpn: must be a mapping"),
    ({"rpn.post_nms_top_n_test": 7000}, "rpn.post_nms_top_n_test: must be <= rpn.pre_nms_top_n_test"),
    ({"model.max_size": 100}, "model.max_size: must be >= model.min_size"),
    ({"data.synth.min_object_size": 300}, "data.synth.min_object_size: must be between"),
    ({"data.synth.max_objects": 0}, "data.synth.max_objects: must be >= 1"),
    ({"data.synth.patterned_fill": 1.5}, "data.synth.patterned_fill: must be in [0, 1]"),
    ({"data.synth.class_colour": -0.1}, "data.synth.class_colour: must be in [0, 1]"),
])
def test_bad_values_raise_one_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_config_error_is_a_value_error_and_names_the_file(tmp_path):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["rpn"]["pos_iou_thresh"] = 0.2  # now below neg_iou_thresh = 0.3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"params\.yaml: rpn\.neg_iou_thresh: must be >= 0 and < "
                                         r"rpn\.pos_iou_thresh \(0\.2\)"):
        load_config(path)
    raw["rpn"]["pos_iou_thresh"] = 0.7
    raw["rpn"]["typo_thresh"] = 0.5
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"rpn\.typo_thresh: unknown key"):
        load_config(path)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rpn: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_the_dataclass_defaults_are_params_yaml_key_by_key() -> None:
    # one set of defaults: Config() and the committed params.yaml describe the same run
    from pathlib import Path

    import yaml

    from frcnn.config import Config, flatten

    committed = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert flatten(Config().to_dict()) == flatten(committed)
