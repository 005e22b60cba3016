"""``HybridCDiTConfig``: the seed's YAML as it stands, validation, and ``build_model``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from hybrid_cdit.config import HybridCDiTConfig, build_model
from hybrid_cdit.models import CDiT, HybridCDiT

DATA = Path(__file__).parent / "data"
SEED_YAML = DATA / "seed_l40s.yaml"


def seed_dict() -> dict[str, object]:
    data = yaml.safe_load(SEED_YAML.read_text())
    assert isinstance(data, dict)
    return data


def test_seed_yaml_reads_as_it_stands():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NWM's training keys are ignored without a warning
        config = HybridCDiTConfig.from_yaml(SEED_YAML)
    assert config.model == "CDiT-L/2" and config.variant == "L/2"
    assert (config.context_size, config.image_size, config.input_size) == (4, 224, 28)
    assert config.use_hybrid_model and config.memory_enabled
    assert config.memory_buffer_size == 50
    assert config.memory_layers == (16, 18, 20, 22)
    assert (config.memory_activation_threshold, config.spatial_similarity_threshold) == (0.3, 0.7)
    assert (config.memory_top_k, config.retrieval, config.memory_patch_size) == (
        8,
        "distance",
        None,
    )
    assert config.model_name == "HybridCDiT-L/2"


def test_seed_yaml_builds_hybrid_l2_on_meta():
    config = HybridCDiTConfig.from_yaml(SEED_YAML)
    with torch.device("meta"):
        model = build_model(config)
    assert isinstance(model, HybridCDiT)
    assert (model.depth, model.hidden_size, model.num_heads, model.patch_size) == (24, 1024, 16, 2)
    assert (model.context_size, model.input_size) == (4, 28)
    assert model.memory_layers == [16, 18, 20, 22]
    assert model.memory_buffer_size == 50
    assert model.memory_activation_threshold == 0.3
    assert model.spatial_similarity_threshold == 0.7


def test_use_hybrid_model_false_builds_a_cdit():
    data = {**seed_dict(), "use_hybrid_model": False}
    with torch.device("meta"):
        model = build_model(data)
    assert type(model) is CDiT
    assert (model.depth, model.context_size, model.input_size) == (24, 4, 28)


def test_optional_memory_keys_and_defaults():
    config = HybridCDiTConfig.from_dict(
        {
            "model": "CDiT-B/2",
            "image_size": 128,
            "memory_top_k": 4,
            "retrieval": "pose",
            "memory_patch_size": 4,
        }
    )
    with torch.device("meta"):
        model = build_model(config)
    assert isinstance(model, HybridCDiT)
    assert model.context_size == 3  # the variant's default when the file has none
    assert model.memory_layers == [6, 8, 10]  # every second layer of the second half
    assert (model.memory_top_k, model.retrieval, model.memory_patch_size) == (4, "pose", 4)
    assert model.input_size == 16


def test_misspelt_memory_key_warns_with_the_closest_key():
    data = {**seed_dict(), "memory_layer": [1, 2]}
    with pytest.warns(
        UserWarning, match=r"'memory_layer' is ignored; did you mean 'memory_layers'"
    ):
        HybridCDiTConfig.from_dict(data)
    with pytest.warns(UserWarning, match="did you mean 'spatial_similarity_threshold'"):
        HybridCDiTConfig.from_dict({"spatial_threshold": 0.5})


def test_round_trip_through_a_dict(tmp_path):
    config = HybridCDiTConfig.from_yaml(SEED_YAML)
    assert HybridCDiTConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert HybridCDiTConfig.from_yaml(path) == config


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "CDiT-M/2", r"model must be one of .*got 'CDiT-M/2'"),
        ("context_size", 0, "context_size must be a positive integer, got 0"),
        ("image_size", 100, "image_size must be a multiple of 16.*got 100"),
        ("use_hybrid_model", "yes", "use_hybrid_model must be true or false, got 'yes'"),
        ("memory_buffer_size", -1, "memory_buffer_size must be a positive integer, got -1"),
        ("memory_layers", [16, 30], r"memory_layers must be layer indices in \[0, 23\]"),
        ("memory_layers", [16, 16], "memory_layers must not repeat a layer"),
        ("memory_layers", "16", "memory_layers must be a list of layer indices"),
        ("spatial_similarity_threshold", 1.5, r"spatial_similarity_threshold must be a number in"),
        ("memory_activation_threshold", -0.1, "memory_activation_threshold must be a number >="),
        ("retrieval", "nearest", "retrieval must be one of distance, fov, pose, got 'nearest'"),
        ("memory_patch_size", 3, "memory_patch_size must be a multiple of the patch size"),
        ("memory_retrieval_scale", 0, "memory_retrieval_scale must be > 0, got 0"),
        ("memory_retrieval_scale", -1.0, r"memory_retrieval_scale must be > 0, got -1\.0"),
        ("memory_retrieval_scale", float("nan"), "memory_retrieval_scale must be .*, got nan"),
        ("memory_retrieval_scale", float("inf"), "memory_retrieval_scale must be .*, got inf"),
        ("memory_retrieval_scale", "far", "memory_retrieval_scale must be .*, got 'far'"),
    ],
)
def test_invalid_settings_name_key_expected_and_received(key, value, message):
    with pytest.raises(ValueError, match=message):
        HybridCDiTConfig.from_dict({**seed_dict(), key: value})


def test_memory_retrieval_scale_defaults_and_round_trips(tmp_path):
    assert HybridCDiTConfig().memory_retrieval_scale == 10.0
    assert HybridCDiTConfig.from_yaml(SEED_YAML).memory_retrieval_scale == 10.0  # key absent
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**seed_dict(), "memory_retrieval_scale": 2.5}))
    config = HybridCDiTConfig.from_yaml(path)
    assert config.memory_retrieval_scale == 2.5
    assert config.to_dict()["memory_retrieval_scale"] == 2.5
    assert HybridCDiTConfig.from_dict(config.to_dict()) == config
    with torch.device("meta"):
        model = build_model(config)
    assert isinstance(model, HybridCDiT)
    assert model.memory_retrieval_scale == 2.5
    assert model.get_config()["memory_retrieval_scale"] == 2.5
    tiny = HybridCDiT(
        input_size=8, hidden_size=24, depth=2, num_heads=2, memory_retrieval_scale=2.5
    )
    loaded = HybridCDiT.from_pretrained(tiny.save_pretrained(tmp_path / "tiny"))
    assert isinstance(loaded, HybridCDiT)
    assert loaded.memory_retrieval_scale == 2.5
    assert loaded.get_config() == tiny.get_config()


def test_model_name_suggestion():
    with pytest.raises(ValueError, match="did you mean 'CDiT-L/2'"):
        HybridCDiTConfig(model="CDiT-L2")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        HybridCDiTConfig.from_yaml(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a YAML mapping"):
        HybridCDiTConfig.from_yaml(path)
    path = tmp_path / "bad.yaml"
    path.write_text("model: CDiT-L/2\nimage_size: 99\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: image_size must be"):
        HybridCDiTConfig.from_yaml(path)
