"""The typed config: the shipped params file, ROS params-file layouts, validation, parameter specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_engine import StampProcessor, feed

from ovsam_ros.config import (
    ConfigError,
    EverythingConfig,
    ModelConfig,
    OvsamConfig,
    config_from_parameters,
    load_config,
    parameter_specs,
)
from ovsam_ros.engine import Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_yaml_lists_every_parameter_with_its_default():
    doc = yaml.safe_load((ROOT / "config" / "ovsam.yaml").read_text())
    block = doc["/**"]["ros__parameters"]  # applies to the node under any namespace
    listed = {f"{section}.{name}" for section, fields in block.items() for name in fields}
    assert listed == {spec.name for spec in parameter_specs()}
    assert load_config(ROOT / "config" / "ovsam.yaml") == OvsamConfig()


def test_specs_carry_descriptor_data():
    specs = {s.name: s for s in parameter_specs()}
    assert specs["vocab.top_k"].range == (1, 100) and specs["vocab.top_k"].type is int
    assert specs["model.precision"].choices == ("auto", "fp32", "fp16", "bf16")
    assert specs["vocab.vocabulary"].dynamic and not specs["model.preset"].dynamic
    assert all(s.description for s in specs.values())
    assert all(type(s.default) is s.type for s in specs.values())


def test_nested_dotted_namespaced_and_wildcard_blocks_merge(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    vocab: {top_k: 3}\n    model.device: cpu\n"
        "/robot/ovsam_node:\n  ros__parameters:\n    model: {preset: mobilesam, device: 'cuda:1'}\n"
        "    everything.nms_threshold: 1\n"
        "other_node:\n  ros__parameters:\n    not_ours: 1\n"
    )
    cfg = load_config(path)
    assert cfg.vocab.top_k == 3
    assert cfg.model.preset == "mobilesam" and cfg.model.device == "cuda:1"
    assert cfg.everything.nms_threshold == 1.0 and isinstance(cfg.everything.nms_threshold, float)
    with pytest.raises(ConfigError, match="not_ours"):
        load_config(path, node_name="other_node")


def test_plain_tree_without_ros_parameters(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("engine:\n  encode_mode: on_demand\n")
    assert load_config(path).engine.encode_mode == "on_demand"


@pytest.mark.parametrize(("params", "words"), [
    ({"model.precision": "fp8"}, ["model.precision", "fp16"]),
    ({"model.device": "gpu0"}, ["model.device", "cuda:N"]),
    ({"vocab.top_k": 0}, ["vocab.top_k", "[1, 100]"]),
    ({"vocab.top_k": 2.5}, ["vocab.top_k", "int"]),
    ({"vocab.score_threshold": 1.5}, ["vocab.score_threshold"]),
    ({"node.use_depth": "yes"}, ["node.use_depth", "bool"]),
    ({"node.image_qos": "best_effort"}, ["sensor_data", "reliable"]),
    ({"node.image_topic": "bad topic"}, ["node.image_topic"]),
    ({"vocab.topk": 3}, ["vocab.topk", "vocab.top_k"]),
])
def test_bad_values_name_the_parameter(params, words):
    with pytest.raises(ConfigError) as err:
        config_from_parameters(params)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ovsam_node:\n  ros__parameters:\n    engine: {cache_size: -1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*engine\.cache_size"):
        load_config(bad)
    assert load_config(None) == OvsamConfig()


def test_sections_validate_on_construction_and_update_round_trips():
    with pytest.raises(ConfigError):
        EverythingConfig(nms_threshold=2.0)
    with pytest.raises(ConfigError):
        ModelConfig(preset="sam-9000")
    cfg = OvsamConfig()
    changed = cfg.updated({"vocab.vocabulary": "coco", "engine.max_encode_rate_hz": 10})
    assert changed.vocab.vocabulary == "coco" and changed.engine.max_encode_rate_hz == 10.0
    assert cfg.vocab.vocabulary == "lvis"
    assert config_from_parameters(changed.to_parameters()) == changed


def test_engine_section_is_the_engine_config_and_runs_an_engine(tmp_path):
    """A params file's engine block becomes the EngineConfig the engine runs under; its only field
    that is not a parameter (keep_images, set by the session) cannot be set from a file."""
    path = tmp_path / "p.yaml"
    path.write_text("engine: {encode_mode: continuous, max_encode_rate_hz: 0, cache_size: 3}\n")
    config = load_config(path).engine
    assert isinstance(config, EngineConfig) and config.max_encode_rate_hz == 0.0
    processor = StampProcessor()
    engine = Engine(processor, config, replay=True)
    feed(engine, range(5))
    stats = engine.stats()
    assert processor.encoded == [0, 1, 2, 3, 4]  # continuous, no rate cap: every frame
    assert stats["encode_mode"] == "continuous" and stats["cached_frames"] == 3
    assert "engine.keep_images" not in {spec.name for spec in parameter_specs()}
    with pytest.raises(ConfigError, match=r"unknown parameter.*engine\.keep_images"):
        config_from_parameters({"engine.keep_images": True})
    with pytest.raises(ConfigError, match=r"engine\.encode_mode must be one of on_demand, continuous, auto"):
        config_from_parameters({"engine.encode_mode": "sometimes"})
