"""The revisit benchmark's world, retrieval and end-to-end run, at a tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from .benchmark_helpers import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "revisit.py"
if str(SCRIPT.parent) not in sys.path:
    sys.path.insert(0, str(SCRIPT.parent))  # revisit.py imports its sibling side_by_side.py


@pytest.fixture(scope="module")
def revisit() -> ModuleType:
    return load_benchmark("revisit")


def test_world_labels_match_brute_force(revisit: ModuleType) -> None:
    cfg = revisit.WorldConfig(length=16)
    traj = revisit.make_trajectories(64, cfg, torch.Generator().manual_seed(0))
    keys = traj.keys.tolist()
    for n, row in enumerate(keys):
        for t in range(cfg.context, cfg.length):
            history = row[: t - cfg.context]
            context = row[t - cfg.context : t]
            assert bool(traj.revisit[n, t]) == (row[t] in history)
            assert bool(traj.in_context[n, t]) == (row[t] in context)
            assert row[t] not in context  # no action undoes the previous one
    assert 0.2 < float(traj.revisit[:, cfg.context :].float().mean()) < 0.8


def test_frames_repeat_exactly_on_revisit(revisit: ModuleType) -> None:
    cfg = revisit.WorldConfig(length=16)
    gen = torch.Generator().manual_seed(1)
    traj = revisit.make_trajectories(8, cfg, gen)
    frames = revisit.render(traj, torch.arange(8), cfg, gen)
    same_key = traj.keys[:, :, None] == traj.keys[:, None, :]
    same_frame = (frames[:, :, None] == frames[:, None, :]).flatten(3).all(-1)
    assert torch.equal(same_key, same_frame)


def test_retrieval_finds_revisits_and_masks_novel_frames(revisit: ModuleType) -> None:
    cfg = revisit.WorldConfig(length=16)
    gen = torch.Generator().manual_seed(2)
    traj = revisit.make_trajectories(32, cfg, gen)
    index = torch.arange(32).repeat_interleave(cfg.length - cfg.context)
    target = torch.arange(cfg.context, cfg.length).repeat(32)
    frames = revisit.render(traj, index, cfg, gen)
    batch = revisit.make_batch(traj, index, target, frames, cfg, top_k=4, threshold=0.7)
    assert bool(batch.hit[batch.revisit].all())
    assert not bool(batch.memory.mask[~batch.revisit].any())
    revisited = batch.memory.frames[batch.revisit, 0]
    assert torch.equal(revisited, batch.x0[batch.revisit])


def test_models_start_from_the_same_function(revisit: ModuleType) -> None:
    args = revisit.parse_args(["--hidden", "32", "--depth", "2", "--heads", "2", "--length", "12"])
    cfg = revisit.world_config(args)
    cdit, hybrid = revisit.build_models(args, cfg)
    gen = torch.Generator().manual_seed(3)
    traj = revisit.make_trajectories(8, cfg, gen)
    index, target = torch.arange(8), torch.full((8,), cfg.length - 1)
    frames = revisit.render(traj, index, cfg, gen)
    batch = revisit.make_batch(traj, index, target, frames, cfg, top_k=4, threshold=0.7)
    t = torch.full((8,), 300)
    x_t = torch.randn(batch.x0.shape, generator=gen)
    with torch.no_grad():
        plain = revisit.predict(cdit, batch, x_t, t, None)
        with_memory = revisit.predict(hybrid, batch, x_t, t, batch.memory)
    torch.testing.assert_close(with_memory, plain, rtol=1e-5, atol=1e-6)


def test_end_to_end_tiny(revisit: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--steps", "3", "--batch", "8", "--hidden", "32", "--depth", "2", "--heads", "2",
        "--pool", "32", "--eval-trajectories", "4", "--length", "12", "--log-every", "1",
        "--threads", "1",
    ]  # fmt: skip
    revisit.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in (
        "revisit_mse_cdit",
        "revisit_mse_hybrid",
        "revisit_mse_hybrid_no_memory",
        "novel_mse_cdit",
        "novel_mse_hybrid",
        "seconds",
    ):
        assert isinstance(summary[key], float)
    assert summary["retrieval"]["novel_active_rate"] == 0.0
