"""HybridCDiT: CDiT compatibility, function preservation, per-sample memory semantics."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from hybrid_cdit import (
    CDiT,
    CDiT_models,
    HybridCDiT,
    HybridCDiT_models,
    MemoryContext,
    create_model,
)
from hybrid_cdit.blocks import MemoryInputs
from hybrid_cdit.models import is_memory_key

from .hybrid_helpers import TINY, make_inputs, make_memory, randomise, replace, trained_like_hybrid
from .tolerances import NWM_TINY_ATOL, assert_close_to_recorded


def _memory_free(model: HybridCDiT, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


# ------------------------------------------------------------------ CDiT compatibility


def test_cdit_checkpoint_loads_with_only_memory_keys_missing(nwm_config, nwm_checkpoint):
    model = HybridCDiT(**nwm_config)
    result = model.load_state_dict(nwm_checkpoint["ema"], strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys
    assert all(is_memory_key(k) for k in result.missing_keys)
    assert set(result.missing_keys) == {k for k in model.state_dict() if is_memory_key(k)}
    assert not any(is_memory_key(k) for k in nwm_checkpoint["ema"])


@pytest.mark.parametrize("memory_patch_size", [None, 2, 4])
def test_function_preservation_with_full_active_memory(
    nwm_config, nwm_checkpoint, nwm_io, nwm_inputs, memory_patch_size
):
    model = HybridCDiT(**nwm_config, memory_patch_size=memory_patch_size).eval()
    model.load_state_dict(nwm_checkpoint["ema"], strict=False)
    memory = make_memory(n=3, k=8, cfg=nwm_config)
    assert bool(model.active_samples(memory).all())
    x, t, y, x_cond, rel_t = nwm_inputs
    with torch.no_grad():
        out = model(x, t, y, x_cond, rel_t, memory=memory)
    assert_close_to_recorded(out, nwm_io["out_ema"], NWM_TINY_ATOL)


def test_memory_disabled_is_a_cdit(nwm_config, nwm_checkpoint, nwm_io, nwm_inputs):
    model = HybridCDiT(**nwm_config, memory_enabled=False).eval()
    model.load_state_dict(nwm_checkpoint["ema"], strict=True)
    assert set(model.state_dict()) == set(CDiT(**nwm_config).state_dict())
    with torch.no_grad():
        out = model(*nwm_inputs, memory=make_memory(cfg=nwm_config))
    assert_close_to_recorded(out, nwm_io["out_ema"], NWM_TINY_ATOL)


def test_no_memory_and_no_pose_is_the_cdit():
    model = trained_like_hybrid()
    cdit = CDiT(**TINY).eval()
    cdit.load_state_dict({k: v for k, v in model.state_dict().items() if not is_memory_key(k)})
    inputs = make_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs), cdit(**inputs))


def test_default_memory_layers_follow_the_seed_table():
    with torch.device("meta"):
        layers = {
            name: create_model(name, input_size=28).memory_layers
            for name in ("HybridCDiT-XL/2", "HybridCDiT-L/2", "HybridCDiT-B/2", "HybridCDiT-S/2")
        }
    assert layers["HybridCDiT-XL/2"] == list(range(14, 27, 2))
    assert layers["HybridCDiT-L/2"] == list(range(12, 23, 2))
    assert layers["HybridCDiT-B/2"] == [6, 8, 10]
    assert layers["HybridCDiT-S/2"] == [6, 8, 10]


def test_memory_modules_exist_only_in_memory_layers():
    model = HybridCDiT(**{**TINY, "depth": 4}, memory_layers=[1, 3])
    with_memory = {
        int(k.split(".")[1])
        for k in model.state_dict()
        if k.startswith("blocks.") and is_memory_key(k)
    }
    assert with_memory == {1, 3}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"memory_layers": [0, 2]}, "memory_layers"),
        ({"memory_layers": [-1]}, "memory_layers"),
        ({"memory_layers": [1, 1]}, "memory_layers"),
        ({"memory_patch_size": 3}, "memory_patch_size"),
        ({"memory_patch_size": 16}, "memory_patch_size"),
        ({"memory_patch_size": 1}, "memory_patch_size"),
        ({"retrieval": "nearest"}, "retrieval"),
        ({"spatial_similarity_threshold": 1.5}, "spatial_similarity_threshold"),
        ({"memory_activation_threshold": -0.1}, "memory_activation_threshold"),
        ({"memory_top_k": 0}, "memory_top_k"),
    ],
)
def test_invalid_memory_settings_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        HybridCDiT(**TINY, **kwargs)


def test_constructor_arguments_are_attributes():
    model = HybridCDiT(
        **TINY,
        memory_top_k=5,
        memory_buffer_size=7,
        retrieval="pose",
        memory_activation_threshold=0.4,
        spatial_similarity_threshold=0.6,
        memory_retrieval_scale=2.5,
        memory_patch_size=4,
        memory_layers=[1],
    )
    config = model.get_config()
    for name, value in config.items():
        assert getattr(model, name) == value
    assert HybridCDiT(**config).get_config() == config


def test_seed_integration_snippet_runs_unchanged():
    config = {"model": "CDiT-S/2"}
    num_cond, latent_size = 2, 8
    model = HybridCDiT_models[config["model"].replace("CDiT", "HybridCDiT")](
        context_size=num_cond,
        input_size=latent_size,
        in_channels=4,
        memory_enabled=True,
        memory_buffer_size=10,
        memory_layers=[8, 10],
    ).eval()
    inputs = make_inputs(n=2, cfg={"in_channels": 4, "input_size": 8, "context_size": 2})
    cdit = CDiT_models[config["model"]](context_size=num_cond, input_size=latent_size).eval()
    randomise(cdit)  # adaLN-Zero: a fresh model outputs zeros
    model.load_state_dict(cdit.state_dict(), strict=False)
    with torch.no_grad():
        out = model(**inputs, current_pose=torch.zeros(2, 5), update_memory=True)
        expected = cdit(**inputs)
    # first call of a rollout: nothing in memory yet, so the hybrid is the CDiT
    assert out.shape == (2, 8, 8, 8) and expected.abs().max() > 0
    assert torch.equal(out, expected)
    assert model.memory_buffer is None and model.own_memory.pending_pose is not None


# ------------------------------------------------------------------ memory semantics


def test_different_memory_gives_different_output():
    model = trained_like_hybrid()
    inputs = make_inputs()
    with torch.no_grad():
        a = model(**inputs, memory=make_memory(seed=1))
        b = model(**inputs, memory=make_memory(seed=2))
        free = model(**inputs)
    for i in range(3):
        assert not torch.allclose(a[i], b[i])
        assert not torch.allclose(a[i], free[i])


def test_all_masked_sample_gets_exactly_memory_free_output():
    model = trained_like_hybrid()
    inputs = make_inputs()
    memory = make_memory()
    mask = memory.mask.clone()
    mask[1] = False
    with torch.no_grad():
        out = model(**inputs, memory=replace(memory, mask=mask))
    free = _memory_free(model, inputs)
    assert torch.equal(out[1], free[1])
    assert not torch.allclose(out[0], free[0])


def test_fully_masked_batch_gives_memory_free_output():
    model = trained_like_hybrid()
    inputs = make_inputs()
    memory = make_memory()
    with torch.no_grad():
        out = model(**inputs, memory=replace(memory, mask=torch.zeros_like(memory.mask)))
    assert torch.equal(out, _memory_free(model, inputs))


def test_sample_under_activation_threshold_is_memory_free():
    model = trained_like_hybrid()
    inputs = make_inputs()
    memory = make_memory()
    scores = memory.scores.clone()
    scores[2] = 0.1
    with torch.no_grad():
        out = model(**inputs, memory=replace(memory, scores=scores))
    free = _memory_free(model, inputs)
    assert torch.equal(out[2], free[2])
    assert not torch.allclose(out[0], free[0])


def test_activation_threshold_above_one_turns_memory_off():
    model = trained_like_hybrid(memory_activation_threshold=1.01)
    inputs = make_inputs()
    with torch.no_grad():
        out = model(**inputs, memory=make_memory())
    assert torch.equal(out, _memory_free(model, inputs))


def test_masked_frame_content_changes_nothing():
    model = trained_like_hybrid()
    inputs = make_inputs()
    memory = make_memory()
    mask = memory.mask.clone()
    mask[:, 1] = False
    frames, poses = memory.frames.clone(), memory.poses.clone()
    frames[:, 1] = torch.randn_like(frames[:, 1]) * 100
    poses[:, 1] = 42.0
    with torch.no_grad():
        a = model(**inputs, memory=replace(memory, mask=mask))
        b = model(**inputs, memory=replace(memory, mask=mask, frames=frames, poses=poses))
    assert torch.equal(a, b)


def test_samples_are_isolated():
    model = trained_like_hybrid()
    inputs = make_inputs()
    memory = make_memory()
    frames, poses = memory.frames.clone(), memory.poses.clone()
    frames[2] = torch.randn_like(frames[2])
    poses[2] = poses[2] + 1.0
    with torch.no_grad():
        a = model(**inputs, memory=memory)
        b = model(**inputs, memory=replace(memory, frames=frames, poses=poses))
    assert torch.equal(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2])


def test_backward_reaches_every_memory_parameter():
    model = trained_like_hybrid().train()
    out = model(**make_inputs(), memory=make_memory())
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if is_memory_key(name):
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name


def test_memory_parameters_take_part_in_graph_without_memory():
    model = trained_like_hybrid().train()
    model(**make_inputs()).mean().backward()
    assert all(p.grad is not None for p in model.memory_parameters())


def test_wrong_memory_shapes_raise():
    model = trained_like_hybrid()
    inputs = make_inputs()
    with pytest.raises(ValueError, match=r"memory\.frames"):
        model(**inputs, memory=make_memory(n=2))
    with pytest.raises(ValueError, match="current_pose"):
        model(**inputs, current_pose=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="current_pose"):
        model(**inputs, current_pose=torch.full((3, 3), float("nan")))


# ------------------------------------------------------------------ key/value cache


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    """Bit-equal, or with ray alignment equal up to rounding: its float attention bias takes
    another SDPA kernel when gradients are on."""
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("alignment", [False, True])
def test_cache_computes_keys_values_once_per_context_and_layer(alignment):
    model = trained_like_hybrid(memory_ray_alignment=alignment)
    inputs = make_inputs()
    memory = make_memory()
    layers = [b.memory_attn for b in model.hybrid_blocks() if b.enable_memory]
    with torch.no_grad():
        first = model(**inputs, memory=memory)
        for step in range(5):
            later = {**inputs, "t": inputs["t"] - step}
            again = model(**later, memory=memory)
        assert [a.kv_computations for a in layers] == [1] * len(layers)
        model(**inputs, memory=make_memory(seed=5))
    assert [a.kv_computations for a in layers] == [2] * len(layers)
    uncached = model(**inputs, memory=memory)  # gradients on: no cache
    assert [a.kv_computations for a in layers] == [3] * len(layers)
    _same(first, uncached.detach(), not alignment)
    _same(again, model(**later, memory=memory).detach(), not alignment)  # cached = recomputed
    assert not torch.allclose(again, first)


@pytest.mark.parametrize("alignment", [False, True])
def test_cache_is_per_model_and_tracks_weight_changes(alignment):
    a = trained_like_hybrid(memory_ray_alignment=alignment)
    b = trained_like_hybrid(memory_ray_alignment=alignment)
    randomise(b, memory_only=True)
    inputs, memory = make_inputs(), make_memory()
    with torch.no_grad():
        out_a = a(**inputs, memory=memory)
        out_b = b(**inputs, memory=memory)
        assert not torch.allclose(out_a, out_b)
        assert torch.equal(b(**inputs, memory=memory), out_b)
        for p in a.memory_parameters():
            p.mul_(1.5)
        changed = a(**inputs, memory=memory)
    with torch.enable_grad():
        fresh = a(**inputs, memory=memory).detach()
    _same(changed, fresh, not alignment)


# ------------------------------------------------------------------ own buffer


def test_update_memory_and_retrieval_by_pose():
    model = trained_like_hybrid(memory_top_k=2)
    inputs = make_inputs(n=2)
    frame = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        free = model(**inputs, current_pose=torch.zeros(2, 3))
        model.update_memory(frame, torch.zeros(2, 3))
        near = model(**inputs, current_pose=torch.zeros(2, 3))
        far = model(**inputs, current_pose=torch.tensor([[500.0, 0, 0], [0, 0, 0]]))
    assert torch.equal(free, model.forward(**inputs))
    assert not torch.allclose(near, free)
    assert torch.equal(far[0], free[0])  # nothing within the similarity threshold
    assert torch.equal(far[1], near[1])
    model.reset_memory()
    assert model.memory_buffer is None


def test_update_memory_flag_writes_the_newest_context_frame_at_the_previous_pose():
    """Each sample's buffer holds exactly ``x_cond[:, -1]`` of the first call of every later
    frame, stored at the pose of the frame before, and only where that sample's pose changed;
    no noised input ``x`` is ever stored."""
    model = trained_like_hybrid()
    n, frames, steps = 3, 4, 3
    g = torch.Generator().manual_seed(7)
    poses = [
        torch.tensor([[10.0 * f + i, float(i), 0.1 * f] for i in range(n)]) for f in range(frames)
    ]
    poses[2][2] = poses[1][2]  # sample 2 stays put between frames 1 and 2: nothing to write
    contexts = [torch.randn(n, 2, 4, 8, 8, generator=g) for _ in range(frames)]
    noised = []
    with torch.no_grad():
        for pose, x_cond in zip(poses, contexts, strict=True):
            for _ in range(steps):  # denoising steps of one frame
                inputs = {**make_inputs(n=n, seed=len(noised)), "x_cond": x_cond}
                noised.append(inputs["x"])
                model(**inputs, current_pose=pose, update_memory=True)
    assert model.memory_buffer is not None
    state = model.memory_buffer.state_dict()
    for i in range(n):
        expected = [
            (poses[f - 1][i], contexts[f][i, -1])
            for f in range(1, frames)
            if not torch.equal(poses[f][i], poses[f - 1][i])
        ]
        valid = state["valid"][i]
        stored = list(zip(state["poses"][i][valid], state["frames"][i][valid], strict=True))
        assert len(stored) == len(expected) == (2 if i == 2 else 3)
        for pose, frame in expected:
            matches = [f for p, f in stored if torch.equal(p, pose)]
            assert len(matches) == 1 and torch.equal(matches[0], frame)
        for _, frame in stored:
            assert not any(torch.equal(frame, x[i]) for x in noised)


def test_update_memory_flag_is_ignored_in_training():
    model = trained_like_hybrid().train()
    with pytest.warns(UserWarning, match="training"):
        model(**make_inputs(), current_pose=torch.zeros(3, 3), update_memory=True)
    assert model.memory_buffer is None


def test_update_memory_validates_before_writing():
    model = trained_like_hybrid()
    with pytest.raises(ValueError, match="frame_latent"):
        model.update_memory(torch.randn(2, 3, 8, 8), torch.zeros(2, 3))
    assert model.memory_buffer is None
    model.update_memory(torch.randn(2, 4, 8, 8), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch size"):
        model.update_memory(torch.randn(3, 4, 8, 8), torch.zeros(3, 3))
    assert model.memory_buffer is not None and model.memory_buffer.counts.tolist() == [1, 1]


def test_bf16_autocast():
    model = trained_like_hybrid()
    inputs, memory = make_inputs(), make_memory()
    with torch.no_grad():
        reference, reference_cdit = model(**inputs, memory=memory), model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, out_cdit = model(**inputs, memory=memory), model(**inputs)
    assert out.dtype == torch.bfloat16

    def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b).norm() / b.norm())

    # bf16 keeps ~3 significant digits; the memory path adds no error of its own
    assert relative_error(out, reference) < 0.15
    assert relative_error(out, reference) < 1.5 * relative_error(out_cdit, reference_cdit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bf16 = trained_like_hybrid().to(torch.bfloat16)
        with torch.no_grad():
            out = bf16(
                **{
                    k: v.to(torch.bfloat16) if v.is_floating_point() else v
                    for k, v in inputs.items()
                },
                memory=memory,
            )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_memory_dim_default_and_validation():
    with torch.device("meta"):
        assert create_model("HybridCDiT-B/2", input_size=28).memory_dim == 384
        assert create_model("HybridCDiT-XL/2", input_size=28).memory_dim == 576
        assert create_model("HybridCDiT-S/2", input_size=28).memory_dim == 384
    model = HybridCDiT(**TINY, memory_dim=8)
    attn = next(b.memory_attn for b in model.hybrid_blocks() if b.enable_memory)
    assert attn.kv_proj.weight.shape == (16, 48)
    assert attn.q_proj.weight.shape == (8, 4 * 48) and attn.out_proj.weight.shape == (4 * 48, 8)
    assert HybridCDiT(**TINY).memory_dim == 48
    with pytest.raises(ValueError, match="memory_dim"):
        HybridCDiT(**TINY, memory_dim=6)


def test_narrow_memory_attention_keeps_function_preservation(
    nwm_config, nwm_checkpoint, nwm_io, nwm_inputs
):
    model = HybridCDiT(**nwm_config, memory_dim=24).eval()
    model.load_state_dict(nwm_checkpoint["ema"], strict=False)
    with torch.no_grad():
        out = model(*nwm_inputs, memory=make_memory(n=3, cfg=nwm_config))
    assert_close_to_recorded(out, nwm_io["out_ema"], NWM_TINY_ATOL)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("memory_top_k", 1),
        ("retrieval", "pose"),
        ("spatial_similarity_threshold", 0.99),
        ("memory_retrieval_scale", 1.0),
    ],
)
def test_own_retrieval_follows_setting_changes(setting, value):
    """Changing a retrieval setting on the model takes effect at the next forward, for the same
    buffer and pose: the result equals a retrieval made with the new settings."""
    model = trained_like_hybrid(memory_top_k=3)
    inputs = make_inputs(n=2)
    g = torch.Generator().manual_seed(3)
    # three frames 0, 1 and 2 m from the query, facing away from it (yaw pi)
    for distance in (0.0, 1.0, 2.0):
        pose = torch.tensor([[distance, 0.0, torch.pi]] * 2)
        model.update_memory(torch.randn(2, 4, 8, 8, generator=g), pose)
    query = torch.zeros(2, 3)
    with torch.no_grad():
        before = model(**inputs, current_pose=query)
        setattr(model, setting, value)
        after = model(**inputs, current_pose=query)
        assert model.memory_buffer is not None
        fresh = model.memory_buffer.retrieve(
            query,
            model.memory_top_k,
            strategy=model.retrieval,
            threshold=model.spatial_similarity_threshold,
            scale=model.memory_retrieval_scale,
        )
        expected = model(**inputs, memory=fresh)
    assert not torch.allclose(before, expected)
    assert torch.equal(after, expected)


def _own_contexts(model: HybridCDiT, monkeypatch: pytest.MonkeyPatch) -> list[MemoryContext]:
    """The contexts the model's forwards hand to ``memory_inputs``, in call order."""
    seen: list[MemoryContext] = []
    original = model.memory_inputs

    def spy(memory: MemoryContext, x: torch.Tensor) -> MemoryInputs | None:
        seen.append(memory)
        return original(memory, x)

    monkeypatch.setattr(model, "memory_inputs", spy)
    return seen


# frames at distances 0.25, 3 and 5 from the query (0, 0), headings arbitrary
SCALE_POSES = [(0.15, 0.2, 1.0), (3.0, 0.0, -2.0), (3.0, 4.0, 0.5)]


@pytest.mark.parametrize("scale", [10.0, 1.0])
def test_own_retrieval_scores_use_memory_retrieval_scale(scale, monkeypatch):
    """Every retrieved score is exp(-d / memory_retrieval_scale); at threshold 0.7 the frame
    3 away is kept at scale 10 (score 0.74) and masked at scale 1 (score 0.05)."""
    model = HybridCDiT(
        **TINY,
        retrieval="distance",
        memory_top_k=3,
        spatial_similarity_threshold=0.7,
        memory_retrieval_scale=scale,
    ).eval()
    g = torch.Generator().manual_seed(0)
    for pose in SCALE_POSES:
        model.update_memory(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([pose]))
    seen = _own_contexts(model, monkeypatch)
    with torch.no_grad():
        model(**make_inputs(n=1), current_pose=torch.zeros(1, 3))
    (memory,) = seen
    kept = {}
    for slot in range(3):
        x, y = (float(v) for v in memory.poses[0, slot, :2])
        d = math.hypot(x, y)
        expected = math.exp(-d / scale)
        assert float(memory.scores[0, slot]) == pytest.approx(expected, rel=1e-6)
        assert bool(memory.mask[0, slot]) == (expected >= 0.7)
        kept[round(d, 6)] = bool(memory.mask[0, slot])
    assert kept == {0.25: True, 3.0: scale == 10.0, 5.0: False}


def test_changing_memory_retrieval_scale_is_not_served_from_the_cache(monkeypatch):
    model = HybridCDiT(**TINY, memory_top_k=3).eval()
    g = torch.Generator().manual_seed(0)
    for pose in SCALE_POSES:
        model.update_memory(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([pose]))
    seen = _own_contexts(model, monkeypatch)
    inputs, query = make_inputs(n=1), torch.zeros(1, 3)
    with torch.no_grad():
        model(**inputs, current_pose=query)
        model(**inputs, current_pose=query)  # nothing changed: the same context
        model.memory_retrieval_scale = 1.0
        model(**inputs, current_pose=query)
    first, again, rescaled = seen
    assert again is first and rescaled is not first
    assert int(first.mask.sum()) == 2 and int(rescaled.mask.sum()) == 1
    torch.testing.assert_close(rescaled.scores[0, 0], torch.tensor(math.exp(-0.25)))


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "far"])
def test_invalid_memory_retrieval_scale_raises(value):
    with pytest.raises(ValueError, match=rf"memory_retrieval_scale .*got {re.escape(repr(value))}"):
        HybridCDiT(**TINY, memory_retrieval_scale=value)


def test_own_retrieval_is_reused_while_nothing_changes():
    model = trained_like_hybrid()
    model.update_memory(torch.randn(2, 4, 8, 8), torch.zeros(2, 3))
    layers = [b.memory_attn for b in model.hybrid_blocks() if b.enable_memory]
    inputs = make_inputs(n=2)
    with torch.no_grad():
        for step in range(3):
            model(**{**inputs, "t": inputs["t"] - step}, current_pose=torch.zeros(2, 3))
    assert [a.kv_computations for a in layers] == [1] * len(layers)


@pytest.mark.parametrize("shape", [(3, 3), (2, 5)], ids=["batch_size", "pose_width"])
def test_update_memory_flag_refuses_a_new_pose_shape_before_any_change(shape):
    """A pending frame is never dropped: a pose of another shape (batch size or width) is
    refused before anything changes, and the pending write still happens afterwards."""
    model = trained_like_hybrid()
    first, second = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0]] * 2)
    x_cond = torch.randn(2, 2, 4, 8, 8)
    with torch.no_grad():
        model(**make_inputs(n=2), current_pose=first, update_memory=True)
        inputs = make_inputs(n=shape[0])
        with pytest.raises(ValueError, match=rf"current_pose.*\(2, 3\).*reset_memory.*{shape}"):
            model(**inputs, current_pose=torch.ones(shape), update_memory=True)
        assert model.memory_buffer is None
        assert model.own_memory.pending_pose is not None and torch.equal(
            model.own_memory.pending_pose, first
        )
        model(**{**make_inputs(n=2), "x_cond": x_cond}, current_pose=second, update_memory=True)
    buffer = model.memory_buffer
    assert buffer is not None and buffer.counts.tolist() == [1, 1]
    model.reset_memory()
    with torch.no_grad():  # a new rollout may use another shape
        model(**inputs, current_pose=torch.ones(shape), update_memory=True)


def test_update_memory_flag_checks_the_buffer_shape_before_any_change():
    model = trained_like_hybrid()
    model.update_memory(torch.randn(2, 4, 8, 8), torch.zeros(2, 3))
    with torch.no_grad(), pytest.raises(ValueError, match=r"current_pose.*\(2, 3\).*\(2, 5\)"):
        model(**make_inputs(n=2), current_pose=torch.zeros(2, 5), update_memory=True)
    assert model.own_memory.pending_pose is None


def _mean_of_fine_cells(fine: torch.Tensor, side: int, r: int) -> torch.Tensor:
    """``(..., side*side, D)`` row-major fine tokens -> ``(..., (side/r)**2, D)``: each coarse
    cell the mean of the ``r x r`` fine cells it covers, with explicit loops."""
    coarse = []
    for i in range(side // r):
        for j in range(side // r):
            rows = [(r * i + a) * side + r * j + b for a in range(r) for b in range(r)]
            cells = [fine[..., row, :] for row in rows]
            coarse.append(torch.stack(cells).mean(0))
    return torch.stack(coarse, dim=-2)


def _assert_documented_initial_memory_state(model: HybridCDiT) -> None:
    r, side = model.memory_ratio, model.input_size // model.patch_size
    latent = torch.randn(2, model.in_channels, model.input_size, model.input_size)
    with torch.no_grad():
        fine = model.x_embedder(latent)  # (2, side*side, D), the CDiT's patch embedding
        embedder = model.memory_embedder if r > 1 else model.x_embedder
        torch.testing.assert_close(
            embedder(latent), _mean_of_fine_cells(fine, side, r), atol=1e-5, rtol=1e-5
        )
        target_pos = model.pos_embed[model.context_size]  # the target frame's
        torch.testing.assert_close(
            model.memory_pos_embed, _mean_of_fine_cells(target_pos, side, r), atol=1e-6, rtol=0
        )
    for block in model.hybrid_blocks():
        if block.enable_memory:
            last = block.memory_adaLN_modulation[-1]
            assert not last.weight.any() and not last.bias.any()  # gates (and all) start at 0


@pytest.mark.parametrize("memory_patch_size", [2, 4])
def test_reset_memory_parameters_gives_the_documented_initial_state(memory_patch_size):
    """Memory patch embedding = mean of the CDiT patch embeddings it covers; memory position
    embedding = the target frame's position embedding pooled to the memory grid; zero gates."""
    torch.manual_seed(0)
    model = HybridCDiT(**TINY, memory_patch_size=memory_patch_size)
    randomise(model)
    model.reset_memory_parameters()
    _assert_documented_initial_memory_state(model)


def test_loading_a_cdit_checkpoint_derives_the_memory_state_from_its_weights(
    nwm_config, nwm_checkpoint
):
    torch.manual_seed(0)
    model = HybridCDiT(**nwm_config, memory_patch_size=4)
    randomise(model)
    model.load_state_dict(nwm_checkpoint["ema"], strict=False)
    loaded = nwm_checkpoint["ema"]["x_embedder.proj.weight"]
    assert torch.equal(model.x_embedder.proj.weight, loaded)
    _assert_documented_initial_memory_state(model)
