"""The memory MLP (``memory_mlp_ratio``): zero-gated, applied to samples with active memory only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybrid_cdit import CDiT, HybridCDiT, HybridCDiTConfig
from hybrid_cdit.blocks.hybrid import HybridCDiTBlock, MemoryInputs
from hybrid_cdit.checkpoint import infer_memory_config
from hybrid_cdit.models.hybrid import is_memory_key
from tests.hybrid_helpers import TINY, make_inputs, make_memory, randomise, replace

MLP = {"memory_layers": [1], "memory_mlp_ratio": 2.0}


def test_a_new_memory_mlp_keeps_a_trained_branch_outputs() -> None:
    """Loading a trained hybrid without memory MLPs into one with them changes no output: the
    loaded memory branch stays, the new MLPs start with a zero gate."""
    torch.manual_seed(0)
    old = HybridCDiT(**TINY, memory_layers=[1]).eval()
    randomise(old)
    new = HybridCDiT(**TINY, **MLP).eval()
    result = new.load_state_dict(old.state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted(k for k in new.state_dict() if "memory_mlp" in k)
    inputs, memory = make_inputs(), make_memory()
    with torch.no_grad():
        assert torch.equal(new(**inputs, memory=memory), old(**inputs, memory=memory))
    gate = new.blocks[1].memory_mlp_adaLN_modulation[-1]
    assert torch.count_nonzero(gate.weight) == 0 and torch.count_nonzero(gate.bias) == 0
    assert torch.count_nonzero(new.blocks[1].memory_mlp.fc1.weight) > 0


def test_inactive_samples_get_exactly_the_cdit_and_active_ones_the_mlp() -> None:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY, **MLP).eval()
    randomise(model)
    cdit = CDiT(**TINY).eval()
    cdit.load_state_dict({k: v for k, v in model.state_dict().items() if not is_memory_key(k)})
    inputs, memory = make_inputs(), make_memory()
    mask = memory.mask.clone()
    mask[1] = False  # sample 1 has no usable slot: memory inactive
    memory = replace(memory, mask=mask)
    with torch.no_grad():
        out = model(**inputs, memory=memory)
        reference = cdit(**inputs)
        gate = model.blocks[1].memory_mlp_adaLN_modulation[-1]
        saved = gate.weight.clone(), gate.bias.clone()
        gate.weight.zero_()
        gate.bias.zero_()
        without_mlp = model(**inputs, memory=memory)
        gate.weight.copy_(saved[0])
        gate.bias.copy_(saved[1])
    assert torch.equal(out[1], reference[1])
    assert not torch.allclose(out[0], reference[0], atol=1e-3)
    for sample in (0, 2):
        assert (out[sample] - without_mlp[sample]).abs().max() > 1e-3
    assert torch.equal(out[1], without_mlp[1])


def test_memory_mlp_block_matches_the_written_out_equation() -> None:
    """The block's memory residual: a twin block without the MLP (same memory attention), then
    the MLP written with plain torch ops, gated per sample."""
    torch.manual_seed(0)
    d, heads, n, length, m = 32, 4, 3, 16, 10
    block = HybridCDiTBlock(d, heads, enable_memory=True, grid_size=4, memory_mlp_ratio=2.0)
    twin = HybridCDiTBlock(d, heads, enable_memory=True, grid_size=4)
    randomise(block)
    twin.load_state_dict(
        {k: v for k, v in block.state_dict().items() if "memory_mlp" not in k}, strict=True
    )
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(n, length, d, generator=g), torch.randn(n, d, generator=g)
    active = torch.tensor([1.0, 0.0, 1.0])
    memory = MemoryInputs(
        tokens=torch.randn(n, m, d, generator=g),
        key_mask=torch.ones(n, m, dtype=torch.bool),
        gate=active,
    )
    with torch.no_grad():
        got = block.memory_residual(x, c, memory)
        x1 = twin.memory_residual(x, c, memory)
        linear = block.memory_mlp_adaLN_modulation[-1]
        shift, scale, gate = F.linear(F.silu(c), linear.weight, linear.bias).chunk(3, dim=1)
        h = F.layer_norm(x1, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        fc1, fc2 = block.memory_mlp.fc1, block.memory_mlp.fc2
        h = F.linear(F.gelu(F.linear(h, fc1.weight, fc1.bias), approximate="tanh"), fc2.weight)
        expected = x1 + (gate * active[:, None])[:, None] * (h + fc2.bias)
    assert fc1.weight.shape == (64, d)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], x1[1])
    assert (got[0] - x1[0]).abs().max() > 1e-2


def test_freeze_cdit_trains_the_memory_mlp_from_active_samples_only() -> None:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY, **MLP)
    randomise(model)  # the CDiT's zero-initialised output layer would pass no gradient
    model.freeze_cdit()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in model.state_dict() if "memory_mlp" in n} <= names
    inputs, memory = make_inputs(), make_memory()
    for active, expect_gradient in ((True, True), (False, False)):
        model.zero_grad(set_to_none=False)
        mask = memory.mask if active else torch.zeros_like(memory.mask)
        model(**inputs, memory=replace(memory, mask=mask)).square().mean().backward()
        grad = model.blocks[1].memory_mlp.fc1.weight.grad
        assert grad is not None
        assert bool(grad.abs().sum() > 0) == expect_gradient


def test_memory_mlp_ratio_round_trips_and_is_inferred(tmp_path) -> None:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY, **MLP).eval()
    randomise(model)
    inputs, memory = make_inputs(), make_memory()
    loaded = HybridCDiT.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    assert loaded.memory_mlp_ratio == 2.0
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, memory=memory), model(**inputs, memory=memory))
    assert infer_memory_config(model.state_dict())["memory_mlp_ratio"] == 2.0
    assert "memory_mlp_ratio" not in infer_memory_config(
        HybridCDiT(**TINY, memory_layers=[1]).state_dict()
    )
    rebuilt = HybridCDiT.from_cdit_checkpoint(model.state_dict(), num_heads=4)
    assert rebuilt.memory_mlp_ratio == 2.0
    config = HybridCDiTConfig(model="CDiT-S/2", memory_mlp_ratio=1.5)
    assert config.model_kwargs()["memory_mlp_ratio"] == 1.5
    assert HybridCDiTConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, True, "2"])
def test_bad_memory_mlp_ratio_is_refused(bad: object) -> None:
    for build in (
        lambda: HybridCDiT(**TINY, memory_mlp_ratio=bad),
        lambda: HybridCDiTConfig(memory_mlp_ratio=bad),
        lambda: HybridCDiTBlock(32, 4, enable_memory=True, memory_mlp_ratio=bad),
    ):
        with pytest.raises(ValueError, match="memory_mlp_ratio"):
            build()
