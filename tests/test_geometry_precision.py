"""Memory geometry stays float32 whatever the model's dtype: moving the whole world changes a
half-precision model's output no more than a float32 model's.

Poses lie on a 1/8 grid and shifts are 1e2, 1e3 and 1e4: ``p + shift`` needs at most 17
significant bits, so it is exact in float32 and float32 geometry sees the same offsets between
poses at every shift. The tolerance of each half-precision comparison is therefore the float32
model's own change under the same shift, measured in the test (0 on this grid: relative poses,
rays and ray distances are computed from differences of poses, which are exact). In bfloat16,
by contrast, positions near 1e3 are multiples of 4, and every relative x/y rounds away.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hybrid_cdit import HybridCDiT, MemoryContext

from .hybrid_helpers import TINY, make_inputs, randomise, replace

SHIFTS = [1e2, 1e3, 1e4]


def _model(dtype: torch.dtype, **options: Any) -> HybridCDiT:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY, **options).eval()
    randomise(model)
    return model.to(dtype)


def _grid_memory(pose_dim: int, n: int = 3, k: int = 4) -> MemoryContext:
    g = torch.Generator().manual_seed(5)
    poses = torch.zeros(n, k, pose_dim)
    poses[..., :2] = torch.randint(-16, 17, (n, k, 2), generator=g) / 8.0  # within 2 units
    poses[..., -1] = torch.randint(-12, 13, (n, k), generator=g) / 4.0  # yaw in radians
    query = torch.zeros(n, pose_dim)
    query[:, :2] = torch.tensor([[0.125, -0.25], [0.0, 0.5], [-0.375, 0.0]])
    query[:, -1] = torch.tensor([0.5, -1.0, 2.0])
    return MemoryContext(
        frames=torch.randn(n, k, 4, 8, 8, generator=g),
        poses=poses,
        scores=torch.full((n, k), 0.9),
        mask=torch.ones(n, k, dtype=torch.bool),
        query_pose=query,
    )


def _shifted(memory: MemoryContext, shift: float) -> MemoryContext:
    poses, query = memory.poses.clone(), memory.query_pose.clone()
    poses[..., :2] += shift
    query[:, :2] += shift
    assert torch.equal(poses[..., :2] - shift, memory.poses[..., :2])  # exact in their dtype
    return replace(memory, poses=poses, query_pose=query)


def _inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if k in ("x", "x_cond") else v for k, v in make_inputs(n=3).items()}


def _run(model: HybridCDiT, memory: MemoryContext | None, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs(dtype), memory=memory).float()


def _change(model: HybridCDiT, memory: MemoryContext, shift: float, dtype: torch.dtype) -> float:
    base = _run(model, memory, dtype)
    return float((_run(model, _shifted(memory, shift), dtype) - base).abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pose_dim", [3, 5])
def test_half_precision_model_is_as_translation_invariant_as_float32(dtype, pose_dim):
    memory = _grid_memory(pose_dim)
    reference, half = _model(torch.float32), _model(dtype)
    # memory matters for this output: the test would see a change in its geometry
    effect = float((_run(half, memory, dtype) - _run(half, None, dtype)).abs().max())
    assert effect > 0.05
    for shift in SHIFTS:
        tolerance = _change(reference, memory, shift, torch.float32)
        assert _change(half, memory, shift, dtype) <= tolerance, shift


@pytest.mark.parametrize("options", [{}, {"memory_pose_encoding": "frame"}])
def test_autocast_keeps_geometry_float32(options):
    memory = _grid_memory(5)
    model = _model(torch.float32, **options)
    for shift in SHIFTS:
        tolerance = _change(model, memory, shift, torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _change(model, memory, shift, torch.float32) <= tolerance, shift
            rays = model.ray_distance(_shifted(memory, shift))
        assert rays.dtype == torch.float32
        assert torch.equal(rays, model.ray_distance(memory))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_own_buffer_retrieval_keeps_float32_poses(dtype):
    """A half-precision model with its own (float32) buffer, queried with float32 poses."""

    def change(model: HybridCDiT, shift: float, compute: torch.dtype) -> float:
        outs = []
        for offset in (0.0, shift):
            model.reset_memory()
            memory = _shifted(_grid_memory(3), offset)
            for slot in range(memory.num_slots):
                model.update_memory(memory.frames[:, slot].to(compute), memory.poses[:, slot])
            assert model.memory_buffer is not None
            assert model.memory_buffer.dtype == torch.float32
            with torch.no_grad():
                out = model(**_inputs(compute), current_pose=memory.query_pose)
            outs.append(out.float())
        return float((outs[1] - outs[0]).abs().max())

    reference = _model(torch.float32, memory_retrieval_scale=100.0)
    half = _model(dtype, memory_retrieval_scale=100.0)
    for shift in SHIFTS:
        assert change(half, shift, dtype) <= change(reference, shift, torch.float32), shift


def test_float64_poses_keep_float64_geometry():
    memory = _grid_memory(3)
    wide = replace(memory, poses=memory.poses.double(), query_pose=memory.query_pose.double())
    wide = _shifted(wide, 1e9)  # beyond float32's 24 bits: only float64 keeps the offsets
    model = _model(torch.float32)
    poses, query = model.memory_reader.slot_poses(wide)
    assert poses.dtype == query.dtype == torch.float64
    torch.testing.assert_close(_run(model, wide, torch.float32), _run(model, memory, torch.float32))


def test_cached_tokens_and_keys_values_follow_autocast():
    """A context used without autocast, then under it, gets tokens and keys/values computed
    under autocast (as a fresh context does), not those cached from the first call."""
    memory, fresh = _grid_memory(3), _grid_memory(3)
    model = _model(torch.float32)
    _run(model, memory, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(_run(model, memory, torch.float32), _run(model, fresh, torch.float32))


def test_moved_memory_keeps_float32_geometry_and_is_cached_per_dtype():
    memory = _grid_memory(3)
    model = _model(torch.bfloat16)
    x = torch.zeros(1, dtype=torch.bfloat16)
    with torch.no_grad():
        inputs = model.memory_inputs(memory, x)
    assert inputs is not None
    moved = memory.cached(model, ("moved", x.device, torch.bfloat16, torch.float32))
    assert moved is not None and moved.frames.dtype == torch.bfloat16
    assert moved.poses.dtype == moved.query_pose.dtype == moved.scores.dtype == torch.float32
    assert torch.equal(moved.poses, memory.poses)
    assert memory.is_placed(torch.device("cpu"), torch.float32, torch.float32)
    assert not memory.is_placed(torch.device("cpu"), torch.bfloat16, torch.float32)
