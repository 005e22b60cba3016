"""``MemoryContext``: validation, ``empty`` and device/dtype moves."""

from __future__ import annotations

import math

import pytest
import torch

from hybrid_cdit.memory import MemoryContext


def make(**overrides):
    fields = {
        "frames": torch.zeros(2, 3, 4, 2, 2),
        "poses": torch.zeros(2, 3, 5),
        "scores": torch.zeros(2, 3),
        "mask": torch.zeros(2, 3, dtype=torch.bool),
        "query_pose": torch.zeros(2, 5),
    }
    fields.update(overrides)
    return MemoryContext(**fields)


def test_empty_context_is_fully_masked():
    ctx = MemoryContext.empty(2, 4, (4, 8, 8), pose_dim=3)
    assert ctx.frames.shape == (2, 4, 4, 8, 8) and ctx.poses.shape == (2, 4, 3)
    assert not bool(ctx.mask.any()) and ctx.mask.dtype == torch.bool
    assert (ctx.batch_size, ctx.num_slots, ctx.pose_dim) == (2, 4, 3)
    query = torch.ones(2, 5, dtype=torch.float64)
    ctx = MemoryContext.empty(2, 1, (1, 2, 2), 5, query, dtype=torch.float64)
    assert torch.equal(ctx.query_pose, query) and ctx.frames.dtype == torch.float64


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"frames": torch.full((2, 3, 4, 2, 2), math.nan)}, "frames must be finite"),
        ({"poses": torch.full((2, 3, 5), math.inf)}, "poses must be finite"),
        ({"scores": torch.full((2, 3), math.nan)}, "scores must be finite"),
        ({"query_pose": torch.full((2, 5), math.nan)}, "query_pose must be finite"),
        ({"poses": torch.zeros(2, 3, 4)}, "poses"),
        ({"mask": torch.zeros(2, 3)}, "mask"),
        ({"frames": torch.zeros(2, 0, 4, 2, 2)}, "frames"),
    ],
)
def test_validation_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        make(**overrides)


def test_huge_finite_frames_are_accepted():
    frames = torch.full((2, 3, 4, 2, 2), 3e38)  # their sum overflows; they are still finite
    assert make(frames=frames).frames is frames


def test_empty_validation():
    with pytest.raises(ValueError, match="k"):
        MemoryContext.empty(2, 0, (1, 2, 2))
    with pytest.raises(ValueError, match="frame_shape"):
        MemoryContext.empty(2, 1, (1, 2))


def test_to_keeps_mask_bool_and_cache_is_per_owner():
    ctx = make()
    moved = ctx.to(dtype=torch.float64)
    assert moved.frames.dtype == torch.float64 and moved.mask.dtype == torch.bool

    class Owner:
        pass

    owner = Owner()
    ctx.store(owner, "key", 1)
    assert ctx.cached(owner, "key") == 1 and ctx.cached(owner, "other") is None
    ctx.clear_cache()
    assert ctx.cached(owner, "key") is None


@pytest.mark.parametrize("bad", [1.5, -0.25, 1.0 + 1e-6])
def test_scores_outside_unit_interval_are_refused(bad):
    scores = torch.full((2, 3), 0.5)
    scores[1, 2] = bad
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\], got values in \[") as err:
        make(scores=scores)
    assert f"{bad:g}" in str(err.value)
    make(scores=torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]]))  # the bounds are allowed
