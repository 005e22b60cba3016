"""HybridCDiT under DistributedDataParallel (gloo, CPU) and ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from hybrid_cdit import HybridCDiT

from .hybrid_helpers import TINY, make_inputs, make_memory, replace, trained_like_hybrid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_three_steps(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = HybridCDiT(**TINY)
        ddp = DistributedDataParallel(model)  # no find_unused_parameters
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        active = make_memory(n=2, seed=rank)
        inactive = replace(active, scores=torch.full_like(active.scores, 0.05))
        with warnings.catch_warnings():
            # e.g. "Grad strides do not match bucket view strides" from the reducer
            warnings.simplefilter("error")
            for memory in (active, inactive, None):
                inputs = make_inputs(n=2, seed=rank)
                out = ddp(**inputs, memory=memory)
                loss = out.square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        # every rank holds the same weights after synchronised steps
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        if not all(torch.equal(gathered[0], g) for g in gathered):
            raise AssertionError("ranks diverged")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_three_steps_with_active_inactive_and_absent_memory():
    mp.start_processes(
        _train_three_steps, args=(2, _free_port()), nprocs=2, join=True, start_method="spawn"
    )


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    """Inference through inductor; training through AOT autograd (same graph capture, no
    C++ build of the backward, which would take minutes on two cores)."""
    torch._dynamo.reset()
    model = trained_like_hybrid()
    inputs, memory = make_inputs(), make_memory()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        expected = model(**inputs, memory=memory)
        out = compiled(**inputs, memory=memory)
    assert _relative_error(out, expected) < 1e-4

    model.train()
    training = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    for memory_ in (memory, None):
        out = training(**inputs, memory=memory_)
        assert _relative_error(out, model(**inputs, memory=memory_)) < 1e-4
        out.mean().backward()
    assert all(p.grad is not None for p in model.memory_parameters())
