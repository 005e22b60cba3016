"""``routed_forward``: the hybrid where memory is active, the fallback CDiT elsewhere."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_cdit import CDiT, HybridCDiT, routed_forward
from hybrid_cdit.memory import MemoryContext
from tests.hybrid_helpers import TINY, make_inputs, make_memory, randomise, replace

N = 4


def models() -> tuple[HybridCDiT, CDiT]:
    torch.manual_seed(0)
    hybrid = HybridCDiT(**TINY).eval()
    randomise(hybrid)
    cdit = CDiT(**TINY).eval()
    randomise(cdit)  # a different network from the hybrid's backbone
    return hybrid, cdit


HYBRID, FALLBACK = models()
INPUTS = make_inputs(n=N)


def one(inputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v[n : n + 1] for k, v in inputs.items()}


def one_memory(memory: MemoryContext, n: int) -> MemoryContext:
    fields = ("frames", "poses", "scores", "mask", "query_pose")
    return replace(memory, **{f: getattr(memory, f)[n : n + 1] for f in fields})


@settings(max_examples=25, deadline=None)
@given(
    valid=st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=N, max_size=N),
    low=st.lists(st.booleans(), min_size=N, max_size=N),
)
def test_each_sample_is_the_hybrid_if_active_else_the_fallback(
    valid: list[list[bool]], low: list[bool]
) -> None:
    """Against one sample at a time, activity decided here from the scores and the mask."""
    memory = make_memory(n=N)
    mask = torch.tensor(valid)
    scores = torch.where(torch.tensor(low)[:, None], 0.1, 0.9).expand(N, 4).clone()
    memory = replace(memory, mask=mask, scores=scores)
    threshold = HYBRID.memory_activation_threshold
    with torch.no_grad():
        out = routed_forward(HYBRID, FALLBACK, **INPUTS, memory=memory)
        for n in range(N):
            active = bool(mask[n].any()) and float(scores[n].max()) >= threshold
            if active:
                expected = HYBRID(**one(INPUTS, n), memory=one_memory(memory, n))
            else:
                expected = FALLBACK(**one(INPUTS, n))
            # one sample against a batch: float rounding of outputs of size ~6 (the networks
            # differ by more than 20 on every sample, memory by more than 0.5)
            torch.testing.assert_close(out[n : n + 1], expected, atol=1e-3, rtol=1e-4)


def test_without_memory_every_sample_is_the_fallback_and_it_sees_inactive_samples_only() -> None:
    seen: list[int] = []
    handle = FALLBACK.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((args[0] if args else kwargs["x"]).shape[0]),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            assert torch.equal(
                routed_forward(HYBRID, FALLBACK, **INPUTS, memory=None), FALLBACK(**INPUTS)
            )
            memory = make_memory(n=N)
            mask = memory.mask.clone()
            mask[2] = False
            seen.clear()
            routed_forward(HYBRID, FALLBACK, **INPUTS, memory=replace(memory, mask=mask))
            assert seen == [1]
            seen.clear()
            out = routed_forward(HYBRID, FALLBACK, **INPUTS, memory=memory)
            assert seen == []
            assert torch.equal(out, HYBRID(**INPUTS, memory=memory))
    finally:
        handle.remove()


def test_routing_differs_from_the_hybrid_where_memory_is_inactive() -> None:
    """The networks disagree on every sample, and memory changes every sample's output, so the
    tests above can tell which one answered."""
    with torch.no_grad():
        a, b = HYBRID(**INPUTS), FALLBACK(**INPUTS)
        c = HYBRID(**INPUTS, memory=make_memory(n=N))
    assert bool(((a - b).flatten(1).abs().amax(1) > 1.0).all())
    assert bool(((c - a).flatten(1).abs().amax(1) > 0.5).all())


def test_bad_arguments_are_refused() -> None:
    memory = make_memory(n=N)
    wide = CDiT(**{**TINY, "context_size": 3})
    cases = [
        ((FALLBACK, FALLBACK), "model must be a HybridCDiT"),
        ((HYBRID, torch.nn.Linear(2, 2)), "fallback must be a CDiT"),
        ((HYBRID, wide), "fallback must have the model's context_size 2, got 3"),
    ]
    for (model, fallback), message in cases:
        with pytest.raises(ValueError, match=message):
            routed_forward(model, fallback, **INPUTS, memory=memory)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory must be a MemoryContext or None"):
        routed_forward(HYBRID, FALLBACK, **INPUTS, memory="memory")  # type: ignore[arg-type]


def test_a_sample_whose_poses_are_all_unknown_gets_the_fallback() -> None:
    memory = make_memory(n=N)
    ray_std = torch.zeros(N, 4)
    ray_std[3] = float("inf")  # sample 3: no slot has a known pose
    with torch.no_grad():
        out = routed_forward(HYBRID, FALLBACK, **INPUTS, memory=replace(memory, ray_std=ray_std))
        assert torch.equal(out[3:], FALLBACK(**one(INPUTS, 3)))
        assert torch.equal(out[:3], HYBRID(**INPUTS, memory=memory)[:3])


def test_a_batch_without_active_memory_runs_only_the_fallback() -> None:
    calls: list[int] = []
    handle = HYBRID.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        memory = make_memory(n=N)
        with torch.no_grad():
            out = routed_forward(
                HYBRID,
                FALLBACK,
                **INPUTS,
                memory=replace(memory, mask=torch.zeros_like(memory.mask)),
            )
            assert torch.equal(out, FALLBACK(**INPUTS))
        assert calls == []
    finally:
        handle.remove()
