"""benchmarks.maze.loops: loops closed in drifting odometry, causally, on a synthetic route that
comes back to where it started, with an oracle refiner (no MuJoCo)."""

from __future__ import annotations

import math

import pytest
import torch
from benchmarks.maze import protocol as mmem
from benchmarks.maze.loops import loop_closed
from benchmarks.maze.noise import PoseNoise, corrupt
from torch import Tensor

from hybrid_cdit.memory import SlotPoseRefiner, relative_pose, wrap_angle

SETTINGS = mmem.MemorySettings(context=2, capacity=60, top_k=3, threshold=0.5, scale=2.0)
DRIFT = PoseNoise("drift", 0.05, 2.0)
TIGHT = PoseNoise("jitter", 0.01, 0.2)


def _laps(n: int = 2, t_len: int = 60) -> Tensor:
    """``(N, T, 3)`` poses driving two laps of a circle of radius 2 cells (so every frame of
    the second lap revisits the first's), facing along the path."""
    angle = torch.linspace(0, 4 * math.pi, t_len, dtype=torch.float64)[None].expand(n, -1)
    angle = angle + torch.arange(n, dtype=torch.float64)[:, None]
    xy = 2.0 * torch.stack([angle.cos(), angle.sin()], -1)
    return torch.cat([xy, wrap_angle(angle + math.pi / 2)[..., None]], -1).float()


class Oracle(SlotPoseRefiner):
    """Returns the true relative pose of the pair; frames carry their episode and index."""

    def __init__(self, poses: Tensor) -> None:
        super().__init__(in_channels=2, width=1, hidden=1)
        self.poses = poses.double()

    def forward(self, reference: Tensor, frames: Tensor, prior: Tensor) -> Tensor:
        n, a, b = reference[:, 1, 0, 0].long(), reference[:, 0, 0, 0].long(), frames[:, 0, 0, 0]
        return relative_pose(self.poses[n, b.long()], self.poses[n, a]).to(prior.dtype)


def _frames(n: int, t_len: int) -> Tensor:
    index = torch.arange(t_len, dtype=torch.float32)[None, :].expand(n, -1)
    episode = torch.arange(n, dtype=torch.float32)[:, None].expand(-1, t_len)
    return torch.stack([index, episode], 2)[..., None, None].expand(n, t_len, 2, 4, 4).clone()


def _slot_error(rows: Tensor, poses: Tensor) -> Tensor:
    """Median position error of every earlier frame relative to frame ``t`` in row ``t``."""
    t_len = poses.shape[1]
    t = torch.arange(t_len)
    query = rows[:, t, t]  # (N, T, 3)
    seen = relative_pose(rows, query[:, :, None])  # (N, T, T, 3)
    truth = relative_pose(poses.double()[:, None], poses.double()[:, :, None])
    error = (seen.double() - truth)[..., :2].norm(dim=-1)
    earlier = t[None, :] < t[:, None]
    return error[:, earlier].median()


def test_no_pass_is_dead_reckoning_and_passes_close_the_loops() -> None:
    poses = _laps()
    n, t_len, _ = poses.shape
    frames, oracle = _frames(n, t_len), Oracle(poses)

    def closed(passes: int) -> Tensor:
        return loop_closed(
            poses, frames, DRIFT, torch.Generator().manual_seed(3), oracle, SETTINGS,
            passes=passes, loop_std=TIGHT, max_distance=3.0, max_turn=90.0,
        )  # fmt: skip

    drifted = corrupt(poses, DRIFT, torch.Generator().manual_seed(3))
    dead = closed(0)
    assert torch.equal(dead, drifted[:, None].expand(n, t_len, t_len, 3))
    one, two = closed(1), closed(2)
    before, after = _slot_error(dead, poses), _slot_error(two, poses)
    assert float(before) > 0.2
    assert float(after) < 0.25 * float(before)
    assert float(_slot_error(one, poses)) < float(before)


def test_row_t_uses_nothing_after_frame_t() -> None:
    """Changing the frames and poses after frame ``t0`` leaves rows ``0 .. t0`` as they were."""
    poses = _laps()
    n, t_len, _ = poses.shape
    frames, oracle = _frames(n, t_len), Oracle(poses)
    t0 = 40
    later = poses.clone()
    later[:, t0 + 1 :, :2] += 0.7
    other = Oracle(later)
    kwargs = dict(passes=2, loop_std=TIGHT, max_distance=3.0, max_turn=90.0)
    first = loop_closed(
        poses, frames, DRIFT, torch.Generator().manual_seed(5), oracle, SETTINGS, **kwargs
    )  # type: ignore[arg-type]
    second = loop_closed(
        later, frames, DRIFT, torch.Generator().manual_seed(5), other, SETTINGS, **kwargs
    )  # type: ignore[arg-type]
    torch.testing.assert_close(first[:, : t0 + 1, : t0 + 1], second[:, : t0 + 1, : t0 + 1])
    assert not torch.allclose(first[:, -1], second[:, -1])


def test_refuses_other_noise_models() -> None:
    poses = _laps(1, 20)
    frames = _frames(1, 20)
    jitter = PoseNoise("jitter", 0.1, 3.0)
    with pytest.raises(ValueError, match="drift"):
        loop_closed(
            poses, frames, jitter, torch.Generator(), Oracle(poses), SETTINGS, passes=1,
            loop_std=TIGHT,
        )  # fmt: skip
    with pytest.raises(ValueError, match="passes"):
        loop_closed(
            poses, frames, DRIFT, torch.Generator(), Oracle(poses), SETTINGS, passes=-1,
            loop_std=TIGHT,
        )  # fmt: skip
