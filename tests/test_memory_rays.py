"""Plücker rays of memory cameras, and the time steps a MemoryContext carries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybrid_cdit.memory import (
    MemoryBuffer,
    MemoryContext,
    build_context,
    camera_rotation,
    patch_directions,
    plucker_rays,
    retrieve,
    select_memory,
)


def _reference_rays(pose: np.ndarray, ref: np.ndarray, grid: int, fov: float) -> np.ndarray:
    """One token at a time, in float64: world ray from explicit camera axes, then dot products
    with the reference camera's axes; moment as the cross product of origin and direction."""

    def axes(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if p.shape[0] == 3:
            p = np.array([p[0], p[1], 0.0, 0.0, p[2]])
        x, y, z, pitch, yaw = p
        forward = np.array(
            [math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)]
        )
        left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
        up = np.cross(forward, left)
        return np.array([x, y, z]), forward, left, up

    o_m, f_m, l_m, u_m = axes(pose)
    o_r, f_r, l_r, u_r = axes(ref)
    t = math.tan(fov / 2)
    out = []
    for i in range(grid):
        for j in range(grid):
            u = (2 * j + 1) / grid - 1  # column, -1 left .. 1 right
            v = (2 * i + 1) / grid - 1  # row, -1 top .. 1 bottom
            world = f_m - u * t * l_m - v * t * u_m
            world = world / np.linalg.norm(world)
            d = np.array([world @ f_r, world @ l_r, world @ u_r])
            offset = o_m - o_r
            o = np.array([offset @ f_r, offset @ l_r, offset @ u_r])
            out.append(np.concatenate([d, np.cross(o, d)]))
    return np.stack(out)


def _random_poses(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(n, dim, generator=g, dtype=torch.float64) * 2
    poses[:, -1] = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi - math.pi
    if dim == 5:
        poses[:, 3] = torch.rand(n, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return poses


@pytest.mark.parametrize("dim", [3, 5])
@pytest.mark.parametrize("grid", [1, 3])
def test_rays_match_a_per_token_reference(dim, grid):
    poses, refs = _random_poses(4, dim, 0), _random_poses(4, dim, 1)
    fov = 1.2
    got = plucker_rays(poses, refs, grid, fov)
    assert got.shape == (4, grid * grid, 6) and got.dtype == torch.float64
    for b in range(4):
        want = _reference_rays(poses[b].numpy(), refs[b].numpy(), grid, fov)
        np.testing.assert_allclose(got[b].numpy(), want, atol=1e-12)


def test_identical_camera_gives_the_query_rays():
    pose = _random_poses(3, 5, 2)
    rays = plucker_rays(pose, pose, 4, 1.0)
    own = patch_directions(4, 1.0, dtype=torch.float64)
    torch.testing.assert_close(rays[..., :3], own.expand(3, 16, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(rays[..., 3:], torch.zeros(3, 16, 3, dtype=torch.float64))


def test_pure_translation_changes_only_the_moment():
    ref = _random_poses(3, 5, 3)
    moved = ref.clone()
    moved[:, :3] += torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    still, shifted = plucker_rays(ref, ref, 3, 1.3), plucker_rays(moved, ref, 3, 1.3)
    torch.testing.assert_close(shifted[..., :3], still[..., :3], atol=1e-12, rtol=0)
    assert (shifted[..., 3:] - still[..., 3:]).abs().amax() > 0.1


def test_rays_are_rows_top_to_bottom_and_columns_left_to_right():
    directions = patch_directions(2, math.pi / 2)  # tan(45 deg) = 1: corners at +-0.5
    s = 1 / math.sqrt(1.5)
    expected = torch.tensor([[1, 0.5, 0.5], [1, -0.5, 0.5], [1, 0.5, -0.5], [1, -0.5, -0.5]]) * s
    torch.testing.assert_close(directions, expected)


def test_camera_rotation_is_a_rotation_looking_along_the_heading():
    pose = _random_poses(5, 5, 4)
    rot = camera_rotation(pose)
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64))
    pitch, yaw = pose[:, 3], pose[:, 4]
    heading = torch.stack([pitch.cos() * yaw.cos(), pitch.cos() * yaw.sin(), pitch.sin()], dim=-1)
    torch.testing.assert_close(rot[..., 0], heading)


def test_three_d_poses_are_five_d_poses_with_zero_height_and_pitch():
    pose3, ref3 = _random_poses(4, 3, 5), _random_poses(4, 3, 6)

    def lift(p: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(p.shape[0], 2, dtype=p.dtype)
        return torch.cat([p[:, :2], zeros, p[:, 2:]], dim=-1)

    torch.testing.assert_close(
        plucker_rays(pose3, ref3, 2, 1.0), plucker_rays(lift(pose3), lift(ref3), 2, 1.0)
    )


def test_rays_broadcast_memory_slots_against_the_query():
    poses = _random_poses(6, 3, 7).reshape(2, 3, 3)
    query = _random_poses(2, 3, 8)
    got = plucker_rays(poses, query[:, None], 2, 1.0)
    assert got.shape == (2, 3, 4, 6)
    torch.testing.assert_close(got[1, 2], plucker_rays(poses[1, 2], query[1], 2, 1.0))


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: patch_directions(0, 1.0), "grid_size"),
        (lambda: patch_directions(2, 0.0), "fov"),
        (lambda: patch_directions(2, math.pi), "fov"),
        (lambda: plucker_rays(torch.zeros(2, 3), torch.zeros(2, 5), 2, 1.0), "same pose dim"),
        (lambda: plucker_rays(torch.zeros(2, 4), torch.zeros(2, 4), 2, 1.0), "pose"),
        (lambda: plucker_rays(torch.full((2, 3), math.nan), torch.zeros(2, 3), 2, 1.0), "finite"),
    ],
)
def test_ray_arguments_are_validated(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


# --------------------------------------------------------------------- steps on contexts


def _context(**fields: torch.Tensor) -> MemoryContext:
    base = {
        "frames": torch.zeros(2, 3, 4, 2, 2),
        "poses": torch.zeros(2, 3, 3),
        "scores": torch.ones(2, 3),
        "mask": torch.ones(2, 3, dtype=torch.bool),
        "query_pose": torch.zeros(2, 3),
    }
    return MemoryContext(**{**base, **fields})


def test_context_ages_need_both_steps():
    steps, now = torch.tensor([[0, 1, 2], [5, 6, 7]]), torch.tensor([3, 10])
    assert _context().ages is None
    assert _context(steps=steps).ages is None
    assert _context(query_step=now).ages is None
    ages = _context(steps=steps, query_step=now).ages
    torch.testing.assert_close(ages, torch.tensor([[3.0, 2.0, 1.0], [5.0, 4.0, 3.0]]))
    moved = _context(steps=steps, query_step=now).to(dtype=torch.float64)
    assert torch.equal(moved.steps, steps) and torch.equal(moved.query_step, now)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"steps": torch.zeros(2, 2, dtype=torch.long)}, r"steps must have shape \(B=2, k=3\)"),
        ({"steps": torch.zeros(2, 3, dtype=torch.bool)}, "steps must have an integer or floating"),
        ({"steps": torch.full((2, 3), math.inf)}, "steps must be finite"),
        ({"query_step": torch.zeros(3, dtype=torch.long)}, r"query_step must have shape \(B=2\)"),
        ({"query_step": torch.zeros(2, 1)}, "query_step must have shape"),
        ({"query_step": torch.tensor([0.0, math.nan])}, "query_step must be finite"),
    ],
)
def test_context_steps_are_validated(fields, needle):
    with pytest.raises(ValueError, match=needle):
        _context(**fields)


def test_buffer_retrieve_fills_steps_and_query_step():
    buffer = MemoryBuffer(2, 4, frame_shape=(1, 2, 2), pose_dim=3)
    for i in range(3):
        pose = torch.tensor([[float(i), 0.0, 0.0], [0.0, float(-i), 0.0]])
        buffer.add(torch.full((2, 1, 2, 2), float(i)), pose, step=torch.tensor([10 * i, i]))
    query = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    context = buffer.retrieve(query, 2, threshold=0.0)
    # Frames were filled with their write index: steps must belong to the frames retrieved.
    written = context.frames[:, :, 0, 0, 0].long()
    torch.testing.assert_close(context.steps, torch.stack([10 * written[0], written[1]]))
    torch.testing.assert_close(context.query_step, torch.tensor([21, 3]))
    explicit = buffer.retrieve(query, 2, threshold=0.0, query_step=torch.tensor([30, 4]))
    torch.testing.assert_close(explicit.query_step, torch.tensor([30, 4]))
    buffer.add(torch.zeros(2, 1, 2, 2), query, step=torch.tensor([40, 5]))
    torch.testing.assert_close(context.query_step, torch.tensor([21, 3]))  # a copy


def test_retrieve_and_build_context_pass_steps_through():
    g = torch.Generator().manual_seed(0)
    frames, poses = torch.randn(2, 5, 1, 2, 2, generator=g), torch.randn(2, 5, 3, generator=g)
    steps, now = torch.arange(10).reshape(2, 5), torch.tensor([7, 9])
    context = retrieve(frames, poses, poses[:, 0], 3, steps=steps, query_step=now, threshold=0)
    selection = select_memory(poses, poses[:, 0], 3, steps=steps, threshold=0)
    rows = torch.arange(2)[:, None]
    torch.testing.assert_close(context.steps, steps[rows, selection.indices])
    torch.testing.assert_close(context.query_step, now)
    plain = retrieve(frames, poses, poses[:, 0], 3, threshold=0)
    assert plain.steps is None and plain.query_step is None
    built = build_context(
        frames[:, :3], poses[:, :3], selection, poses[:, 0], steps=steps[:, :3], query_step=now
    )
    torch.testing.assert_close(built.ages, (now[:, None] - steps[:, :3]).float())
