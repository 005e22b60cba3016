"""Loop closure: a learned refiner measures pairs of frames of one place, and a pose graph
solves the odometry with those measurements.

Odometry drifts, so the memory's poses of an earlier visit are off relative to the query by
the error accumulated since. :class:`~hybrid_cdit.memory.SlotPoseRefiner` measures the pose of
one frame relative to another from the two frames, given a prior; each such measurement of a
pair that sees the same place is a loop closure, and :func:`~hybrid_cdit.memory.pose_graph`
spreads it over the trajectory. The refiner keeps part of its prior's error, so
:func:`close_loops` measures the loops again from each solution's poses, ``passes`` times.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_real
from .posegraph import pose_graph
from .poses import relative_pose, wrap_angle
from .refiner import SlotPoseRefiner

__all__ = ["close_loops", "measure_loops"]


def measure_loops(
    refiner: SlotPoseRefiner,
    reference: Tensor,
    frames: Tensor,
    prior: Tensor,
    *,
    max_distance: float,
    max_turn: float,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Relative poses of pairs of frames, and which of them still look like one place.

    Args:
        refiner: a trained refiner, in eval mode (runs under ``torch.no_grad``).
        reference: ``(N, C, H, W)`` each pair's reference frame.
        frames: ``(N, C, H, W)`` the frames placed relative to it.
        prior: ``(N, 3)`` each frame's pose in its reference's frame as the poses give it.
        max_distance: a measured pose farther than this from the reference (pose units) is no
            longer a match, > 0.
        max_turn: nor one turned by more than this (radians), > 0.
        chunk: pairs per refiner call.

    Returns:
        ``(N, 3)`` the measured relative poses (``prior``'s dtype) and ``(N,)`` bool, the
        pairs within ``max_distance`` and ``max_turn``.
    """
    if not isinstance(refiner, SlotPoseRefiner):
        raise ValueError(f"refiner must be a SlotPoseRefiner, got {type(refiner).__name__}")
    max_distance = check_real("max_distance", max_distance, positive=True)
    max_turn = check_real("max_turn", max_turn, positive=True)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    parameter = next(refiner.parameters())
    parts = []
    with torch.no_grad():
        for lo in range(0, max(prior.shape[0], 1), chunk):
            part = slice(lo, lo + chunk)
            estimate = refiner(
                reference[part].to(parameter), frames[part].to(parameter), prior[part].to(parameter)
            )
            parts.append(estimate.to(prior.dtype))
    measured = torch.cat(parts)
    same = (measured[:, :2].norm(dim=-1) <= max_distance) & (
        wrap_angle(measured[:, 2]).abs() <= max_turn
    )
    return measured, same


def close_loops(
    start: Tensor,
    steps: Tensor,
    frames: Tensor,
    loop_from: Tensor,
    loop_to: Tensor,
    refiner: SlotPoseRefiner,
    *,
    step_position_std: float | Tensor,
    step_heading_std: float | Tensor,
    loop_position_std: float = 0.1,
    loop_heading_std: float = math.radians(2),
    passes: int = 4,
    max_distance: float = 0.7,
    max_turn: float = math.radians(25),
    loop_mask: Tensor | None = None,
) -> Tensor:
    """Poses of a trajectory from odometry and loops that ``refiner`` measures.

    Starts from dead reckoning; each pass measures every candidate pair ``(loop_from[e],
    loop_to[e])`` with the current poses as the prior (:func:`measure_loops`) and solves the
    pose graph with the pairs that still look like one place (:func:`pose_graph`). Candidate
    pairs come from retrieval: the frames of the trajectory that the poses put near each frame.

    Args:
        start: ``(B, 3)`` the pose of frame 0, kept.
        steps: ``(B, T - 1, 3)`` odometry, the motion from frame ``t`` to ``t + 1`` in the frame
            of ``t``.
        frames: ``(B, T, C, H, W)`` the frames the refiner reads (``C = refiner.in_channels``).
        loop_from: ``(B, E)`` frame indices of each candidate pair's reference.
        loop_to: ``(B, E)`` those of the frames placed relative to it.
        refiner: a trained :class:`SlotPoseRefiner`, in eval mode.
        step_position_std: each step's displacement error per axis (pose units), a number or
            broadcastable to ``(B, T - 1)``.
        step_heading_std: each step's turn error (radians).
        loop_position_std: a measured loop's position error per axis (pose units).
        loop_heading_std: its heading error (radians).
        passes: rounds of measuring and solving, >= 1.
        max_distance: :func:`measure_loops`' (pose units).
        max_turn: :func:`measure_loops`' (radians).

    The defaults of ``loop_position_std``, ``loop_heading_std``, ``passes``, ``max_distance``
    and ``max_turn`` were chosen on Memory Maze's validation mazes (pose units are its cells;
    docs/memory.md); scale the lengths to your world's.
        loop_mask: ``(B, E)`` bool, the candidate pairs to use (default all).

    Returns:
        ``(B, T, 3)`` poses in ``steps``' dtype.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be an int >= 1, got {passes!r}")
    if (
        not isinstance(frames, Tensor)
        or frames.dim() != 5
        or frames.shape[:2]
        != (
            steps.shape[0],
            steps.shape[1] + 1,
        )
    ):
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(
            f"frames must have shape ({steps.shape[0]}, {steps.shape[1] + 1}, C, H, W), got {got}"
        )
    if loop_mask is None:
        loop_mask = torch.ones(loop_from.shape, dtype=torch.bool, device=steps.device)

    def solve(measured: Tensor, used: Tensor) -> Tensor:
        return pose_graph(
            start, steps, loop_from, loop_to, measured, loop_mask=used,
            step_position_std=step_position_std, step_heading_std=step_heading_std,
            loop_position_std=loop_position_std, loop_heading_std=loop_heading_std,
        )  # fmt: skip

    poses = solve(torch.zeros(*loop_from.shape, 3, dtype=steps.dtype), torch.zeros_like(loop_mask))
    b, e = loop_from.shape
    rows = torch.arange(b, device=steps.device)[:, None].expand(b, e)
    safe_from, safe_to = torch.where(loop_mask, loop_from, 0), torch.where(loop_mask, loop_to, 0)
    for _ in range(passes):
        prior = relative_pose(poses[rows, safe_to], poses[rows, safe_from])
        measured, same = measure_loops(
            refiner, frames[rows, safe_from].flatten(0, 1), frames[rows, safe_to].flatten(0, 1),
            prior.flatten(0, 1), max_distance=max_distance, max_turn=max_turn,
        )  # fmt: skip
        poses = solve(measured.view(b, e, 3), loop_mask & same.view(b, e))
    return poses
