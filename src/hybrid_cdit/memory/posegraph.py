"""A pose graph: odometry plus loop closures, solved by linear least squares.

Odometry alone drifts: the error of the pose of frame ``t`` relative to frame ``s`` grows with
the steps between them. A *loop closure* is a measurement of one frame's pose relative to an
earlier one that does not go through the steps between them (for example a learned refiner's
estimate from the two frames, :class:`~hybrid_cdit.memory.SlotPoseRefiner`). :func:`pose_graph`
finds the trajectory that best explains both, each weighted by its standard deviation, with
frame 0 held at ``start``, in two linear least-squares problems (as
:func:`~hybrid_cdit.memory.fuse_odometry` does):

1. headings ``theta`` minimise ``sum_t v_t (theta_{t+1} - theta_t - dyaw_t)^2 + sum_e w_e
   (theta_{b_e} - theta_{a_e} - m_e)^2`` for loop ``e`` from frame ``a_e`` to ``b_e``, its
   measured turn ``m_e`` unwrapped onto the odometry's integrated heading (so a loop's error
   and the odometry's must differ by less than ``pi``);
2. positions ``p`` minimise the same sums of ``|p_{t+1} - p_t - R(theta_t) d_t|^2`` and
   ``|p_{b_e} - p_{a_e} - R(theta_{a_e}) m'_e|^2``, each displacement rotated by the solved
   heading of the frame it is measured in.

Each is a ``T x T`` symmetric positive definite system, built densely and solved by Cholesky in
float64 for every trajectory at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_finite, check_tensor
from .fusion import MIN_STD, _std
from .poses import wrap_angle

__all__ = ["pose_graph"]


def _solve(
    t_len: int, start: Tensor, src: Tensor, dst: Tensor, weight: Tensor, value: Tensor
) -> Tensor:
    """Least-squares ``s`` ``(B, T, D)`` of ``|s_0 - start|^2 / MIN_STD^2 + sum_e weight_e
    |s_{dst_e} - s_{src_e} - value_e|^2``; ``src``, ``dst``, ``weight`` ``(B, E)``, ``value``
    ``(B, E, D)``, ``start`` ``(B, D)``."""
    b = start.shape[0]
    anchor = 1.0 / MIN_STD**2
    system = torch.zeros(b, t_len * t_len, dtype=torch.float64, device=start.device)
    index = torch.cat(
        [src * (t_len + 1), dst * (t_len + 1), src * t_len + dst, dst * t_len + src], 1
    )
    system.scatter_add_(1, index, torch.cat([weight, weight, -weight, -weight], 1))
    system = system.view(b, t_len, t_len)
    system[:, 0, 0] += anchor
    rhs = torch.zeros(b, t_len, value.shape[-1], dtype=torch.float64, device=start.device)
    flow = weight[..., None] * value
    rhs.scatter_add_(1, dst[..., None].expand_as(flow), flow)
    rhs.scatter_add_(1, src[..., None].expand_as(flow), -flow)
    rhs[:, 0] += anchor * start
    # symmetric positive definite: the odometry chain ties every frame to frame 0
    solved: Tensor = torch.cholesky_solve(rhs, torch.linalg.cholesky(system))
    return solved


def _rotate(xy: Tensor, yaw: Tensor) -> Tensor:
    """``xy`` ``(..., 2)`` rotated by ``yaw`` ``(...)``."""
    c, s = yaw.cos(), yaw.sin()
    return torch.stack([xy[..., 0] * c - xy[..., 1] * s, xy[..., 0] * s + xy[..., 1] * c], -1)


def pose_graph(
    start: Tensor,
    steps: Tensor,
    loop_from: Tensor,
    loop_to: Tensor,
    loop_poses: Tensor,
    *,
    step_position_std: float | Tensor,
    step_heading_std: float | Tensor,
    loop_position_std: float | Tensor,
    loop_heading_std: float | Tensor,
    loop_mask: Tensor | None = None,
) -> Tensor:
    """The trajectory that best explains odometry and loop closures (see the module's
    docstring).

    Args:
        start: ``(..., 3)`` the pose ``(x, y, yaw)`` of frame 0, kept.
        steps: ``(..., T - 1, 3)`` odometry: the motion from frame ``t`` to frame ``t + 1`` in
            the frame of ``t`` (NWM's actions), ``T >= 2``.
        loop_from: ``(..., E)`` integer frame indices in ``[0, T)``, each loop's reference.
        loop_to: ``(..., E)`` the frames each loop places.
        loop_poses: ``(..., E, 3)`` the measured pose of frame ``loop_to`` in the frame of
            ``loop_from`` (as :func:`~hybrid_cdit.memory.relative_pose` gives it).
        step_position_std: standard deviation of each step's displacement error per axis (pose
            units); a number or a tensor broadcastable to ``(..., T - 1)``.
        step_heading_std: that of each step's turn (radians).
        loop_position_std: that of a loop's position per axis; broadcastable to ``(..., E)``.
        loop_heading_std: that of a loop's turn (radians).
        loop_mask: ``(..., E)`` bool, the loops used (default all); masked loops may hold
            anything, NaN included. ``E = 0`` (or no loop used) integrates the odometry.

    Standard deviations below :data:`~hybrid_cdit.memory.fusion.MIN_STD` count as it.

    Returns:
        ``(..., T, 3)`` poses, yaw wrapped to ``[-pi, pi)``, in ``steps``' dtype.
    """
    for name, value in (("start", start), ("steps", steps), ("loop_poses", loop_poses)):
        check_tensor(name, value)
        if not value.is_floating_point():
            raise ValueError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if steps.dim() < 2 or steps.shape[-1] != 3:
        raise ValueError(f"steps must have shape (..., T - 1, 3), got {tuple(steps.shape)}")
    *lead, n_steps, _ = steps.shape
    t_len = n_steps + 1
    if tuple(start.shape) != (*lead, 3):
        raise ValueError(f"start must have shape {(*lead, 3)}, got {tuple(start.shape)}")
    check_finite("start", start)
    check_finite("steps", steps)
    for name, value in (("loop_from", loop_from), ("loop_to", loop_to)):
        check_tensor(name, value)
        if value.dtype not in (torch.int32, torch.int64) or value.dim() != len(lead) + 1:
            raise ValueError(
                f"{name} must be an integer tensor of shape (..., E) with ... = {tuple(lead)}, "
                f"got {value.dtype} of shape {tuple(value.shape)}"
            )
    edges = (*lead, loop_from.shape[-1])
    if tuple(loop_from.shape) != edges or tuple(loop_to.shape) != edges:
        raise ValueError(
            f"loop_from and loop_to must have shape {edges}, got {tuple(loop_from.shape)} and "
            f"{tuple(loop_to.shape)}"
        )
    if tuple(loop_poses.shape) != (*edges, 3):
        raise ValueError(f"loop_poses must have shape {(*edges, 3)}, got {tuple(loop_poses.shape)}")
    if loop_mask is None:
        loop_mask = torch.ones(edges, dtype=torch.bool, device=steps.device)
    elif (
        not isinstance(loop_mask, Tensor)
        or loop_mask.dtype != torch.bool
        or loop_mask.shape != edges
    ):
        got = (
            (loop_mask.dtype, tuple(loop_mask.shape))
            if isinstance(loop_mask, Tensor)
            else loop_mask
        )
        raise ValueError(f"loop_mask must be a bool tensor of shape {edges}, got {got!r}")
    used_from, used_to = loop_from[loop_mask], loop_to[loop_mask]
    for name, used in (("loop_from", used_from), ("loop_to", used_to)):
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= t_len):
            raise ValueError(
                f"{name} must index frames in [0, {t_len}), got values in "
                f"[{int(used.min())}, {int(used.max())}]"
            )
    measured = torch.where(loop_mask[..., None], loop_poses, torch.zeros_like(loop_poses))
    check_finite("loop_poses", measured)
    weights = [
        _std(name, value, shape).to(steps.device).clamp(min=MIN_STD).square().reciprocal()
        for name, value, shape in (
            ("step_position_std", step_position_std, (*lead, n_steps)),
            ("step_heading_std", step_heading_std, (*lead, n_steps)),
            ("loop_position_std", loop_position_std, edges),
            ("loop_heading_std", loop_heading_std, edges),
        )
    ]
    batch = torch.Size(lead).numel()
    v_pos, v_yaw, w_pos, w_yaw = (w.reshape(batch, w.shape[-1]) for w in weights)
    used = loop_mask.reshape(batch, edges[-1]).double()
    w_pos, w_yaw = w_pos * used, w_yaw * used
    origin = start.double().reshape(batch, 3)
    act = steps.double().reshape(batch, n_steps, 3)
    rel = measured.double().reshape(batch, edges[-1], 3)
    a = torch.where(loop_mask, loop_from, 0).long().reshape(batch, edges[-1])
    b = torch.where(loop_mask, loop_to, 0).long().reshape(batch, edges[-1])
    frames = torch.arange(n_steps, device=steps.device).expand(act.shape[0], -1)
    src, dst = torch.cat([frames, a], 1), torch.cat([frames + 1, b], 1)

    # 1. headings: each loop's turn unwrapped onto the odometry's integrated heading
    turns = act[..., 2]
    guide = torch.cat([torch.zeros_like(turns[:, :1]), turns.cumsum(1)], 1) + origin[:, 2:]
    implied = guide.gather(1, b) - guide.gather(1, a)
    loop_turn = implied + wrap_angle(rel[..., 2] - implied)
    yaw = _solve(
        t_len, origin[:, 2:], src, dst, torch.cat([v_yaw, w_yaw], 1),
        torch.cat([turns, loop_turn], 1)[..., None],
    )[..., 0]  # fmt: skip

    # 2. positions: each displacement rotated by the solved heading of its reference frame
    moves = torch.cat(
        [_rotate(act[..., :2], yaw[:, :-1]), _rotate(rel[..., :2], yaw.gather(1, a))], 1
    )
    xy = _solve(t_len, origin[:, :2], src, dst, torch.cat([v_pos, w_pos], 1), moves)

    poses = torch.cat([xy, wrap_angle(yaw)[..., None]], dim=-1)
    return poses.reshape(*lead, t_len, 3).to(steps.dtype)
