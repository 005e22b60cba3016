"""HybridCDiT under DistributedDataParallel (gloo, CPU) and ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections.abc import Callable

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


Check = Callable[[int, int], None]


def _worker(rank: int, world: int, port: int, check: Check) -> None:
    """Run ``check(rank, world)`` in a gloo process group.

    An exception in ``check`` escapes (after ``destroy_process_group``): the spawn wrapper
    reports it and the worker exits with status 1, which fails the test. Once the checks have
    passed, the worker ends with ``os._exit(0)``: a gloo group may abort (SIGABRT, "terminate
    called without an active exception") at interpreter exit after all the work succeeded.
    """
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        check(rank, world)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(check: Check, world: int = 2) -> None:
    """Run the module-level function ``check(rank, world)`` in ``world`` spawned processes;
    raises ``ProcessRaisedException`` when any of them raised."""
    mp.start_processes(
        _worker, args=(world, _free_port(), check), nprocs=world, join=True, start_method="spawn"
    )


def _train_three_steps(rank: int, world: int) -> None:
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


@pytest.mark.slow
def test_ddp_three_steps_with_active_inactive_and_absent_memory():
    run_workers(_train_three_steps)


def _fail_on_rank_one(rank: int, world: int) -> None:
    dist.barrier()
    if rank == 1:
        raise AssertionError(f"rank {rank} of {world} failed its check")


@pytest.mark.slow
def test_a_failing_worker_fails_the_test():
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 of 2 failed its check"):
        run_workers(_fail_on_rank_one)


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
