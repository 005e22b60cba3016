"""pose_graph, measure_loops and close_loops: odometry and loop closures solved by weighted
least squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hybrid_cdit.memory import (
    SlotPoseRefiner,
    close_loops,
    compose_pose,
    measure_loops,
    pose_graph,
    poses_from_actions,
    relative_pose,
)


def _path(t_len: int, seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """True poses ``(B, T, 3)`` and the exact steps ``(B, T-1, 3)`` between them."""
    g = torch.Generator().manual_seed(seed)
    turn = 0.4 * torch.randn(batch, t_len - 1, generator=g, dtype=torch.float64)
    forward = 0.3 + 0.5 * torch.rand(batch, t_len - 1, generator=g, dtype=torch.float64)
    lateral = 0.1 * torch.randn(batch, t_len - 1, generator=g, dtype=torch.float64)
    steps = torch.stack([forward, lateral, turn], dim=-1)
    start = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).expand(batch, 3)
    poses = torch.cat([start[:, None], poses_from_actions(steps, start)], dim=1)
    return poses, steps


def _noise(shape: tuple[int, ...], xy: float, yaw: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([xy, xy, yaw], dtype=torch.float64) * torch.randn(
        shape, generator=g, dtype=torch.float64
    )


def _reference(
    start: np.ndarray,
    steps: np.ndarray,
    edges: list[tuple[int, int, np.ndarray]],
    s_step: tuple[float, float],
    s_loop: tuple[float, float],
) -> np.ndarray:
    """Both stages as explicit weighted residual rows solved by ``numpy.linalg.lstsq`` (one
    trajectory; loop turns close enough to the odometry's that none wraps)."""
    t_len = steps.shape[0] + 1
    anchor = 1e4

    def solve(first: np.ndarray, moves: list[tuple[int, int, np.ndarray, float]]) -> np.ndarray:
        row0 = np.zeros(t_len)
        row0[0] = anchor
        rows, rhs = [row0], [anchor * first]
        for a, b, value, std in moves:
            row = np.zeros(t_len)
            row[b], row[a] = 1 / std, -1 / std
            rows.append(row)
            rhs.append(value / std)
        return np.linalg.lstsq(np.stack(rows), np.stack(rhs), rcond=None)[0]

    odometry = [(t, t + 1, steps[t]) for t in range(t_len - 1)]
    yaw = solve(
        start[2:],
        [(a, b, m[2:], s_step[1]) for a, b, m in odometry]
        + [(a, b, m[2:], s_loop[1]) for a, b, m in edges],
    )[:, 0]

    def rotated(m: np.ndarray, angle: float) -> np.ndarray:
        c, s = math.cos(angle), math.sin(angle)
        return np.array([c * m[0] - s * m[1], s * m[0] + c * m[1]])

    xy = solve(
        start[:2],
        [(a, b, rotated(m, yaw[a]), s_step[0]) for a, b, m in odometry]
        + [(a, b, rotated(m, yaw[a]), s_loop[0]) for a, b, m in edges],
    )
    return np.concatenate([xy, yaw[:, None]], axis=1)


def _solve(start, steps, a, b, rel, s_step=(0.05, 0.02), s_loop=(0.1, 0.03), mask=None):  # type: ignore[no-untyped-def]
    return pose_graph(
        start, steps, a, b, rel,
        step_position_std=s_step[0], step_heading_std=s_step[1],
        loop_position_std=s_loop[0], loop_heading_std=s_loop[1], loop_mask=mask,
    )  # fmt: skip


def test_without_loops_it_integrates_the_odometry() -> None:
    poses, steps = _path(12, seed=0, batch=2)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = _solve(poses[:, 0], steps, empty, empty, torch.zeros(2, 0, 3))
    torch.testing.assert_close(out, poses, atol=1e-9, rtol=0)


def test_matches_explicit_least_squares() -> None:
    """Noisy odometry and noisy loops against the residual rows written out in numpy."""
    poses, steps = _path(15, seed=1)
    noisy = steps + _noise(steps.shape, 0.05, 0.02, seed=2)
    a = torch.tensor([[2, 3, 5, 1]])
    b = torch.tensor([[10, 12, 14, 8]])
    rel = relative_pose(poses[0, b[0]], poses[0, a[0]])[None] + _noise((1, 4, 3), 0.1, 0.03, 3)
    out = _solve(poses[:, 0], noisy, a, b, rel)
    edges = [
        (int(i), int(j), rel[0, e].numpy()) for e, (i, j) in enumerate(zip(a[0], b[0], strict=True))
    ]
    expected = _reference(poses[0, 0].numpy(), noisy[0].numpy(), edges, (0.05, 0.02), (0.1, 0.03))
    np.testing.assert_allclose(out[0, :, :2].numpy(), expected[:, :2], atol=1e-7)
    wrapped = (out[0, :, 2].numpy() - expected[:, 2] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-7)


def test_exact_loops_remove_the_drift_they_see() -> None:
    """Drifting odometry plus one exact, confident loop from frame 0 to the last frame: the
    last frame lands on its true pose; without the loop it is far off."""
    poses, steps = _path(30, seed=4)
    noisy = steps + _noise(steps.shape, 0.05, 0.03, seed=5)
    rel = relative_pose(poses[:, -1], poses[:, 0])[:, None]
    a, b = torch.tensor([[0]]), torch.tensor([[29]])
    closed = _solve(poses[:, 0], noisy, a, b, rel, s_loop=(1e-4, 1e-4))
    drifted = _solve(poses[:, 0], noisy, a, b, rel, mask=torch.zeros(1, 1, dtype=torch.bool))
    assert float((drifted[0, -1, :2] - poses[0, -1, :2]).norm()) > 0.3
    torch.testing.assert_close(closed[0, -1], poses[0, -1], atol=1e-5, rtol=0)


@given(
    seed=st.integers(0, 2**16),
    shift=st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(-3, 3)),
)
def test_moving_the_start_moves_the_whole_solution_rigidly(
    seed: int, shift: tuple[float, float, float]
) -> None:
    """Everything but the start is relative, so a rigid change of the start pose carries the
    solution with it."""
    poses, steps = _path(10, seed=seed)
    noisy = steps + _noise(steps.shape, 0.05, 0.02, seed=seed + 1)
    a, b = torch.tensor([[0, 2, 4]]), torch.tensor([[7, 9, 8]])
    rel = relative_pose(poses[0, b[0]], poses[0, a[0]])[None] + _noise((1, 3, 3), 0.1, 0.03, seed)
    out = _solve(poses[:, 0], noisy, a, b, rel)
    moved_start = compose_pose(torch.tensor(shift, dtype=torch.float64)[None], poses[:, 0])
    moved = _solve(moved_start, noisy, a, b, rel)
    expected = compose_pose(moved_start[:, None], relative_pose(out, poses[:, :1]))
    torch.testing.assert_close(
        relative_pose(moved, expected), torch.zeros_like(moved), atol=1e-7, rtol=0
    )


def test_masked_loops_are_ignored_whatever_they_hold() -> None:
    poses, steps = _path(10, seed=6, batch=2)
    noisy = steps + _noise(steps.shape, 0.05, 0.02, seed=7)
    a, b = torch.tensor([[1, 2], [0, 3]]), torch.tensor([[8, 9], [6, 7]])
    rel = relative_pose(
        poses.gather(1, b[..., None].expand(-1, -1, 3)),
        poses.gather(1, a[..., None].expand(-1, -1, 3)),
    )
    mask = torch.tensor([[True, False], [False, True]])
    junk = rel.clone()
    junk[~mask] = float("nan")
    with_junk = _solve(poses[:, 0], noisy, torch.where(mask, a, 99), b, junk, mask=mask)
    kept = [
        _solve(
            poses[i : i + 1, 0],
            noisy[i : i + 1],
            a[i : i + 1, mask[i]],
            b[i : i + 1, mask[i]],
            rel[i : i + 1, mask[i]],
        )
        for i in range(2)
    ]
    torch.testing.assert_close(with_junk, torch.cat(kept), atol=1e-9, rtol=0)


def test_bad_arguments_name_themselves() -> None:
    poses, steps = _path(6, seed=8)
    a, b = torch.tensor([[0]]), torch.tensor([[4]])
    rel = torch.zeros(1, 1, 3, dtype=torch.float64)
    cases = {
        "start": dict(start=poses[0, 0]),
        "loop_to": dict(b=torch.tensor([[6]])),
        "loop_from": dict(a=torch.tensor([[0.0]])),
        "loop_poses": dict(rel=torch.zeros(1, 2, 3, dtype=torch.float64)),
        "loop_mask": dict(mask=torch.ones(1, 1)),
        "step_position_std": dict(s_step=(-1.0, 0.1)),
        "loop_heading_std": dict(s_loop=(0.1, float("nan"))),
    }
    for name, change in cases.items():
        args = dict(start=poses[:, 0], steps=steps, a=a, b=b, rel=rel)
        args.update(change)
        with pytest.raises(ValueError, match=name):
            _solve(**args)
    with pytest.raises(ValueError, match="steps"):
        _solve(poses[:, 0], steps[..., :2], a, b, rel)


class _Oracle(SlotPoseRefiner):
    """Returns the true relative pose of a pair; frames carry their frame index."""

    def __init__(self, poses: torch.Tensor) -> None:
        super().__init__(in_channels=1, width=1, hidden=1)
        self.poses = poses

    def forward(
        self, reference: torch.Tensor, frames: torch.Tensor, prior: torch.Tensor
    ) -> torch.Tensor:
        a, b = reference[:, 0, 0, 0].long(), frames[:, 0, 0, 0].long()
        return relative_pose(self.poses[b], self.poses[a]).to(prior.dtype)


def _two_laps(t_len: int = 40) -> torch.Tensor:
    angle = torch.linspace(0, 4 * math.pi, t_len, dtype=torch.float64)
    xy = 2.0 * torch.stack([angle.cos(), angle.sin()], -1)
    return torch.cat([xy, (angle + math.pi / 2)[:, None]], -1)[None]


def test_close_loops_with_an_oracle_undoes_the_drift_and_drops_false_pairs() -> None:
    poses = _two_laps()
    t_len = poses.shape[1]
    steps = relative_pose(poses[:, 1:], poses[:, :-1])
    noisy = steps + _noise(steps.shape, 0.0, 0.05, seed=9)  # heading drift
    half = t_len // 2
    second = torch.arange(half + 2, t_len)
    first = second - half  # the same place one lap earlier
    false_to = (first + half // 2) % half  # the far side of the circle
    loop_from = torch.cat([second, second])[None]
    loop_to = torch.cat([first, false_to])[None]
    frames = torch.arange(t_len, dtype=torch.float32)[None, :, None, None, None].expand(
        1, t_len, 1, 2, 2
    )
    oracle = _Oracle(poses[0])
    kwargs = dict(step_position_std=0.05, step_heading_std=0.05, loop_position_std=0.01)
    closed = close_loops(poses[:, 0], noisy, frames, loop_from, loop_to, oracle, passes=2, **kwargs)  # type: ignore[arg-type]
    nothing = torch.zeros(1, loop_from.shape[1], 3, dtype=torch.float64)
    dead = pose_graph(
        poses[:, 0], noisy, loop_from, loop_to, nothing, step_position_std=0.05,
        step_heading_std=0.05, loop_position_std=0.01, loop_heading_std=0.01,
        loop_mask=torch.zeros_like(loop_from, dtype=torch.bool),
    )  # fmt: skip

    def pair_error(p: torch.Tensor) -> float:
        seen = relative_pose(p[0, first], p[0, second])
        truth = relative_pose(poses[0, first], poses[0, second])
        return float((seen - truth)[:, :2].norm(dim=-1).max())

    assert pair_error(dead) > 0.5
    assert pair_error(closed) < 0.05
    # the far pairs are measured more than max_distance apart, so they are not used
    measured, same = measure_loops(
        oracle, frames[0, loop_from[0]], frames[0, loop_to[0]], nothing[0],
        max_distance=1.2, max_turn=math.radians(50),
    )  # fmt: skip
    n = second.shape[0]
    assert bool(same[:n].all()) and not bool(same[n:].any())
    torch.testing.assert_close(
        measured, relative_pose(poses[0, loop_to[0]], poses[0, loop_from[0]])
    )


def test_close_loops_with_an_untrained_refiner_keeps_dead_reckoning() -> None:
    """An untrained refiner returns its prior, which the dead-reckoned poses already satisfy."""
    poses, steps = _path(12, seed=10)
    noisy = steps + _noise(steps.shape, 0.05, 0.02, seed=11)
    frames = torch.randn(1, 12, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    refiner = SlotPoseRefiner(in_channels=2, width=2, hidden=4).eval()
    a, b = torch.tensor([[6, 9, 11]]), torch.tensor([[1, 2, 3]])
    out = close_loops(
        poses[:, 0], noisy, frames, a, b, refiner, step_position_std=0.05, step_heading_std=0.02,
        max_distance=100.0, max_turn=3.0,
    )  # fmt: skip
    dead = torch.cat([poses[:, :1], poses_from_actions(noisy, poses[:, 0])], dim=1)
    torch.testing.assert_close(out, dead, atol=1e-6, rtol=0)  # the refiner runs in float32


def test_loop_helpers_refuse_bad_arguments() -> None:
    poses, steps = _path(6, seed=12)
    frames = torch.zeros(1, 6, 2, 8, 8)
    refiner = SlotPoseRefiner(in_channels=2, width=2, hidden=4).eval()
    a, b = torch.tensor([[4]]), torch.tensor([[1]])
    common = dict(step_position_std=0.05, step_heading_std=0.02)
    with pytest.raises(ValueError, match="passes"):
        close_loops(poses[:, 0], steps, frames, a, b, refiner, passes=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frames"):
        close_loops(poses[:, 0], steps, frames[:, :5], a, b, refiner, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refiner"):
        measure_loops(
            torch.nn.Identity(),
            frames[0],
            frames[0],
            torch.zeros(6, 3),
            max_distance=1.0,
            max_turn=1.0,
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_distance"):
        measure_loops(
            refiner, frames[0], frames[0], torch.zeros(6, 3), max_distance=0.0, max_turn=1.0
        )
