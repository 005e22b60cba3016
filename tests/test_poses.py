"""Pose conventions: NWM's local coordinates, composition, action integration, Minecraft poses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_cdit.memory import (
    compose_pose,
    heading_vector,
    minecraft_to_pose5,
    poses_from_actions,
    relative_pose,
    to_pose5,
    wrap_angle,
)

coord = st.floats(-100.0, 100.0, allow_nan=False)
angle = st.floats(-math.pi, math.pi, exclude_max=True, allow_nan=False)
pitch = st.floats(-math.pi / 2, math.pi / 2, allow_nan=False)
pose3 = st.tuples(coord, coord, angle)
pose5 = st.tuples(coord, coord, coord, pitch, angle)


def angular_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Absolute angle between ``a`` and ``b`` modulo 2 pi (float64)."""
    return torch.atan2(torch.sin(a - b), torch.cos(a - b)).abs()


def assert_same_pose(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-9) -> None:
    torch.testing.assert_close(got[..., :-1], want[..., :-1], atol=atol, rtol=0)
    assert float(angular_error(got[..., -1], want[..., -1]).max()) <= atol


# NWM's formulas, written out here in numpy as the reference.
def nwm_local(positions: np.ndarray, curr_pos: np.ndarray, curr_yaw: float) -> np.ndarray:
    c, s = math.cos(curr_yaw), math.sin(curr_yaw)
    rot = np.array([[c, -s], [s, c]])
    return (positions - curr_pos) @ rot


def nwm_angle_difference(theta1: float, theta2: float) -> float:
    delta = theta2 - theta1
    return delta - 2 * np.pi * np.floor((delta + np.pi) / (2 * np.pi))


# ----------------------------------------------------------------------------- wrap_angle


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20))
def test_wrap_angle_range_and_congruence(values):
    a = torch.tensor(values, dtype=torch.float64)
    w = wrap_angle(a)
    assert bool((w >= -math.pi).all()) and bool((w < math.pi).all())
    assert float(angular_error(w, a).max()) < 1e-9


def test_wrap_angle_boundaries_float32():
    a = torch.tensor([math.pi, -math.pi, 3 * math.pi, 2 * math.pi, -1e-8, 0.0])
    w = wrap_angle(a)
    pi32 = torch.tensor(math.pi, dtype=torch.float32)
    assert bool((w >= -pi32).all()) and bool((w < pi32).all())
    torch.testing.assert_close(w[:2], torch.full((2,), -math.pi))
    assert float(w[3]) == 0.0


# ----------------------------------------------------------------------------- relative_pose


def test_relative_pose_hand_computed():
    ref = torch.tensor([1.0, 2.0, math.pi / 2], dtype=torch.float64)
    pose = torch.tensor([1.0, 3.0, math.pi], dtype=torch.float64)
    torch.testing.assert_close(
        relative_pose(pose, ref), torch.tensor([1.0, 0.0, math.pi / 2], dtype=torch.float64)
    )
    # Straight behind a robot facing -y sits at local (-1, 0).
    ref = torch.tensor([0.0, 0.0, -math.pi / 2], dtype=torch.float64)
    pose = torch.tensor([0.0, 1.0, -math.pi / 2], dtype=torch.float64)
    torch.testing.assert_close(
        relative_pose(pose, ref), torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)
    )


@settings(max_examples=60, deadline=None)
@given(pose=pose3, ref=pose3)
def test_relative_pose_matches_nwm(pose, ref):
    got = relative_pose(
        torch.tensor(pose, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    )
    xy = nwm_local(np.array(pose[:2]), np.array(ref[:2]), ref[2])
    dyaw = nwm_angle_difference(ref[2], pose[2])
    np.testing.assert_allclose(got[:2].numpy(), xy, atol=1e-9)
    assert (
        abs(float(got[2]) - dyaw) < 1e-9 or float(angular_error(got[2], torch.tensor(dyaw))) < 1e-9
    )


@settings(max_examples=60, deadline=None)
@given(pose=pose3, ref=pose3)
def test_compose_inverts_relative_3d(pose, ref):
    p = torch.tensor(pose, dtype=torch.float64)
    r = torch.tensor(ref, dtype=torch.float64)
    assert_same_pose(compose_pose(r, relative_pose(p, r)), p)
    rel = relative_pose(p, r)
    assert_same_pose(relative_pose(compose_pose(r, rel), r), rel)


@settings(max_examples=60, deadline=None)
@given(pose=pose5, ref=pose5)
def test_compose_inverts_relative_5d(pose, ref):
    p = torch.tensor(pose, dtype=torch.float64)
    r = torch.tensor(ref, dtype=torch.float64)
    assert_same_pose(compose_pose(r, relative_pose(p, r)), p)


@settings(max_examples=30, deadline=None)
@given(pose=pose3, ref=pose3)
def test_three_d_pose_is_five_d_with_zero_z_and_pitch(pose, ref):
    p = torch.tensor(pose, dtype=torch.float64)
    r = torch.tensor(ref, dtype=torch.float64)
    torch.testing.assert_close(
        to_pose5(relative_pose(p, r)), relative_pose(to_pose5(p), to_pose5(r))
    )


def test_relative_pose_broadcasts_over_leading_dims():
    g = torch.Generator().manual_seed(0)
    poses = torch.randn(4, 1, 5, generator=g, dtype=torch.float64)
    refs = torch.randn(1, 6, 5, generator=g, dtype=torch.float64)
    rel = relative_pose(poses, refs)
    assert rel.shape == (4, 6, 5)
    assert_same_pose(rel[2, 3], relative_pose(poses[2, 0], refs[0, 3]))
    assert_same_pose(compose_pose(refs, rel), poses.expand(4, 6, 5))


def test_to_pose5():
    p3 = torch.tensor([[1.0, 2.0, 0.5]])
    torch.testing.assert_close(to_pose5(p3), torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.5]]))
    p5 = torch.randn(2, 3, 5)
    assert to_pose5(p5) is p5


def test_heading_vector():
    pose = torch.tensor([[0.0, 0.0, 0.0, math.pi / 2, 0.0], [0.0, 0.0, 0.0, 0.0, math.pi / 2]])
    torch.testing.assert_close(
        heading_vector(pose), torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), atol=1e-7, rtol=0
    )


# ----------------------------------------------------------------------------- actions


def test_poses_from_actions_hand_computed():
    actions = torch.tensor([[1.0, 0.0, math.pi / 2], [1.0, 0.0, math.pi / 2], [1.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, math.pi / 2], [1.0, 1.0, -math.pi], [0.0, 1.0, -math.pi]])
    assert_same_pose(poses_from_actions(actions), expected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 12),
    batch=st.integers(1, 3),
    five=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_poses_from_actions_matches_step_by_step_composition(steps, batch, five, seed):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randn(batch, steps, 3, generator=g, dtype=torch.float64)
    start = torch.randn(batch, 5 if five else 3, generator=g, dtype=torch.float64)
    start[:, -1] = wrap_angle(start[:, -1])
    got = poses_from_actions(actions, start)
    assert got.shape == (batch, steps, start.shape[-1])
    pose = start
    for t in range(steps):  # the reference: one composition per step
        rel = actions[:, t]
        if five:
            rel = torch.cat([rel[:, :2], torch.zeros(batch, 2, dtype=rel.dtype), rel[:, 2:]], -1)
        pose = compose_pose(pose, rel)
        assert_same_pose(got[:, t], pose, atol=1e-9)


def test_poses_from_actions_recovers_trajectory_from_relative_steps():
    g = torch.Generator().manual_seed(1)
    traj = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    traj[..., -1] = wrap_angle(traj[..., -1] * 3)
    actions = relative_pose(traj[:, 1:], traj[:, :-1])
    assert_same_pose(poses_from_actions(actions, traj[:, 0]), traj[:, 1:])


def test_poses_from_actions_start_frame_matches_nwm_dataset_deltas():
    g = torch.Generator().manual_seed(2)
    traj = torch.randn(7, 3, generator=g, dtype=torch.float64)
    traj[:, -1] = wrap_angle(traj[:, -1] * 3)
    # NWM: waypoints in the first pose's frame, then consecutive differences.
    first = traj[0].numpy()
    local = nwm_local(traj[:, :2].numpy(), first[:2], float(first[2]))
    yaw = np.array([nwm_angle_difference(float(first[2]), float(y)) for y in traj[:, 2]])
    waypoints = np.concatenate([local, yaw[:, None]], axis=1)[1:]
    deltas = np.diff(np.concatenate([np.zeros((1, 3)), waypoints]), axis=0)
    got = poses_from_actions(torch.from_numpy(deltas), traj[0], frame="start")
    assert_same_pose(got, traj[1:])


def test_poses_from_actions_default_start_and_five_d_start():
    actions = torch.tensor([[2.0, 0.0, 0.0]])
    torch.testing.assert_close(poses_from_actions(actions), torch.tensor([[2.0, 0.0, 0.0]]))
    start = torch.tensor([0.0, 0.0, 3.0, 0.25, math.pi / 2])
    torch.testing.assert_close(
        poses_from_actions(actions, start),
        torch.tensor([[0.0, 2.0, 3.0, 0.25, math.pi / 2]]),
        atol=1e-6,
        rtol=0,
    )


# ----------------------------------------------------------------------------- Minecraft


def minecraft_forward(yaw_deg: float, pitch_deg: float, convention: str) -> np.ndarray:
    """View direction in Minecraft axes (x east, y up, z south)."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    sign = 1.0 if convention == "worldmem" else -1.0  # raw yaw turns from south towards west
    return np.array(
        [sign * math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
    )


@settings(max_examples=40, deadline=None)
@given(
    x=coord,
    y=coord,
    z=coord,
    yaw=st.floats(0.0, 360.0),
    pitch=st.floats(-89.0, 89.0),
    convention=st.sampled_from(["worldmem", "minecraft"]),
)
def test_minecraft_to_pose5_maps_position_and_view_direction(x, y, z, yaw, pitch, convention):
    mc = torch.tensor([x, y, z, pitch, yaw], dtype=torch.float64)
    ours = minecraft_to_pose5(mc, convention=convention)
    torch.testing.assert_close(ours[:3], torch.tensor([x, -z, y], dtype=torch.float64))
    fx, fy, fz = minecraft_forward(yaw, pitch, convention)
    want = torch.tensor([fx, -fz, fy], dtype=torch.float64)
    torch.testing.assert_close(heading_vector(ours), want, atol=1e-9, rtol=0)


def test_minecraft_cardinal_directions():
    # WorldMem: yaw 0 faces +z (south), 90 faces +x (east); the game: 90 faces west.
    poses = torch.tensor([[0.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 90], [0.0, 0, 0, 30, 0]])
    wm = minecraft_to_pose5(poses)
    torch.testing.assert_close(wm[:, 4], torch.tensor([-math.pi / 2, 0.0, -math.pi / 2]))
    assert float(wm[2, 3]) == pytest.approx(-math.pi / 6)  # positive pitch looks down
    raw = minecraft_to_pose5(poses, convention="minecraft")
    assert float(raw[1, 4]) == pytest.approx(-math.pi)  # west


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: to_pose5(torch.zeros(2, 4)), "pose"),
        (lambda: to_pose5(torch.tensor([0.0, float("nan"), 0.0])), "pose must be finite"),
        (lambda: to_pose5(torch.zeros(3, dtype=torch.long)), "floating-point"),
        (lambda: relative_pose(torch.zeros(3), torch.zeros(5)), "same pose dimension"),
        (lambda: relative_pose(torch.zeros(3), torch.tensor([0.0, 0.0, float("inf")])), "ref"),
        (lambda: compose_pose(torch.zeros(5), torch.full((5,), float("nan"))), "rel"),
        (lambda: poses_from_actions(torch.zeros(4, 2)), "actions"),
        (lambda: poses_from_actions(torch.zeros(0, 3)), "actions"),
        (lambda: poses_from_actions(torch.full((2, 3), float("nan"))), "actions must be finite"),
        (lambda: poses_from_actions(torch.zeros(2, 3), torch.zeros(4)), "start"),
        (lambda: poses_from_actions(torch.zeros(2, 3), frame="world"), "frame"),
        (lambda: minecraft_to_pose5(torch.zeros(3)), "pose"),
        (lambda: minecraft_to_pose5(torch.zeros(5), convention="unity"), "convention"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
