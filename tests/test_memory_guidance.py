"""memory_guided_forward: classifier-free guidance with memory as the condition."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext, memory_guided_forward
from tests.hybrid_helpers import TINY, make_inputs, make_memory, replace, trained_like_hybrid


def _reference(model: HybridCDiT, inputs: dict[str, torch.Tensor], memory, scale: float):
    """Sample by sample: the memory forward, its first C channels replaced by the guided
    combination where the sample has a valid slot scoring at or above the threshold."""
    rows = []
    c = inputs["x"].shape[1]
    for i in range(inputs["x"].shape[0]):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        mem_i = replace(
            memory,
            frames=memory.frames[i : i + 1],
            poses=memory.poses[i : i + 1],
            scores=memory.scores[i : i + 1],
            mask=memory.mask[i : i + 1],
            query_pose=memory.query_pose[i : i + 1],
        )
        with_memory = model(**one, memory=mem_i)
        best = float(torch.where(mem_i.mask, mem_i.scores, 0.0).max())
        if bool(mem_i.mask.any()) and best >= model.memory_activation_threshold:
            without = model(**one)
            eps = without[:, :c] + scale * (with_memory[:, :c] - without[:, :c])
            with_memory = torch.cat([eps, with_memory[:, c:]], dim=1)
        rows.append(with_memory)
    return torch.cat(rows)


def _double(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


def _double_memory(memory: MemoryContext) -> MemoryContext:
    return replace(
        memory,
        frames=memory.frames.double(),
        poses=memory.poses.double(),
        query_pose=memory.query_pose.double(),
    )


@torch.no_grad()
def test_matches_a_per_sample_reference_with_inactive_samples() -> None:
    # float64 (the timestep embedding stays float32), so that batch composition moves outputs
    # of size ~20 by under 1e-6, far below the ~1e-2 that guidance changes
    model = trained_like_hybrid().double()
    inputs = _double(make_inputs(n=4))
    memory = _double_memory(make_memory(n=4))
    mask = memory.mask.clone()
    mask[1] = False  # no valid slot
    scores = memory.scores.clone()
    scores[3] = 0.0  # valid slots, below the activation threshold
    memory = replace(memory, mask=mask, scores=scores)
    model.memory_activation_threshold = 0.5
    got = memory_guided_forward(model, **inputs, memory=memory, scale=2.5)
    want = _reference(model, inputs, memory, 2.5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    plain = model(**inputs, memory=memory)
    # inactive samples are untouched; active ones moved; the variance channels are kept
    torch.testing.assert_close(got[[1, 3]], plain[[1, 3]], rtol=0, atol=0)
    assert (got[[0, 2], :4] - plain[[0, 2], :4]).abs().amax() > 1e-3
    torch.testing.assert_close(got[:, 4:], plain[:, 4:], rtol=0, atol=0)


@torch.no_grad()
def test_scale_one_is_the_plain_forward_and_zero_ignores_memory() -> None:
    model = trained_like_hybrid()
    inputs = make_inputs(n=3)
    memory = make_memory(n=3)
    plain = model(**inputs, memory=memory)
    torch.testing.assert_close(
        memory_guided_forward(model, **inputs, memory=memory, scale=1.0), plain, rtol=0, atol=0
    )
    without = model(**inputs)
    got = memory_guided_forward(model, **inputs, memory=memory, scale=0.0)
    torch.testing.assert_close(got[:, :4], without[:, :4], rtol=1e-5, atol=1e-5)
    assert (without[:, :4] - plain[:, :4]).abs().amax() > 1e-3  # memory does change the output


@torch.no_grad()
def test_untrained_memory_branch_keeps_the_cdit_output_at_any_scale() -> None:
    torch.manual_seed(0)
    cdit = CDiT(**TINY).eval()
    model = HybridCDiT(**TINY).eval()
    model.load_state_dict(cdit.state_dict(), strict=False)
    inputs = make_inputs(n=3)
    want = cdit(**inputs)
    for scale in (0.0, 2.0, 4.0):
        got = memory_guided_forward(model, **inputs, memory=make_memory(n=3), scale=scale)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@given(scale=st.floats(0.0, 4.0), seed=st.integers(0, 2**16))
@torch.no_grad()
def test_samples_do_not_affect_each_other(scale: float, seed: int) -> None:
    model = trained_like_hybrid().double()
    inputs = _double(make_inputs(n=3, seed=seed))
    memory = _double_memory(make_memory(n=3, seed=seed))
    mask = memory.mask.clone()
    mask[seed % 3] = False  # one sample without memory, so the batch mixes active and inactive
    memory = replace(memory, mask=mask)
    full = memory_guided_forward(model, **inputs, memory=memory, scale=scale)
    sub = {k: v[1:] for k, v in inputs.items()}
    part = replace(
        memory,
        frames=memory.frames[1:],
        poses=memory.poses[1:],
        scores=memory.scores[1:],
        mask=memory.mask[1:],
        query_pose=memory.query_pose[1:],
    )
    alone = memory_guided_forward(model, **sub, memory=part, scale=scale)
    torch.testing.assert_close(full[1:], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [-0.5, math.nan, math.inf, True, "2"])
def test_bad_scale_is_refused(scale: object) -> None:
    model = trained_like_hybrid()
    with pytest.raises(ValueError, match="scale must be a finite number >= 0, got"):
        memory_guided_forward(
            model,
            **make_inputs(n=2),
            memory=make_memory(n=2),
            scale=scale,  # type: ignore[arg-type]
        )


def test_bad_model_or_memory_is_refused() -> None:
    with pytest.raises(TypeError, match="model must be a HybridCDiT, got CDiT"):
        memory_guided_forward(
            CDiT(**TINY),
            **make_inputs(n=2),
            memory=make_memory(n=2),
            scale=2.0,  # type: ignore[arg-type]
        )
    with pytest.raises(TypeError, match="memory must be a MemoryContext, got NoneType"):
        memory_guided_forward(
            trained_like_hybrid(),
            **make_inputs(n=2),
            memory=None,
            scale=2.0,  # type: ignore[arg-type]
        )
