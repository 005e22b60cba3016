"""FSDP2 mixed precision (bfloat16 parameters, inputs cast) keeps memory geometry float32:
``fully_shard_model`` casts the frames only, never ``current_pose`` or a context's poses.

One gloo process (the casting is per module, not per rank). Tolerance: the float32 model's own
change under the same shift, as in ``test_geometry_precision`` (poses on a 1/8 grid, so the
shifted poses are exact in float32 and the float32 change is 0).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from hybrid_cdit import HybridCDiT
from hybrid_cdit.distributed import fully_shard_model

from .test_geometry_precision import SHIFTS, _change, _grid_memory, _model, _shifted
from .test_hybrid_distributed import run_workers


def _own_buffer_output(model: HybridCDiT, shift: float, x_dtype: torch.dtype) -> torch.Tensor:
    model.reset_memory()
    memory = _shifted(_grid_memory(3), shift)
    for slot in range(memory.num_slots):
        model.update_memory(memory.frames[:, slot], memory.poses[:, slot])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = model(
            torch.randn(3, 4, 8, 8, generator=g).to(x_dtype),
            torch.tensor([10, 500, 900]),
            torch.randn(3, 3, generator=g),
            torch.randn(3, 2, 4, 8, 8, generator=g).to(x_dtype),
            torch.ones(3),
            current_pose=memory.query_pose,
        )
    return out.float()


def _fsdp_bf16_geometry(rank: int, world: int) -> None:
    reference = _model(torch.float32, memory_retrieval_scale=100.0)
    model = _model(torch.float32, memory_retrieval_scale=100.0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    fully_shard_model(model, mp_policy=policy)
    seen: list[dict[str, Any]] = []

    def record(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        memory, pose = kwargs.get("memory"), kwargs.get("current_pose")
        seen.append(
            {
                "x": (args[0] if args else kwargs["x"]).dtype,
                "poses": None if memory is None else (memory.poses.dtype, memory.query_pose.dtype),
                "current_pose": None if pose is None else pose.dtype,
            }
        )

    model.register_forward_pre_hook(record, with_kwargs=True)
    memory = _grid_memory(5)
    for shift in SHIFTS:
        tolerance = _change(reference, memory, shift, torch.float32)
        if _change(model, memory, shift, torch.float32) > tolerance:  # type: ignore[arg-type]
            raise AssertionError(f"memory= output moved at shift {shift}")
        own = _own_buffer_output(model, shift, torch.float32)  # type: ignore[arg-type]
        own_base = _own_buffer_output(model, 0.0, torch.float32)  # type: ignore[arg-type]
        expected = _own_buffer_output(reference, shift, torch.float32)
        expected_base = _own_buffer_output(reference, 0.0, torch.float32)
        if (own - own_base).abs().max() > (expected - expected_base).abs().max():
            raise AssertionError(f"current_pose= output moved at shift {shift}")
    if not seen or any(s["x"] != torch.bfloat16 for s in seen):
        raise AssertionError(f"frames not cast to bfloat16: {seen}")
    poses = {s["poses"] for s in seen if s["poses"] is not None}
    current = {s["current_pose"] for s in seen if s["current_pose"] is not None}
    if poses != {(torch.float32, torch.float32)} or current != {torch.float32}:
        raise AssertionError(f"poses cast: {poses}, current_pose {current}")


@pytest.mark.slow
def test_fsdp2_bf16_keeps_poses_float32_and_translation_invariance():
    run_workers(_fsdp_bf16_geometry, world=1)
