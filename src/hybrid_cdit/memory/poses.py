"""Pose conventions and pose arithmetic, batched over any leading dimensions.

One convention, extending NWM's navigation poses:

- ``(x, y)`` is the ground plane, ``z`` points up;
- ``yaw`` is the heading about ``z``, counter-clockwise from ``+x`` (NWM's convention);
- ``pitch`` is positive when looking up;
- angles are in radians.

Two layouts are accepted everywhere: ``(x, y, yaw)`` (``P = 3``, NWM) and
``(x, y, z, pitch, yaw)`` (``P = 5``, the seed and WorldMem). A 3-D pose is the 5-D pose with
``z = pitch = 0``. Every function here broadcasts over leading batch dimensions ``(...)`` and
rejects non-finite poses with a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._validation import check_finite, check_tensor

__all__ = [
    "POSE_DIMS",
    "check_pose",
    "compose_pose",
    "heading_vector",
    "minecraft_to_pose5",
    "pose_positions",
    "poses_from_actions",
    "relative_pose",
    "to_pose5",
    "view_direction",
    "wrap_angle",
]

POSE_DIMS: tuple[int, int] = (3, 5)
"""Accepted pose sizes: 3 ``(x, y, yaw)`` and 5 ``(x, y, z, pitch, yaw)``."""

_TWO_PI = 2.0 * math.pi


def check_pose(name: str, pose: object, pose_dim: int | None = None) -> Tensor:
    """Validate a pose tensor ``(..., P)`` and return it.

    Args:
        name: the argument's name, used in error messages.
        pose: the candidate pose tensor ``(..., P)``.
        pose_dim: required ``P``; None accepts 3 or 5.

    Raises:
        TypeError: ``pose`` is not a tensor.
        ValueError: ``pose`` has no dimension, a last dimension other than 3 or 5 (or
            ``pose_dim``), a non floating-point dtype, or non-finite values.
    """
    tensor = check_tensor(name, pose)
    if tensor.dim() == 0:
        raise ValueError(f"{name} must have shape (..., P) with P in {POSE_DIMS}, got shape ()")
    size = int(tensor.shape[-1])
    if pose_dim is None and size not in POSE_DIMS:
        raise ValueError(
            f"{name} must have a last dimension of 3 (x, y, yaw) or 5 (x, y, z, pitch, yaw), "
            f"got shape {tuple(tensor.shape)}"
        )
    if pose_dim is not None and size != pose_dim:
        raise ValueError(
            f"{name} must have pose dimension P={pose_dim}, got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {tensor.dtype}")
    return check_finite(name, tensor)


def _check_same_dim(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same pose dimension, got "
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)}"
        )


def wrap_angle(angle: Tensor) -> Tensor:
    """Wrap angles (radians) to ``[-pi, pi)``, elementwise; any shape.

    Uses NWM's ``a - 2 pi floor((a + pi) / 2 pi)``, followed by a guard so that float rounding
    never returns a value at or above ``pi`` (as represented in the tensor's dtype).
    """
    check_tensor("angle", angle)
    if not angle.is_floating_point():
        raise ValueError(f"angle must have a floating-point dtype, got {angle.dtype}")
    wrapped = angle - _TWO_PI * torch.floor((angle + math.pi) / _TWO_PI)
    wrapped = torch.where(wrapped >= math.pi, wrapped - _TWO_PI, wrapped)
    return torch.where(wrapped < -math.pi, wrapped + _TWO_PI, wrapped)


def to_pose5(pose: Tensor) -> Tensor:
    """``(..., 3)`` ``(x, y, yaw)`` or ``(..., 5)`` -> ``(..., 5)`` ``(x, y, z, pitch, yaw)``.

    A 3-D pose gets ``z = pitch = 0``; a 5-D pose is returned unchanged (same tensor).
    """
    pose = check_pose("pose", pose)
    if pose.shape[-1] == 5:
        return pose
    zeros = torch.zeros_like(pose[..., :2])
    return torch.cat([pose[..., :2], zeros, pose[..., 2:3]], dim=-1)


def pose_positions(pose: Tensor) -> Tensor:
    """The position part: ``(..., 3)`` -> ``(..., 2)`` ``(x, y)``; ``(..., 5)`` -> ``(x, y, z)``."""
    pose = check_pose("pose", pose)
    return pose[..., :2] if pose.shape[-1] == 3 else pose[..., :3]


def heading_vector(pose: Tensor) -> Tensor:
    """Unit view direction ``(..., 3)`` in world axes for poses ``(..., 3 | 5)``.

    ``(cos(pitch) cos(yaw), cos(pitch) sin(yaw), sin(pitch))``; pitch is 0 for 3-D poses.
    """
    return view_direction(check_pose("pose", pose))


def view_direction(pose: Tensor) -> Tensor:
    """:func:`heading_vector` without validation, for hot paths with checked inputs."""
    yaw = pose[..., -1]
    if pose.shape[-1] == 3:
        return torch.stack([torch.cos(yaw), torch.sin(yaw), torch.zeros_like(yaw)], dim=-1)
    pitch = pose[..., 3]
    cos_pitch = torch.cos(pitch)
    return torch.stack(
        [cos_pitch * torch.cos(yaw), cos_pitch * torch.sin(yaw), torch.sin(pitch)], dim=-1
    )


def _rotate(xy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``(..., 2)`` vectors counter-clockwise by the angle of ``(cos, sin)``."""
    x, y = xy[..., 0], xy[..., 1]
    return torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)


def relative_pose(pose: Tensor, ref: Tensor) -> Tensor:
    """``pose`` expressed in the frame of ``ref``.

    The world offset of the position is rotated by ``-yaw_ref`` about ``z``; ``z`` and ``pitch``
    are plain differences (pitch is not wrapped: it lives in ``[-pi/2, pi/2]``); the yaw
    difference ``yaw - yaw_ref`` is wrapped to ``[-pi, pi)``. For 3-D poses this equals NWM's
    ``to_local_coords(pos, pos_ref, yaw_ref)`` with ``angle_difference(yaw_ref, yaw)``.

    Args:
        pose: ``(..., P)`` absolute poses.
        ref: ``(..., P)`` reference poses, broadcastable against ``pose``.

    Returns:
        ``(..., P)`` relative poses, ``P`` as the inputs'.
    """
    pose = check_pose("pose", pose)
    ref = check_pose("ref", ref)
    _check_same_dim("pose", pose, "ref", ref)
    yaw_ref = ref[..., -1]
    offset = _rotate(pose[..., :2] - ref[..., :2], torch.cos(yaw_ref), -torch.sin(yaw_ref))
    dyaw = wrap_angle(pose[..., -1] - yaw_ref).unsqueeze(-1)
    if pose.shape[-1] == 3:
        return torch.cat([offset, dyaw], dim=-1)
    return torch.cat([offset, pose[..., 2:4] - ref[..., 2:4], dyaw], dim=-1)


def compose_pose(ref: Tensor, rel: Tensor) -> Tensor:
    """The absolute pose of ``rel`` given in the frame of ``ref``: the inverse of
    :func:`relative_pose`, so ``compose_pose(ref, relative_pose(p, ref)) == p`` for poses whose
    yaw lies in ``[-pi, pi)``.

    Args:
        ref: ``(..., P)`` reference poses.
        rel: ``(..., P)`` relative poses, broadcastable against ``ref``.

    Returns:
        ``(..., P)`` absolute poses with yaw wrapped to ``[-pi, pi)``.
    """
    ref = check_pose("ref", ref)
    rel = check_pose("rel", rel)
    _check_same_dim("ref", ref, "rel", rel)
    yaw_ref = ref[..., -1]
    xy = ref[..., :2] + _rotate(rel[..., :2], torch.cos(yaw_ref), torch.sin(yaw_ref))
    yaw = wrap_angle(yaw_ref + rel[..., -1]).unsqueeze(-1)
    if ref.shape[-1] == 3:
        return torch.cat([xy, yaw], dim=-1)
    return torch.cat([xy, ref[..., 2:4] + rel[..., 2:4], yaw], dim=-1)


def poses_from_actions(
    actions: Tensor,
    start: Tensor | None = None,
    *,
    frame: Literal["current", "start"] = "current",
) -> Tensor:
    """Integrate NWM actions ``(dx, dy, dyaw)`` into absolute poses.

    Recipe (``frame="current"``, each action is a displacement in the frame of the pose it
    starts from, the composition ``pose_t = pose_{t-1} (+) action_t``), vectorised over steps:

    1. headings ``yaw_t = yaw_0 + cumsum(dyaw)_t``; the heading an action ``t`` starts from is
       the exclusive cumulative sum ``yaw_{t-1}``;
    2. each ``(dx_t, dy_t)`` is rotated by ``yaw_{t-1}`` into world axes;
    3. positions are ``xy_0 + cumsum`` of the rotated displacements; yaws are wrapped.

    ``frame="start"`` reads the actions as NWM's data loaders produce them
    (``get_delta_np`` of waypoints given by ``to_local_coords`` in the frame of the start
    pose): positions are ``xy_0 + R(yaw_0) cumsum(dx, dy)`` and yaws ``yaw_0 + cumsum(dyaw)``.
    NWM normalises ``(dx, dy)`` with its ``ACTION_STATS``: undo that before calling this.

    Args:
        actions: ``(..., T, 3)`` per-step ``(dx, dy, dyaw)``, ``T >= 1``.
        start: ``(..., 3)`` or ``(..., 5)`` pose before the first action, broadcastable against
            the actions' leading dimensions; None starts at the origin facing ``+x``. ``z`` and
            ``pitch`` of a 5-D start are carried unchanged.
        frame: ``"current"`` (default) or ``"start"``, see above.

    Returns:
        ``(..., T, P)`` the pose after each action (the start pose is not included), ``P`` the
        start's pose dimension (3 when ``start`` is None).
    """
    check_tensor("actions", actions)
    if actions.dim() < 2 or actions.shape[-1] != 3 or actions.shape[-2] < 1:
        raise ValueError(
            f"actions must have shape (..., T, 3) with T >= 1, got {tuple(actions.shape)}"
        )
    if not actions.is_floating_point():
        raise ValueError(f"actions must have a floating-point dtype, got {actions.dtype}")
    check_finite("actions", actions)
    if frame not in ("current", "start"):
        raise ValueError(f"frame must be one of ('current', 'start'), got {frame!r}")
    if start is None:
        start = actions.new_zeros((*actions.shape[:-2], 3))
    else:
        start = check_pose("start", start)
    start_t = start.unsqueeze(-2)  # (..., 1, P)
    yaw0 = start_t[..., -1]  # (..., 1)
    yaw = yaw0 + torch.cumsum(actions[..., 2], dim=-1)  # (..., T)
    if frame == "current":
        heading = torch.cat([yaw0.expand((*yaw.shape[:-1], 1)), yaw[..., :-1]], dim=-1)
        world = _rotate(actions[..., :2], torch.cos(heading), torch.sin(heading))
        xy = start_t[..., :2] + torch.cumsum(world, dim=-2)
    else:
        local = torch.cumsum(actions[..., :2], dim=-2)
        xy = start_t[..., :2] + _rotate(local, torch.cos(yaw0), torch.sin(yaw0))
    yaw = wrap_angle(yaw).unsqueeze(-1)
    if start.shape[-1] == 3:
        return torch.cat([xy, yaw], dim=-1)
    middle = start_t[..., 2:4].expand((*xy.shape[:-1], 2))
    return torch.cat([xy, middle, yaw], dim=-1)


def minecraft_to_pose5(
    pose: Tensor, *, convention: Literal["worldmem", "minecraft"] = "worldmem"
) -> Tensor:
    """Convert Minecraft poses ``(x, y, z, pitch, yaw)`` (y up, degrees) to this library's
    5-D convention (z up, radians).

    Minecraft's axes are ``x`` east, ``y`` up, ``z`` south (right-handed). The mapping keeps a
    right-handed frame with the ground plane first::

        X = x (east),   Y = -z (north),   Z = y (up)

    Angles:

    - ``convention="minecraft"`` (the game's raw values): yaw ``0`` faces ``+z`` (south) and
      grows clockwise seen from above (``90`` faces west); pitch is positive looking down. Then
      ``yaw' = -yaw - 90 deg`` and ``pitch' = -pitch``.
    - ``convention="worldmem"`` (default; WorldMem's data loader negates the raw yaw, so yaw
      ``0`` faces ``+z`` and ``90`` faces ``+x``, its field-of-view test's ``atan2(x, z)``):
      ``yaw' = yaw - 90 deg`` and ``pitch' = -pitch`` (the loader keeps the game's pitch, which
      its camera matrices read as positive looking down).

    Yaw and pitch are wrapped to ``[-pi, pi)`` (WorldMem stores angles modulo 360).

    Args:
        pose: ``(..., 5)`` Minecraft poses.
        convention: ``"worldmem"`` or ``"minecraft"``, see above.

    Returns:
        ``(..., 5)`` ``(x, y, z, pitch, yaw)`` in this library's convention.
    """
    pose = check_pose("pose", pose, pose_dim=5)
    if convention not in ("worldmem", "minecraft"):
        raise ValueError(f"convention must be one of ('worldmem', 'minecraft'), got {convention!r}")
    x, y, z = pose[..., 0], pose[..., 1], pose[..., 2]
    pitch = torch.deg2rad(pose[..., 3])
    yaw = torch.deg2rad(pose[..., 4])
    if convention == "minecraft":
        yaw = -yaw
    return torch.stack(
        [x, -z, y, wrap_angle(-pitch), wrap_angle(yaw - math.pi / 2)],
        dim=-1,
    )
