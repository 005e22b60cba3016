"""Camera rays of memory frames in the query camera's frame (Plücker coordinates).

Pinhole camera model, in the pose convention of :mod:`.poses`: a pose's camera sits at its
position (``z = 0`` for 3-D poses) and looks along :func:`~.poses.heading_vector` (yaw, then
pitch up). Camera axes are ``forward``, ``left`` and ``up``, the pose convention seen from the
camera: ``left = (-sin yaw, cos yaw, 0)`` and ``up = forward x left`` (``+z`` at zero pitch).
An image of ``G x G`` patches (square, so the vertical field of view equals the horizontal one)
has row 0 at the top and column 0 on the left; the ray through the centre of patch ``(i, j)``
has camera-frame direction
``forward - u tan(fov/2) left - v tan(fov/2) up``, with ``u = (2j + 1)/G - 1`` and
``v = (2i + 1)/G - 1``, normalised.

A ray with unit direction ``d`` through the point ``o`` has Plücker coordinates ``(d, o x d)``
(direction and moment): they do not depend on which point of the ray ``o`` is, and the moment
is zero exactly for rays through the origin, so rays of the query camera itself have zero moment.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_positive_int
from ._checks import check_real
from .poses import check_pose, to_pose5

__all__ = [
    "alignment_softening",
    "camera_rotation",
    "patch_directions",
    "plucker_rays",
    "ray_angle_std",
]


def camera_rotation(pose: Tensor) -> Tensor:
    """Rotation ``(..., 3, 3)`` whose columns are a pose's camera axes (forward, left, up) in
    world coordinates; it maps camera-frame vectors to world vectors.

    Args:
        pose: ``(..., P)`` poses, ``P`` 3 or 5 (pitch 0 for 3-D poses).
    """
    pose5 = to_pose5(check_pose("pose", pose))
    pitch, yaw = pose5[..., 3], pose5[..., 4]
    cp, sp, cy, sy = torch.cos(pitch), torch.sin(pitch), torch.cos(yaw), torch.sin(yaw)
    zero = torch.zeros_like(yaw)
    forward = torch.stack([cp * cy, cp * sy, sp], dim=-1)
    left = torch.stack([-sy, cy, zero], dim=-1)
    up = torch.stack([-sp * cy, -sp * sy, cp], dim=-1)
    return torch.stack([forward, left, up], dim=-1)


def check_fov(fov: object) -> float:
    """``fov`` as a float if it is a field of view in ``(0, pi)`` radians, else raise
    ``ValueError`` naming it."""
    value = check_real("fov", fov, positive=True)
    if value >= math.pi:
        raise ValueError(f"fov must be in (0, pi) radians, got {value!r}")
    return value


def patch_directions(
    grid_size: int,
    fov: float,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Unit camera-frame directions ``(G*G, 3)`` (forward, left, up) of the rays through the
    centres of a ``G x G`` patch grid, row-major (the order of patch tokens).

    Args:
        grid_size: ``G``, patches per side.
        fov: horizontal (and vertical) field of view in radians, in ``(0, pi)``.
    """
    check_positive_int("grid_size", grid_size)
    fov = check_fov(fov)
    centres = (2 * torch.arange(grid_size, device=device, dtype=dtype) + 1) / grid_size - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    half = math.tan(fov / 2)
    directions = torch.stack([torch.ones_like(u), -u * half, -v * half], dim=-1).reshape(-1, 3)
    return torch.nn.functional.normalize(directions, dim=-1)


def plucker_rays(pose: Tensor, ref: Tensor, grid_size: int, fov: float) -> Tensor:
    """Rays through the patch centres of the cameras at ``pose``, in the camera frame of ``ref``.

    Args:
        pose: ``(..., P)`` poses of the cameras whose rays are wanted (memory frames).
        ref: ``(..., P)`` reference poses (the query), broadcastable against ``pose``.
        grid_size: ``G``, patches per image side.
        fov: horizontal field of view in radians (the vertical one is equal: square images).

    Returns:
        ``(..., G*G, 6)``: per patch, row-major, the unit direction ``d`` and the moment
        ``o x d`` (``o`` the camera position) in ``ref``'s camera frame (forward, left, up).
        For ``pose == ref`` the directions are :func:`patch_directions` and the moments zero.
    """
    pose = check_pose("pose", pose)
    ref = check_pose("ref", ref)
    if pose.shape[-1] != ref.shape[-1]:
        raise ValueError(
            f"pose and ref must have the same pose dimension, got pose {tuple(pose.shape)} "
            f"and ref {tuple(ref.shape)}"
        )
    pose, ref = torch.broadcast_tensors(to_pose5(pose), to_pose5(ref))  # type: ignore[no-untyped-call]
    ref_rot = camera_rotation(ref)
    relative = ref_rot.transpose(-1, -2) @ camera_rotation(pose)  # (..., 3, 3)
    origin = (ref_rot.transpose(-1, -2) @ (pose[..., :3] - ref[..., :3]).unsqueeze(-1))[..., 0]
    cam = patch_directions(grid_size, fov, device=pose.device, dtype=pose.dtype)
    directions = torch.einsum("...ij,gj->...gi", relative, cam)
    moments = torch.linalg.cross(origin.unsqueeze(-2).expand_as(directions), directions, dim=-1)
    return torch.cat([directions, moments], dim=-1)


def ray_angle_std(position_std: Tensor, heading_std: Tensor, depth: float) -> Tensor:
    """Standard deviation, in radians, of the view-ray error a pose error implies (small angles).

    A heading error turns every ray by itself; a lateral position error ``e`` turns the ray to a
    point ``depth`` away by about ``e / depth``. Independent errors add in variance:
    ``sqrt(heading_std**2 + (position_std / depth)**2)``, the value
    :class:`~hybrid_cdit.memory.MemoryContext` takes as ``ray_std``.

    Args:
        position_std: ``(...)`` s.d. of the position error per axis of a slot's pose relative
            to the query pose, in pose units (``inf`` for an unknown pose).
        heading_std: ``(...)`` s.d. of the relative heading error, radians (broadcasts with
            ``position_std``).
        depth: typical distance from the camera to what it sees, in pose units, finite > 0.

    Returns:
        ``(...)`` the broadcast shape, floating.
    """
    depth = check_real("depth", depth, positive=True)
    for name, value in (("position_std", position_std), ("heading_std", heading_std)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {value!r:.80}")
        if bool(torch.isnan(value).any()) or bool((value < 0).any()):
            raise ValueError(f"{name} must be >= 0 (inf for unknown), got NaN or negative values")
    return torch.hypot(heading_std, position_std / depth)


def alignment_softening(ray_std: Tensor, spacing: float) -> Tensor:
    """Per-slot factor ``s**2 / (s**2 + ray_std**2)`` on ray distances, ``s = spacing`` the
    angle between neighbouring memory tokens (radians): a ray distance is about
    ``(angle / s)**2``, and a Gaussian direction error of s.d. ``ray_std`` widens the angular
    tolerance from ``s`` to ``sqrt(s**2 + ray_std**2)``. 1 for exact poses, 0 for unknown ones.

    Args:
        ray_std: ``(N, k)`` from :attr:`MemoryContext.ray_std`.
        spacing: radians, > 0.

    Returns:
        ``(N, k)`` in ``[0, 1]``, ``ray_std``'s dtype.
    """
    s2 = torch.full_like(ray_std, spacing * spacing)
    return s2 / (s2 + ray_std.square())  # a tensor numerator: exactly 1 where ray_std is 0
