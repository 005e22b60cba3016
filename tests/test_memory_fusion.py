"""fuse_odometry: absolute poses and odometry fused by weighted least squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybrid_cdit.memory import (
    compose_pose,
    fuse_odometry,
    poses_from_actions,
    relative_pose,
    wrap_angle,
)


def _path(t_len: int, seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """True poses ``(B, T, 3)`` and the exact actions ``(B, T-1, 3)`` between them."""
    g = torch.Generator().manual_seed(seed)
    turn = 0.4 * torch.randn(batch, t_len - 1, generator=g, dtype=torch.float64)
    forward = 0.3 + 0.5 * torch.rand(batch, t_len - 1, generator=g, dtype=torch.float64)
    lateral = 0.1 * torch.randn(batch, t_len - 1, generator=g, dtype=torch.float64)
    actions = torch.stack([forward, lateral, turn], dim=-1)
    start = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).expand(batch, 3)
    poses = torch.cat([start[:, None], poses_from_actions(actions, start)], dim=1)
    return poses, actions


def _noisy(poses: torch.Tensor, xy: float, yaw: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    scale = torch.tensor([xy, xy, yaw], dtype=torch.float64)
    noisy = poses + scale * torch.randn(poses.shape, generator=g, dtype=torch.float64)
    noisy[..., 2] = wrap_angle(noisy[..., 2])
    return noisy


def _reference(
    obs: np.ndarray, act: np.ndarray, s_pos: float, s_yaw: float, a_pos: float, a_yaw: float
) -> np.ndarray:
    """Both stages as explicit weighted residual rows solved by ``numpy.linalg.lstsq`` (one
    trajectory; observations close enough to the odometry that no yaw wraps)."""
    t_len = obs.shape[0]

    def solve(observed: np.ndarray, steps: np.ndarray, s_obs: float, s_step: float) -> np.ndarray:
        rows, rhs = [], []
        for t in range(t_len):
            row = np.zeros(t_len)
            row[t] = 1 / s_obs
            rows.append(row)
            rhs.append(observed[t] / s_obs)
        for t in range(t_len - 1):
            row = np.zeros(t_len)
            row[t + 1], row[t] = 1 / s_step, -1 / s_step
            rows.append(row)
            rhs.append(steps[t] / s_step)
        return np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]

    yaw = solve(obs[:, 2], act[:, 2], s_yaw, a_yaw)
    world = np.stack(
        [
            act[:, 0] * np.cos(yaw[:-1]) - act[:, 1] * np.sin(yaw[:-1]),
            act[:, 0] * np.sin(yaw[:-1]) + act[:, 1] * np.cos(yaw[:-1]),
        ],
        axis=1,
    )
    x = solve(obs[:, 0], world[:, 0], s_pos, a_pos)
    y = solve(obs[:, 1], world[:, 1], s_pos, a_pos)
    return np.stack([x, y, yaw], axis=1)


def test_matches_an_explicit_least_squares_reference() -> None:
    poses, actions = _path(12, seed=0)
    poses[..., 2] = 0.1 * poses[..., 2]  # headings away from +-pi: no wrap in the reference
    actions = relative_pose(poses[:, 1:], poses[:, :-1])
    g = torch.Generator().manual_seed(5)
    noisy_actions = actions + 0.05 * torch.randn(actions.shape, generator=g, dtype=torch.float64)
    obs = _noisy(poses, 0.3, 0.05, seed=0)
    got = fuse_odometry(
        obs, noisy_actions, position_std=0.3, heading_std=0.05,
        action_position_std=0.05, action_heading_std=0.05,
    )  # fmt: skip
    want = _reference(obs[0].numpy(), noisy_actions[0].numpy(), 0.3, 0.05, 0.05, 0.05)
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-9)
    # the fusion lies between the two sources: closer to the truth than either
    assert float((got - poses).norm()) < float((obs - poses).norm())


def test_exact_odometry_gives_exact_relative_poses() -> None:
    poses, actions = _path(200, seed=1, batch=2)
    obs = _noisy(poses, 0.5, math.radians(15), seed=1)
    fused = fuse_odometry(
        obs, actions, position_std=0.5, heading_std=math.radians(15),
        action_position_std=0.0, action_heading_std=0.0,
    )  # fmt: skip
    i, j = torch.tensor([0, 10, 50, 199]), torch.tensor([120, 11, 180, 3])
    got = relative_pose(fused[:, i], fused[:, j])
    want = relative_pose(poses[:, i], poses[:, j])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    # what is left is one rigid error: its turn is the mean of 200 heading errors (s.d. 15 deg
    # / sqrt(200) ~ 1 deg; 3 s.d. allowed)
    turn = wrap_angle(fused[..., 2] - poses[..., 2])
    assert float((turn - turn[:, :1]).abs().max()) < 1e-3
    assert float(turn[:, 0].abs().max()) < 3 * math.radians(15) / math.sqrt(200)


def test_exact_observations_are_kept_and_unknown_frames_follow_odometry() -> None:
    poses, actions = _path(30, seed=2)
    exact = fuse_odometry(
        poses, actions + 0.1, position_std=0.0, heading_std=0.0,
        action_position_std=0.2, action_heading_std=0.2,
    )  # fmt: skip
    torch.testing.assert_close(exact, poses, rtol=0, atol=1e-6)
    known = torch.zeros(1, 30, dtype=torch.bool)
    known[0, 0] = True
    blank = poses.clone()
    blank[0, 1:] = torch.nan  # unknown rows may hold anything
    only_first = fuse_odometry(
        blank, actions, position_std=0.5, heading_std=0.2,
        action_position_std=0.05, action_heading_std=0.02, known=known,
    )  # fmt: skip
    dead_reckoned = torch.cat([poses[:, :1], poses_from_actions(actions, poses[:, 0])], dim=1)
    torch.testing.assert_close(only_first, dead_reckoned, rtol=0, atol=1e-6)


@given(
    seed=st.integers(0, 2**16),
    dx=st.floats(-5, 5),
    dy=st.floats(-5, 5),
    turn=st.floats(-math.pi, math.pi),
)
def test_moving_the_world_moves_the_fusion(seed: int, dx: float, dy: float, turn: float) -> None:
    poses, actions = _path(25, seed=seed)
    obs = _noisy(poses, 0.3, 0.2, seed=seed)
    kwargs = {
        "position_std": 0.3, "heading_std": 0.2,
        "action_position_std": 0.05, "action_heading_std": 0.03,
    }  # fmt: skip
    fused = fuse_odometry(obs, actions, **kwargs)  # type: ignore[arg-type]
    move = torch.tensor([dx, dy, turn], dtype=torch.float64)
    moved = fuse_odometry(compose_pose(move, obs), actions, **kwargs)  # type: ignore[arg-type]
    want = compose_pose(move, fused)
    torch.testing.assert_close(moved[..., :2], want[..., :2], rtol=0, atol=1e-7)
    assert float(wrap_angle(moved[..., 2] - want[..., 2]).abs().max()) < 1e-7


def test_per_step_standard_deviations_and_dtype() -> None:
    poses, actions = _path(40, seed=3)
    obs = _noisy(poses, 0.5, 0.2, seed=3).float()
    length = actions[..., :2].norm(dim=-1)
    fused = fuse_odometry(
        obs, actions.float(), position_std=torch.full((1, 40), 0.5), heading_std=0.2,
        action_position_std=0.02 * length, action_heading_std=0.01,
    )  # fmt: skip
    assert fused.dtype == torch.float32 and fused.shape == obs.shape
    assert float((fused - poses).norm()) < float((obs.double() - poses).norm())


def test_bad_inputs_are_refused() -> None:
    poses, actions = _path(6, seed=4)
    std = {
        "position_std": 0.1, "heading_std": 0.1,
        "action_position_std": 0.1, "action_heading_std": 0.1,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"actions must have shape \(1, 5, 3\), got \(1, 4, 3\)"):
        fuse_odometry(poses, actions[:, 1:], **std)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"poses must have shape \(\.\.\., T, 3\) with T >= 2"):
        fuse_odometry(poses[:, :1], actions[:, :0], **std)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heading_std must be finite and >= 0, got -1"):
        fuse_odometry(poses, actions, **{**std, "heading_std": -1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"action_position_std must broadcast to \(1, 5\)"):
        fuse_odometry(poses, actions, **{**std, "action_position_std": torch.ones(3)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="known must mark at least one frame"):
        fuse_odometry(poses, actions, known=torch.zeros(1, 6, dtype=torch.bool), **std)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"known must be a bool tensor of shape \(1, 6\)"):
        fuse_odometry(poses, actions, known=torch.ones(1, 6), **std)  # type: ignore[arg-type]
    bad = poses.clone()
    bad[0, 2, 0] = torch.nan
    with pytest.raises(ValueError, match="poses"):
        fuse_odometry(bad, actions, **std)  # type: ignore[arg-type]
