"""HybridCDiT's memory age and per-token ray embeddings: function preservation, compatibility
with files of version 0.1.0.dev0, semantics, configuration."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from hybrid_cdit import (
    HybridCDiT,
    HybridCDiTConfig,
    MemoryContext,
    build_model,
    load_cdit_checkpoint,
)
from hybrid_cdit.checkpoint import infer_memory_config

from .hybrid_helpers import TINY, make_inputs, make_memory
from .tolerances import HYBRID_0_1_0_ATOL as OLD_ATOL
from .tolerances import (
    NWM_TINY_ATOL,
    assert_close_to_recorded,
    assert_float32_error_within,
)

DATA = Path(__file__).parent / "data"
OLD_DIR = DATA / "hybrid_0_1_0"
OLD_NWM = DATA / "hybrid_0_1_0.pth.tar"
OPTIONS: list[dict[str, Any]] = [
    {"memory_time_embedding": True},
    {"memory_pose_encoding": "rays"},
    {"memory_time_embedding": True, "memory_pose_encoding": "rays", "camera_fov": 1.0},
    {"memory_pose_encoding": "frame", "memory_ray_alignment": False},  # the earlier defaults
]


def _with_time(memory: MemoryContext, seed: int = 0) -> MemoryContext:
    g = torch.Generator().manual_seed(seed)
    n, k = memory.mask.shape
    steps = torch.randint(0, 50, (n, k), generator=g)
    return replace(memory, steps=steps, query_step=torch.full((n,), 60))


def _randomise_new(model: HybridCDiT) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("memory_time_embedder", "memory_ray_embedder")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _old_io() -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...], MemoryContext]:
    io = load_file(DATA / "hybrid_0_1_0_io.safetensors")
    inputs = tuple(io[k] for k in ("x", "t", "y", "x_cond", "rel_t"))
    n, k = io["mask"].shape
    memory = MemoryContext(
        io["frames"],
        io["poses"],
        io["scores"],
        io["mask"],
        io["query_pose"],
        steps=torch.arange(n * k).reshape(n, k),
        query_step=torch.tensor([20, 30, 40]),
    )
    return io, inputs, memory


def _old_config() -> dict[str, Any]:
    config = json.loads((OLD_DIR / "config.json").read_text())
    config.pop("model_class")
    config.pop("hybrid_cdit_version", None)
    return dict(config)


# ------------------------------------------------------------- function preservation


@pytest.mark.parametrize("options", OPTIONS)
def test_cdit_checkpoint_gives_the_cdit_output_with_each_option(
    nwm_config, nwm_checkpoint, nwm_io, nwm_inputs, options
):
    model = HybridCDiT(**nwm_config, **options).eval()
    report = model.load_state_dict(nwm_checkpoint["ema"], strict=False)
    assert any(k.startswith("memory_") for k in report.missing_keys)
    memory = _with_time(make_memory(n=3, k=8, cfg=nwm_config, pose_dim=5))
    with torch.no_grad():
        out = model(*nwm_inputs, memory=memory)
    assert_close_to_recorded(out, nwm_io["out_ema"], NWM_TINY_ATOL)


@pytest.mark.parametrize("options", OPTIONS)
def test_new_embeddings_start_at_exactly_zero(options):
    torch.manual_seed(0)
    base = HybridCDiT(**TINY, memory_pose_encoding="frame", memory_ray_alignment=False).eval()
    model = HybridCDiT(**TINY, **{"memory_ray_alignment": True, **options}).eval()
    model.load_state_dict(base.state_dict(), strict=False)
    memory = _with_time(make_memory(pose_dim=5))
    with torch.no_grad():
        assert torch.equal(base.memory_tokens(memory)[0], model.memory_tokens(memory)[0])
    names = [n for n, _ in model.named_parameters() if n not in base.state_dict()]
    adds = model.memory_time_embedding or model.memory_pose_encoding == "rays"
    assert bool(names) == (adds or model.memory_ray_alignment)
    assert all("memory" in n for n in names)


# ---------------------------------------------------- files written by 0.1.0.dev0


def test_previous_version_directory_loads_with_its_old_outputs():
    io, inputs, memory = _old_io()
    model = HybridCDiT.from_pretrained(OLD_DIR).eval()
    # the options it predates take today's defaults; their new parameters start as no-ops
    assert not model.memory_time_embedding and model.memory_pose_encoding == "rays"
    assert model.memory_ray_alignment
    assert "memory_retrieval_scale" not in _old_config()
    assert model.memory_retrieval_scale == 10.0  # the key it predates takes its default
    with torch.no_grad():
        assert_close_to_recorded(model(*inputs, memory=memory), io["out_memory"], OLD_ATOL)
        assert_close_to_recorded(model(*inputs), io["out_plain"], OLD_ATOL)


def test_previous_version_directory_with_the_options_turned_on(tmp_path):
    io, inputs, memory = _old_io()
    target = tmp_path / "turned_on"
    shutil.copytree(OLD_DIR, target)
    config = json.loads((target / "config.json").read_text())
    config.update(
        memory_time_embedding=True,
        memory_pose_encoding="rays",
        camera_fov=1.1,
        memory_ray_alignment=True,
    )
    (target / "config.json").write_text(json.dumps(config))
    model = HybridCDiT.from_pretrained(target).eval()
    assert model.memory_time_embedding and model.memory_pose_encoding == "rays"
    assert model.memory_ray_alignment
    with torch.no_grad():
        assert_close_to_recorded(model(*inputs, memory=memory), io["out_memory"], OLD_ATOL)
    # The same weights loaded into a model built by hand.
    built = HybridCDiT(**_old_config(), memory_time_embedding=True, memory_pose_encoding="rays")
    report = load_cdit_checkpoint(built.eval(), OLD_DIR / "model.safetensors")
    assert report.initialized and all("memory" in k for k in report.initialized)
    with torch.no_grad():
        assert_close_to_recorded(built(*inputs, memory=memory), io["out_memory"], OLD_ATOL)


def test_previous_version_float32_error_within_the_recorded_tolerance():
    _, inputs, memory = _old_io()
    model = HybridCDiT.from_pretrained(OLD_DIR).eval()
    wide = [v.double() if v.is_floating_point() else v for v in inputs]
    wide_memory = replace(memory.to(None, torch.float64), steps=memory.steps)
    wide_memory = replace(wide_memory, query_step=memory.query_step)
    with torch.no_grad():
        out, plain = model(*inputs, memory=memory), model(*inputs)
        model.double()
        exact, exact_plain = model(*wide, memory=wide_memory), model(*wide)
    assert_float32_error_within(out, exact, OLD_ATOL, "0.1.0.dev0 hybrid with memory")
    assert_float32_error_within(plain, exact_plain, OLD_ATOL, "0.1.0.dev0 hybrid without memory")


@pytest.mark.parametrize("options", [{}, *OPTIONS])
def test_previous_version_train_checkpoint_loads_with_its_old_outputs(options):
    io, inputs, memory = _old_io()
    model = HybridCDiT.from_cdit_checkpoint(OLD_NWM, num_heads=2, **options).eval()
    assert model.memory_layers == [1] and model.memory_patch_size == 4
    with torch.no_grad():
        assert_close_to_recorded(model(*inputs, memory=memory), io["out_memory"], OLD_ATOL)
        assert_close_to_recorded(model(*inputs), io["out_plain"], OLD_ATOL)


# ------------------------------------------------------------------------- semantics


def _trained(**options: Any) -> HybridCDiT:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY, **options).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_time_embedding_is_used_only_when_both_steps_are_given():
    model = _trained(memory_time_embedding=True)
    inputs, memory = make_inputs(), make_memory()
    timed = _with_time(memory)
    with torch.no_grad():
        plain = model(**inputs, memory=memory)
        steps_only = model(**inputs, memory=replace(memory, steps=timed.steps))
        query_only = model(**inputs, memory=replace(memory, query_step=timed.query_step))
        with_time = model(**inputs, memory=timed)
        older = model(**inputs, memory=replace(timed, query_step=timed.query_step + 100))
    assert torch.equal(steps_only, plain) and torch.equal(query_only, plain)
    assert (with_time - plain).abs().amax() > 1e-3
    assert (older - with_time).abs().amax() > 1e-3
    # Only the age matters, not the absolute step.
    shifted = replace(timed, steps=timed.steps + 7, query_step=timed.query_step + 7)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, memory=shifted), with_time)


def test_model_without_time_embedding_ignores_steps():
    model = _trained()
    inputs, memory = make_inputs(), make_memory()
    with torch.no_grad():
        assert torch.equal(
            model(**inputs, memory=memory), model(**inputs, memory=_with_time(memory))
        )


def test_masked_slots_age_changes_nothing():
    model = _trained(memory_time_embedding=True)
    inputs, memory = make_inputs(), _with_time(make_memory())
    mask = memory.mask.clone()
    mask[:, -1] = False
    masked = replace(memory, mask=mask)
    steps = memory.steps.clone()
    steps[:, -1] = -1000
    with torch.no_grad():
        torch.testing.assert_close(
            model(**inputs, memory=replace(masked, steps=steps)), model(**inputs, memory=masked)
        )


def test_rays_make_tokens_depend_on_where_each_patch_looks():
    model = _trained(memory_pose_encoding="rays")
    memory = make_memory(pose_dim=5)
    frame_only = _trained(memory_pose_encoding="frame")
    with torch.no_grad():
        tokens = model.memory_tokens(memory)[0]
        turned = memory.poses.clone()
        turned[..., 4] += 0.5
        changed = model.memory_tokens(replace(memory, poses=turned))[0]
        wide = _trained(memory_pose_encoding="rays", camera_fov=2.0)
        other_fov = wide.memory_tokens(memory)[0]
        assert not torch.allclose(tokens, frame_only.memory_tokens(memory)[0])
    assert (changed - tokens).abs().amax() > 1e-3
    assert (other_fov - tokens).abs().amax() > 1e-3


@pytest.mark.parametrize("options", OPTIONS)
def test_samples_stay_isolated_with_the_options(options):
    model = _trained(**options)
    inputs, memory = make_inputs(), _with_time(make_memory(pose_dim=5))
    poses = memory.poses.clone()
    poses[1] += 0.7
    steps = memory.steps.clone()
    steps[1] += 3
    other = replace(memory, poses=poses, steps=steps)
    with torch.no_grad():
        a, b = model(**inputs, memory=memory), model(**inputs, memory=other)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert (a[1] - b[1]).abs().amax() > 1e-4


def test_every_new_parameter_gets_a_gradient_with_or_without_steps():
    model = _trained(memory_time_embedding=True, memory_pose_encoding="rays").train()
    for memory in (_with_time(make_memory()), make_memory()):
        model.zero_grad()
        model(**make_inputs(), memory=memory).square().mean().backward()
        for name, p in model.named_parameters():
            if name.startswith(("memory_time_embedder", "memory_ray_embedder")):
                assert p.grad is not None, name


def test_own_buffer_gives_ages():
    model = _trained(memory_time_embedding=True)
    frames = torch.randn(3, 4, 8, 8)
    for i in range(3):
        model.update_memory(frames + i, torch.full((3, 3), 0.1 * i))
    context = model.memory_buffer.retrieve(
        torch.zeros(3, 3), model.memory_top_k, threshold=model.spatial_similarity_threshold
    )
    torch.testing.assert_close(context.query_step, torch.full((3,), 3))
    inputs = make_inputs()
    with torch.no_grad():
        own = model(**inputs, current_pose=torch.zeros(3, 3))
        plain = model(**inputs, memory=replace(context, steps=None, query_step=None))
        timed = model(**inputs, memory=context)
    torch.testing.assert_close(own, timed)
    assert (own - plain).abs().amax() > 1e-4


# ----------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"memory_time_embedding": 1}, "memory_time_embedding"),
        ({"memory_pose_encoding": "plucker"}, "memory_pose_encoding"),
        ({"camera_fov": 0.0}, "camera_fov"),
        ({"camera_fov": math.pi}, "camera_fov"),
        ({"camera_fov": "wide"}, "camera_fov"),
        ({"memory_ray_alignment": "yes"}, "memory_ray_alignment"),
    ],
)
def test_invalid_options_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        HybridCDiT(**TINY, **kwargs)
    config = {"model": "CDiT-S/2", "image_size": 64, **kwargs}
    with pytest.raises(ValueError, match=needle):
        HybridCDiTConfig.from_dict(config)


def test_options_round_trip_through_config_and_pretrained(tmp_path):
    model = _trained(
        memory_time_embedding=True,
        memory_pose_encoding="rays",
        camera_fov=1.25,
        memory_ray_alignment=True,
    )
    config = model.get_config()
    assert config["memory_time_embedding"] is True and config["memory_ray_alignment"] is True
    assert config["memory_pose_encoding"] == "rays" and config["camera_fov"] == 1.25
    loaded = HybridCDiT.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    memory, inputs = _with_time(make_memory(pose_dim=5)), make_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, memory=memory), model(**inputs, memory=memory))
    yaml_config = HybridCDiTConfig.from_dict(
        {
            "model": "CDiT-S/2",
            "image_size": 64,
            "memory_time_embedding": True,
            "memory_pose_encoding": "rays",
            "camera_fov": 1.25,
            "memory_ray_alignment": True,
        }
    )
    built = build_model(yaml_config)
    assert isinstance(built, HybridCDiT)
    assert built.memory_time_embedding and built.memory_pose_encoding == "rays"
    assert built.memory_ray_alignment
    assert built.camera_fov == 1.25
    assert HybridCDiTConfig.from_dict(yaml_config.to_dict()) == yaml_config
    defaults = HybridCDiTConfig()
    assert not defaults.memory_time_embedding and defaults.memory_pose_encoding == "rays"
    assert defaults.memory_ray_alignment


def test_memory_options_are_inferred_from_a_state_dict():
    for options in ({}, *OPTIONS):
        model = HybridCDiT(**TINY, **options)
        inferred = infer_memory_config(model.state_dict())
        assert inferred.get("memory_time_embedding", False) == model.memory_time_embedding
        assert inferred.get("memory_pose_encoding", "frame") == model.memory_pose_encoding
        assert inferred.get("memory_ray_alignment", False) == model.memory_ray_alignment
        rebuilt = HybridCDiT.from_cdit_checkpoint(model.state_dict(), num_heads=4)
        assert rebuilt.memory_time_embedding == model.memory_time_embedding
        assert rebuilt.memory_pose_encoding == model.memory_pose_encoding
        assert rebuilt.memory_ray_alignment == model.memory_ray_alignment
