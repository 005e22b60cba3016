"""The memory attention's logit bias (ray alignment + key mask), kept on the memory context
across denoising steps: same outputs as computing it every forward, never stale."""

from __future__ import annotations

import torch

from hybrid_cdit.attention import SelectiveMemoryAttention
from hybrid_cdit.blocks import HybridCDiTBlock

from .hybrid_helpers import TINY, make_inputs, make_memory, replace, trained_like_hybrid


def _partly_masked_memory(seed: int = 0):
    """Sample 0 with two masked slots, sample 1 fully valid, sample 2 with no valid slot."""
    memory = make_memory(seed=seed)
    mask = memory.mask.clone()
    mask[0, 1:3] = False
    mask[2] = False
    return replace(memory, mask=mask)


def _memory_blocks(model) -> list[HybridCDiTBlock]:
    return [b for b in model.hybrid_blocks() if b.enable_memory]


def test_attention_mask_matches_a_bias_written_out():
    """``-strength[h] * distance`` where a key may be attended, -inf elsewhere; a row with no
    valid key attends to everything (the caller gates it to zero)."""
    g = torch.Generator().manual_seed(0)
    attn = SelectiveMemoryAttention(8, 2, 4, ratio=2, ray_alignment=True)
    with torch.no_grad():
        attn.ray_strength.copy_(torch.tensor([0.5, 2.0]))
    distance = torch.rand(3, 4, 6, generator=g) * 4
    key_mask = torch.tensor([[1, 1, 0, 1, 0, 1], [1] * 6, [0] * 6], dtype=torch.bool)
    mask = attn.attention_mask(key_mask, distance, torch.float32)
    assert mask.shape == (3, 2, 4, 6) and mask.dtype == torch.float32
    for n in range(3):
        for h, strength in enumerate((0.5, 2.0)):
            for j in range(6):
                column = mask[n, h, :, j]
                if n == 2 or bool(key_mask[n, j]):
                    torch.testing.assert_close(column, -strength * distance[n, :, j])
                else:
                    assert bool((column == float("-inf")).all())
    plain = SelectiveMemoryAttention(8, 2, 4, ratio=2)
    allowed = plain.attention_mask(key_mask, distance, torch.float32)
    assert allowed.dtype == torch.bool and allowed.shape == (3, 1, 1, 6)
    assert torch.equal(allowed[:, 0, 0], key_mask | torch.tensor([[False], [False], [True]]))


def test_cached_bias_gives_the_uncached_output_and_is_computed_once_per_context(monkeypatch):
    model = trained_like_hybrid(memory_patch_size=2)  # full resolution: bias (N, H, 16, 64)
    inputs, memory = make_inputs(), _partly_masked_memory()
    calls: list[bool] = []
    original = SelectiveMemoryAttention.attention_mask

    def counting(attn, key_mask, ray_distance, dtype):
        calls.append(torch.is_grad_enabled())
        return original(attn, key_mask, ray_distance, dtype)

    monkeypatch.setattr(SelectiveMemoryAttention, "attention_mask", counting)
    uncached = model(**inputs, memory=memory)  # gradients on: nothing is cached
    assert len(calls) == len(_memory_blocks(model))
    calls.clear()
    with torch.no_grad():
        steps = [model(**inputs, memory=memory) for _ in range(4)]
    assert calls == [False] * len(_memory_blocks(model))  # once per memory layer, then reused
    for out in steps:
        assert torch.equal(out, steps[0])
        torch.testing.assert_close(out, uncached.detach(), atol=1e-5, rtol=1e-5)


def test_a_block_with_a_cached_bias_computes_what_it_computes_without_cache():
    model = trained_like_hybrid(memory_patch_size=2)
    memory = _partly_masked_memory()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 16, TINY["hidden_size"], generator=g)
    c = torch.randn(3, TINY["hidden_size"], generator=g)
    with torch.no_grad():
        inputs = model.memory_inputs(memory, torch.zeros(3, 4, 8, 8))
        assert inputs is not None and inputs.cache is not None
        block = _memory_blocks(model)[0]
        uncached = block.memory_residual(x, c, inputs._replace(cache=None))
        first = block.memory_residual(x, c, inputs)
        second = block.memory_residual(x, c, inputs)
    assert torch.equal(first, uncached) and torch.equal(second, uncached)


def test_bias_follows_an_optimizer_step_on_the_ray_strengths():
    """An optimizer changes the strengths in place under no_grad: the next forward sharing a
    cached context uses the new strengths, as a fresh context does."""
    model = trained_like_hybrid()
    inputs, memory = make_inputs(), _partly_masked_memory()
    with torch.no_grad():
        before = model(**inputs, memory=memory)
    strengths = [b.memory_attn.ray_strength for b in _memory_blocks(model)]
    optimizer = torch.optim.SGD(strengths, lr=5.0)
    model.train()
    model(**inputs, memory=make_memory(seed=3)).square().mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(**inputs, memory=memory)
        fresh = model(**inputs, memory=_partly_masked_memory())
    assert not torch.allclose(before, fresh)
    assert torch.equal(after, fresh)


def test_bias_is_not_shared_between_contexts_dtypes_or_strengths():
    model = trained_like_hybrid()
    inputs = make_inputs()
    first, turned = _partly_masked_memory(), _partly_masked_memory()
    turned = replace(turned, poses=turned.poses + torch.tensor([0.0, 0.0, 0.7]))
    with torch.no_grad():
        before = model(**inputs, memory=first)
        assert torch.equal(model(**inputs, memory=first), before)  # cached now
        changed = model(**inputs, memory=turned)
        assert not torch.allclose(changed, before)
        assert torch.equal(changed, model(**inputs, memory=replace(turned)))
        block = _memory_blocks(model)[0]
        block.memory_attn.ray_strength.fill_(3.0)  # in place, as load_state_dict does
        stronger = model(**inputs, memory=first)
        assert not torch.allclose(stronger, before)
        assert torch.equal(stronger, model(**inputs, memory=replace(first)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**inputs, memory=first)
            assert torch.equal(autocast, model(**inputs, memory=replace(first)))


def test_bias_is_differentiable_in_the_ray_strengths():
    """Training path (no cache): the gradient of the output w.r.t. the strengths matches
    finite differences."""
    torch.manual_seed(0)
    attn = SelectiveMemoryAttention(6, 2, 4, ratio=2, ray_alignment=True).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        keys, values = attn.keys_values(torch.randn(2, 8, 6, generator=g, dtype=torch.float64))
    key_mask = torch.tensor([[1, 1, 1, 0, 1, 1, 0, 1], [1] * 8], dtype=torch.bool)
    distance = torch.rand(2, 4, 8, generator=g, dtype=torch.float64) * 3

    def output(strength: torch.Tensor) -> torch.Tensor:
        args = (x, keys, values, key_mask, distance)
        out: torch.Tensor = torch.func.functional_call(attn, {"ray_strength": strength}, args)
        return out

    strength = torch.tensor([0.7, 1.6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(output, (strength,))
    output(strength).sum().backward()
    assert strength.grad is not None and bool((strength.grad != 0).all())
