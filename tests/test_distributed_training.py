"""FSDP2 and DDP training on CPU (gloo, two processes): sharded steps equal a single-process run,
full and sharded checkpoints round-trip, memory-only training, checkpointing and bf16.

Each worker ends with ``os._exit(0)`` after ``destroy_process_group()`` once its checks have
passed: gloo can abort at interpreter exit after all the work succeeded, and that must not fail
the test. A failed check raises before that point and fails the test.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from hybrid_cdit import HybridCDiT, MemoryContext
from hybrid_cdit.distributed import (
    fully_shard_model,
    get_full_state_dict,
    load_sharded_checkpoint,
    save_pretrained_distributed,
    save_sharded_checkpoint,
)

from .hybrid_helpers import TINY, make_inputs, make_memory, randomise, replace

WORLD = 2
PER_RANK = 2


def _run(worker: Callable[[int, Path], None], tmp_path: Path) -> None:
    mp.start_processes(
        _entry, args=(worker, tmp_path), nprocs=WORLD, join=True, start_method="spawn"
    )


def _entry(rank: int, worker: Callable[[int, Path], None], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp_path / 'store'}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=120),
    )
    worker(rank, tmp_path)  # raises on a failed check: the test fails
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, where gloo may abort after the work succeeded


def _model() -> HybridCDiT:
    torch.manual_seed(0)
    model = HybridCDiT(**TINY).train()
    randomise(model, std=0.05)  # gates away from zero (memory shapes every gradient), tame scale
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _cat_memory(parts: list[MemoryContext | None]) -> MemoryContext | None:
    """One batch's memory from each rank's: an absent part becomes an all-masked context,
    which contributes exactly what no memory contributes."""
    if all(p is None for p in parts):
        return None
    filled = [
        p if p is not None else MemoryContext.empty(PER_RANK, 4, (TINY["in_channels"], 8, 8))
        for p in parts
    ]
    fields = ("frames", "poses", "scores", "mask", "query_pose")
    return MemoryContext(**{f: torch.cat([getattr(p, f) for p in filled]) for f in fields})


def _schedule() -> list[tuple[str, list[MemoryContext | None]]]:
    """Per step, each rank's memory: active, inactive, absent, then active on rank 0 only."""
    active = [make_memory(n=PER_RANK, seed=r) for r in range(WORLD)]
    inactive = [replace(m, scores=torch.full_like(m.scores, 0.05)) for m in active]
    return [
        ("active", list(active)),
        ("inactive", list(inactive)),
        ("absent", [None] * WORLD),
        ("mixed", [active[0], None]),
    ]


def _inputs(rank: int, step: int) -> dict[str, torch.Tensor]:
    return make_inputs(n=PER_RANK, seed=100 * step + rank)


def _full_inputs(step: int) -> dict[str, torch.Tensor]:
    parts = [_inputs(r, step) for r in range(WORLD)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)


def _fsdp_matches_single_process(rank: int, tmp: Path) -> None:
    model = _model()
    reference = copy.deepcopy(model)
    schedule = _schedule()

    ref_opt = _sgd(reference)
    for step, (_, parts) in enumerate(schedule):
        ref_opt.zero_grad()
        reference(**_full_inputs(step), memory=_cat_memory(parts)).square().mean().backward()
        ref_opt.step()

    fully_shard_model(model)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    optimizer = _sgd(model)
    for step, (_, parts) in enumerate(schedule):
        optimizer.zero_grad()
        model(**_inputs(rank, step), memory=parts[rank]).square().mean().backward()
        optimizer.step()

    full = get_full_state_dict(model)
    if rank == 0:
        expected, initial = reference.state_dict(), _model().state_dict()
        assert full.keys() == expected.keys()
        for key, value in expected.items():
            error = float((full[key] - value).norm() / value.norm())
            assert error < 1e-5, (key, error)
            # the updates themselves agree (float32 sums in another order: ~1e-4 relative)
            update = value - initial[key]
            assert float(update.norm()) > 0, key  # every tensor trained, memory included
            error = float((full[key] - initial[key] - update).norm() / update.norm())
            assert error < 2e-3, (key, error)
    else:
        assert full == {}

    # gathered state dict -> save_pretrained -> from_pretrained: identical outputs
    written = save_pretrained_distributed(model, tmp / "pretrained")
    assert (written is not None) == (rank == 0)
    probe, probe_memory = _inputs(0, 9), make_memory(n=PER_RANK, seed=7)
    model.eval()
    with torch.no_grad():
        sharded_out = model(**probe, memory=probe_memory)
    if rank == 0:
        loaded = HybridCDiT.from_pretrained(tmp / "pretrained").eval()
        with torch.no_grad():
            assert torch.equal(loaded(**probe, memory=probe_memory), sharded_out)
    model.train()

    # sharded DCP checkpoint of model and optimizer -> a fresh sharded model and optimizer
    save_sharded_checkpoint(tmp / "dcp", model, optimizer)
    torch.manual_seed(123)
    fresh = fully_shard_model(HybridCDiT(**TINY).train())
    fresh_opt = _sgd(fresh)
    load_sharded_checkpoint(tmp / "dcp", fresh, fresh_opt)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(_local(p), _local(q))
        buffers = optimizer.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"]
        assert torch.equal(_local(buffers[0]), _local(buffers[1]))
    torch.manual_seed(321)
    model_only = fully_shard_model(HybridCDiT(**TINY))
    load_sharded_checkpoint(tmp / "dcp", model_only)  # the model alone, without the optimizer
    for p, q in zip(model.parameters(), model_only.parameters(), strict=True):
        assert torch.equal(_local(p), _local(q))
    for net, opt in ((model, optimizer), (fresh, fresh_opt)):  # the same next step
        opt.zero_grad()
        net(**_inputs(rank, 5), memory=schedule[0][1][rank]).square().mean().backward()
        opt.step()
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(_local(p), _local(q))


@pytest.mark.slow
def test_fsdp2_steps_equal_single_process_and_checkpoints_round_trip(tmp_path: Path):
    _run(_fsdp_matches_single_process, tmp_path)


def _memory_only_steps(
    model: torch.nn.Module, rank: int, optimizer: torch.optim.Optimizer
) -> list[float]:
    losses = []
    for step, (_, parts) in enumerate(_schedule()):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**_inputs(rank, step), memory=parts[rank]).float().square().mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def _check_memory_only(
    model: HybridCDiT, initial: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
    with_state = {id(p) for p in optimizer.state}
    for name, p in model.named_parameters():
        name = name.removeprefix("module.")
        is_memory = "memory" in name
        assert (id(p) in with_state) == is_memory, name
        changed = not torch.equal(_local(p.detach()), initial[name])
        assert changed == is_memory, name


def _fsdp_memory_only_checkpointed_and_bf16(rank: int, tmp: Path) -> None:
    # memory-only fine-tuning with activation checkpointing under FSDP2
    model = _model()
    model.freeze_cdit()
    model.set_grad_checkpointing()
    fully_shard_model(model)
    initial = {n: _local(p.detach()).clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = _memory_only_steps(model, rank, optimizer)
    assert all(torch.isfinite(torch.tensor(losses)))
    _check_memory_only(model, initial, optimizer)

    # bf16 parameters and compute, float32 gradient reduction, memory on some ranks only
    model = _model()
    model.set_grad_checkpointing()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    fully_shard_model(model, mp_policy=policy)
    seen: list[torch.dtype] = []
    block = model.hybrid_blocks()[TINY["depth"] - 1]
    block.memory_attn.register_forward_hook(
        lambda _m, args, _out: seen.extend(a.dtype for a in args[:3])
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = _memory_only_steps(model, rank, optimizer)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert seen and set(seen) == {torch.bfloat16}  # hidden queries, memory keys and values
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None
        assert torch.isfinite(_local(p.grad)).all()


@pytest.mark.slow
def test_fsdp2_memory_only_checkpointed_and_bf16(tmp_path: Path):
    _run(_fsdp_memory_only_checkpointed_and_bf16, tmp_path)


def _ddp_memory_only_checkpointed(rank: int, tmp: Path) -> None:
    model = _model()
    model.freeze_cdit()
    model.set_grad_checkpointing()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp = DistributedDataParallel(model)  # no find_unused_parameters
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    _memory_only_steps(ddp, rank, optimizer)
    _check_memory_only(model, initial, optimizer)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered), "ranks diverged"


@pytest.mark.slow
def test_ddp_memory_only_with_checkpointing_without_find_unused_parameters(tmp_path: Path):
    _run(_ddp_memory_only_checkpointed, tmp_path)


def test_fully_shard_model_rejects_models_without_blocks():
    with pytest.raises(ValueError, match="blocks"):
        fully_shard_model(torch.nn.Linear(2, 2))


def test_fully_shard_model_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="init_process_group"):
        fully_shard_model(HybridCDiT(**TINY))


def test_memory_context_survives_field_by_field_rebuild():
    """FSDP2's mixed-precision input casting rebuilds dataclasses with ``dataclasses.replace``
    over every field; the context's cache must not be one of them."""
    import dataclasses

    from torch.distributed.utils import _apply_to_tensors

    memory = make_memory(n=2)
    memory.store(memory, "key", 1)
    cast = _apply_to_tensors(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, memory)
    assert isinstance(cast, MemoryContext)
    assert cast.frames.dtype == torch.bfloat16 and cast.mask.dtype == torch.bool
    assert torch.equal(cast.frames, memory.frames.to(torch.bfloat16))
    assert cast.cached(memory, "key") is None  # a fresh, empty cache
    assert dataclasses.replace(memory).cached(memory, "key") is None


def test_training_doc_parameter_counts():
    """docs/training-at-scale.md's arithmetic starts from these counts: they are the code's."""
    from hybrid_cdit import create_model

    with torch.device("meta"):
        model = create_model("HybridCDiT-XL/2")
    assert isinstance(model, HybridCDiT)
    total = sum(p.numel() for p in model.parameters())
    memory = sum(p.numel() for p in model.memory_parameters())
    largest = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    root = total - sum(p.numel() for p in model.blocks.parameters())
    text = (Path(__file__).parents[1] / "docs" / "training-at-scale.md").read_text()
    for count in (total, memory, largest, root, 4 * total, 16 * total, 16 * total // 8):
        assert f"{count:,}" in text, count
