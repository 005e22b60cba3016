"""Activation checkpointing (``set_grad_checkpointing``), ``freeze_cdit`` and bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from hybrid_cdit import CDiT, HybridCDiT

from .hybrid_helpers import TINY, make_inputs, make_memory, randomise, replace

CDIT_TINY = dict(TINY)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.norm())
    return float((a - b).norm()) / scale if scale > 0 else float((a - b).norm())


def _grads(model: torch.nn.Module, memory: object = None) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    kwargs = {} if memory is None else {"memory": memory}
    out = model(**make_inputs(n=3, seed=5), **kwargs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return {
        n.removeprefix("_orig_mod."): p.grad.clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def _hybrid() -> HybridCDiT:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY).train()
    randomise(model)  # memory gates away from zero: the memory branch shapes every gradient
    return model


def _assert_same_grads(plain: dict[str, torch.Tensor], ckpt: dict[str, torch.Tensor]) -> None:
    assert plain.keys() == ckpt.keys()
    for name, grad in plain.items():
        assert _relative_error(ckpt[name], grad) < 1e-5, name


def test_set_grad_checkpointing_follows_timm():
    model = CDiT(**CDIT_TINY)
    assert model.grad_checkpointing is False
    model.set_grad_checkpointing()
    assert model.grad_checkpointing is True
    model.set_grad_checkpointing(False)
    assert model.grad_checkpointing is False


def test_checkpointing_runs_checkpoint_per_block(monkeypatch: pytest.MonkeyPatch):
    import hybrid_cdit.models.cdit as cdit_module

    calls: list[bool] = []
    real = cdit_module.checkpoint

    def spy(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("use_reentrant"))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(cdit_module, "checkpoint", spy)
    model = _hybrid()
    model.set_grad_checkpointing()
    model(**make_inputs(n=2), memory=make_memory(n=2)).sum().backward()
    assert calls == [False] * TINY["depth"]
    calls.clear()
    with torch.no_grad():  # nothing to save for a backward: plain forward
        model(**make_inputs(n=2), memory=make_memory(n=2))
    assert calls == []


def test_cdit_checkpointed_gradients_match():
    torch.manual_seed(0)
    model = CDiT(**CDIT_TINY).train()
    randomise(model)
    plain = _grads(model)
    model.set_grad_checkpointing()
    _assert_same_grads(plain, _grads(model))


@pytest.mark.parametrize("case", ["active", "inactive", "absent"])
def test_hybrid_checkpointed_gradients_match_for_every_parameter(case: str):
    model = _hybrid()
    memory = make_memory(n=3)
    if case == "inactive":
        memory = replace(memory, scores=torch.full_like(memory.scores, 0.05))
    chosen = None if case == "absent" else memory
    plain = _grads(model, chosen)
    assert len(plain) == len(list(model.parameters()))  # every parameter has a gradient
    if case == "active":
        assert all(float(g.abs().sum()) > 0 for n, g in plain.items() if "memory" in n)
    model.set_grad_checkpointing()
    _assert_same_grads(plain, _grads(model, chosen))


def test_checkpointed_training_never_fills_the_kv_cache():
    model = _hybrid()
    model.set_grad_checkpointing()
    memory = make_memory(n=3)
    attn = model.hybrid_blocks()[TINY["depth"] - 1].memory_attn
    before = attn.kv_computations
    for _ in range(2):
        model(**make_inputs(n=3), memory=memory).sum().backward()
    # forward and recomputation in backward, both steps: nothing was reused from a cache
    assert attn.kv_computations - before == 4
    assert len(memory._cache) == 0
    model.eval()
    with torch.no_grad():
        model(**make_inputs(n=3), memory=memory)
        model(**make_inputs(n=3), memory=memory)
    assert attn.kv_computations - before == 5  # inference caches across calls
    assert len(memory._cache) > 0


@pytest.mark.slow
def test_checkpointing_under_torch_compile_matches_eager():
    torch._dynamo.reset()
    model = _hybrid()
    memory = make_memory(n=3)
    plain = _grads(model, memory)
    model.set_grad_checkpointing()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    _assert_same_grads(plain, _grads(compiled, memory))
    torch._dynamo.reset()


def test_freeze_cdit_trains_only_memory():
    model = _hybrid()
    reference = copy.deepcopy(model)
    model.freeze_cdit()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "memory" in n}
    assert trainable  # memory parameters exist
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for memory in (make_memory(n=3), None):
        optimizer.zero_grad(set_to_none=True)
        model(**make_inputs(n=3), memory=memory).square().mean().backward()
        optimizer.step()
    with_state = {id(p) for p in optimizer.state}
    names = {n for n, p in model.named_parameters() if id(p) in with_state}
    assert names == trainable
    for (name, p), (_, q) in zip(
        model.named_parameters(), reference.named_parameters(), strict=True
    ):
        if "memory" in name:
            assert not torch.equal(p, q), name
        else:
            assert torch.equal(p, q), name
    model.freeze_cdit(False)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_cdit_saves_no_activations_before_the_first_memory_layer():
    model = HybridCDiT(**{**TINY, "depth": 4}, memory_layers=[2]).train()
    model.freeze_cdit()
    needs_grad: list[bool] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, args, _o: needs_grad.append(args[0].requires_grad))
    for memory in (make_memory(n=2), None):
        needs_grad.clear()
        model(**make_inputs(n=2), memory=memory).sum().backward()
        # frozen blocks 0 and 1 see inputs without gradients: autograd saves nothing there
        assert needs_grad == [False, False, True, True]


def test_freeze_cdit_needs_memory():
    model = HybridCDiT(**TINY, memory_enabled=False)
    with pytest.raises(ValueError, match="memory_enabled=True"):
        model.freeze_cdit()
    model.freeze_cdit(False)  # unfreezing is always allowed


def test_bf16_autocast_with_active_memory_is_finite_and_memory_follows_compute_dtype():
    """Under autocast the residual stream stays float32 (layer norms) and matmuls run in bf16:
    memory tokens are in the residual stream's dtype, their keys/values in bf16."""
    model = _hybrid()
    model.set_grad_checkpointing()
    memory = make_memory(n=3)
    seen: dict[str, torch.dtype] = {}
    block = model.hybrid_blocks()[TINY["depth"] - 1]

    def record(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _out: object) -> None:
        seen.update(hidden=args[0].dtype, keys=args[1].dtype, values=args[2].dtype)

    hook = block.memory_attn.register_forward_hook(record)
    stream = block.register_forward_hook(lambda _m, args, _o: seen.update(stream=args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, _ = model.memory_tokens(memory)
        out = model(**make_inputs(n=3), memory=memory)
        loss = out.float().square().mean()
    loss.backward()
    hook.remove()
    stream.remove()
    assert tokens.dtype == seen["stream"]
    assert seen["hidden"] == seen["stream"]
    assert seen["keys"] == seen["values"] == torch.bfloat16
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
