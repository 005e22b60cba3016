"""Fusing absolute poses with odometry: a least-squares smoother over a whole trajectory.

A robot usually has two pose sources of opposite character: absolute poses (GPS, a localiser)
whose error does not grow but is large frame to frame, and odometry (the actions) whose error
per step is small but adds up. :func:`fuse_odometry` finds the trajectory that best explains
both, weighting each by its standard deviation, in two linear least-squares problems:

1. headings ``theta`` minimise ``sum_t w_t (theta_t - z_t)^2 + sum_t v_t (theta_{t+1} -
   theta_t - dyaw_t)^2``, with the observed yaws ``z_t`` unwrapped onto the odometry's
   integrated heading first (so errors of the two must differ by less than ``pi``);
2. positions ``p`` minimise ``sum_t w'_t |p_t - z'_t|^2 + sum_t v'_t |p_{t+1} - p_t -
   R(theta_t) d_t|^2``, each step's displacement ``d_t`` rotated by the fused heading it starts
   from.

Each is a ``T x T`` tridiagonal, symmetric positive definite system, solved densely by Cholesky
in float64 for every trajectory at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_finite, check_tensor
from .poses import wrap_angle

__all__ = ["fuse_odometry"]

MIN_STD = 1e-4
"""Standard deviations below this (pose units, radians) are taken as it, so that exact
odometry or exact poses keep the systems well conditioned in float64."""


def _std(name: str, value: float | Tensor, shape: tuple[int, ...]) -> Tensor:
    """``value`` as a float64 tensor broadcast to ``shape``; refuses negative or non-finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(f"{name} must be a number or a tensor >= 0, got {value!r}")
    std = torch.as_tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    try:
        return torch.broadcast_to(std, shape)
    except RuntimeError:
        raise ValueError(
            f"{name} must broadcast to {shape}, got shape {tuple(std.shape)}"
        ) from None


def _smooth(observed: Tensor, obs_weight: Tensor, steps: Tensor, step_weight: Tensor) -> Tensor:
    """Least-squares ``s`` ``(B, T, D)`` of ``obs_weight (B, T) * |s_t - observed_t|^2 +
    step_weight (B, T-1) * |s_{t+1} - s_t - steps_t|^2``."""
    diag = obs_weight.clone()
    diag[:, 1:] += step_weight
    diag[:, :-1] += step_weight
    system = torch.diag_embed(diag)
    system -= torch.diag_embed(step_weight, offset=1) + torch.diag_embed(step_weight, offset=-1)
    rhs = obs_weight[..., None] * observed
    flow = step_weight[..., None] * steps  # (B, T-1, D)
    rhs[:, 1:] += flow
    rhs[:, :-1] -= flow
    # symmetric positive definite (every frame is tied to an observation or a neighbour)
    solved: Tensor = torch.cholesky_solve(rhs, torch.linalg.cholesky(system))
    return solved


def fuse_odometry(
    poses: Tensor,
    actions: Tensor,
    *,
    position_std: float | Tensor,
    heading_std: float | Tensor,
    action_position_std: float | Tensor,
    action_heading_std: float | Tensor,
    known: Tensor | None = None,
) -> Tensor:
    """Poses that fuse absolute observations with odometry (see the module's docstring).

    Args:
        poses: ``(..., T, 3)`` observed ``(x, y, yaw)``, ``T >= 2``; rows marked unknown in
            ``known`` are ignored (they may hold anything, NaN included).
        actions: ``(..., T - 1, 3)`` odometry: the motion ``(dx, dy, dyaw)`` from frame ``t`` to
            frame ``t + 1`` in the frame of ``t`` (NWM's actions, as
            :func:`~hybrid_cdit.memory.poses_from_actions` with ``frame="current"`` reads them).
        position_std: standard deviation of an observed position's error per axis (pose
            units); a number or a tensor broadcastable to ``(..., T)``.
        heading_std: that of an observed yaw's error (radians).
        action_position_std: that of each step's displacement error per axis; a number or a
            tensor broadcastable to ``(..., T - 1)`` (for example a fraction of each step's
            length).
        action_heading_std: that of each step's turn error (radians).
        known: ``(..., T)`` bool, the frames whose observed pose is used (default all); every
            trajectory needs at least one.

    Standard deviations below :data:`MIN_STD` count as :data:`MIN_STD`.

    Returns:
        ``(..., T, 3)`` fused poses, yaw wrapped to ``[-pi, pi)``, in ``poses``' dtype.
    """
    check_tensor("poses", poses)
    check_tensor("actions", actions)
    if poses.dim() < 2 or poses.shape[-1] != 3 or poses.shape[-2] < 2:
        raise ValueError(f"poses must have shape (..., T, 3) with T >= 2, got {tuple(poses.shape)}")
    if not poses.is_floating_point():
        raise ValueError(f"poses must have a floating-point dtype, got {poses.dtype}")
    *lead, t_len, _ = poses.shape
    expected = (*lead, t_len - 1, 3)
    if tuple(actions.shape) != expected:
        raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
    if not actions.is_floating_point():
        raise ValueError(f"actions must have a floating-point dtype, got {actions.dtype}")
    check_finite("actions", actions)
    frames, steps = (*lead, t_len), (*lead, t_len - 1)
    if known is None:
        known = torch.ones(frames, dtype=torch.bool, device=poses.device)
    elif not isinstance(known, Tensor) or known.dtype != torch.bool or known.shape != frames:
        got = (known.dtype, tuple(known.shape)) if isinstance(known, Tensor) else known
        raise ValueError(f"known must be a bool tensor of shape {frames}, got {got!r}")
    if not bool(known.any(-1).all()):
        raise ValueError(
            "known must mark at least one frame of every trajectory, got none for some"
        )
    observed = torch.where(known[..., None], poses, torch.zeros_like(poses)).double()
    check_finite("poses", observed)
    weights = [
        _std(name, value, shape).to(poses.device).clamp(min=MIN_STD).square().reciprocal()
        for name, value, shape in (
            ("position_std", position_std, frames),
            ("heading_std", heading_std, frames),
            ("action_position_std", action_position_std, steps),
            ("action_heading_std", action_heading_std, steps),
        )
    ]
    w_pos, w_yaw, v_pos, v_yaw = (w.reshape(-1, w.shape[-1]) for w in weights)
    mask = known.reshape(-1, t_len).double()
    obs = observed.reshape(-1, t_len, 3)
    act = actions.double().reshape(-1, t_len - 1, 3)

    # 1. headings: the observed yaws unwrapped onto the integrated odometry heading, which is
    # first moved to their circular mean offset
    turns = act[..., 2]
    integrated = torch.cat([torch.zeros_like(turns[:, :1]), turns.cumsum(1)], dim=1)
    gap = obs[..., 2] - integrated
    offset = torch.atan2((gap.sin() * mask).sum(1), (gap.cos() * mask).sum(1))[:, None]
    guide = integrated + offset
    unwrapped = guide + wrap_angle(obs[..., 2] - guide)
    yaw = _smooth(unwrapped[..., None], w_yaw * mask, turns[..., None], v_yaw)[..., 0]

    # 2. positions: each step's displacement in world axes from the fused heading it starts from
    start = yaw[:, :-1]
    dx, dy = act[..., 0], act[..., 1]
    world = torch.stack(
        [dx * start.cos() - dy * start.sin(), dx * start.sin() + dy * start.cos()], dim=-1
    )
    xy = _smooth(obs[..., :2], w_pos * mask, world, v_pos)

    fused = torch.cat([xy, wrap_angle(yaw)[..., None]], dim=-1)
    return fused.reshape(*frames, 3).to(poses.dtype)
