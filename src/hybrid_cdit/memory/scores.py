"""Strategy names and the closed-form retrieval scores ``"distance"`` and ``"pose"``.

Scores are ``(B, M)``, in ``[0, 1]``, higher is more relevant, 0 for invalid slots (shapes as in
:mod:`.retrieval`):

- ``"distance"``: the seed's ``exp(-||p_query - p_mem|| / scale)`` over the position components
  (``x, y`` for 3-D poses, ``x, y, z`` for 5-D), ``scale`` 10 by default.
- ``"pose"``: the distance score times the heading agreement ``(1 + cos(angle)) / 2``, where
  ``angle`` is the angle between the two view directions (:func:`.poses.heading_vector`); for
  3-D poses ``cos(angle) = cos(yaw_query - yaw_mem)``. The same place seen facing the other way
  scores 0.

The third strategy, ``"fov"``, lives in :mod:`.fov`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from ._checks import check_memory, check_real
from .poses import view_direction

__all__ = ["STRATEGIES", "Strategy", "check_strategy", "distance_scores", "pose_scores"]

Strategy = Literal["distance", "fov", "pose"]
"""Names of the retrieval strategies."""

STRATEGIES: tuple[str, ...] = get_args(Strategy)
"""``("distance", "fov", "pose")``."""


def check_strategy(strategy: object) -> Strategy:
    """Return ``strategy`` if it names a retrieval strategy, else raise ``ValueError``."""
    if strategy == "distance":
        return "distance"
    if strategy == "fov":
        return "fov"
    if strategy == "pose":
        return "pose"
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _distance(poses: Tensor, query: Tensor, scale: float) -> Tensor:
    n = 2 if poses.shape[-1] == 3 else 3
    delta = poses[..., :n] - query[:, None, :n]
    return torch.exp(-torch.linalg.vector_norm(delta, dim=-1) / scale)


def distance_scores(
    memory_poses: Tensor, query_pose: Tensor, valid: Tensor | None = None, *, scale: float = 10.0
) -> Tensor:
    """The seed's distance score ``exp(-||p_query - p_mem|| / scale)``.

    Args:
        memory_poses: ``(B, M, P)`` poses of the stored frames.
        query_pose: ``(B, P)`` pose of the frame being predicted.
        valid: ``(B, M)`` bool, True for slots that hold a frame; None means all.
        scale: distance at which the score falls to ``1/e``.

    Returns:
        ``(B, M)`` scores in ``(0, 1]``, 0 for invalid slots.
    """
    scale = check_real("scale", scale, positive=True)
    poses, query, mask = check_memory(memory_poses, query_pose, valid)
    return torch.where(mask, _distance(poses, query, scale), 0.0)


def pose_scores(
    memory_poses: Tensor, query_pose: Tensor, valid: Tensor | None = None, *, scale: float = 10.0
) -> Tensor:
    """Distance score times heading agreement: ``exp(-d / scale) * (1 + cos(angle)) / 2``.

    ``angle`` is the angle between the query's and the memory frame's view directions; for 3-D
    poses ``cos(angle) = cos(yaw_query - yaw_mem)``. A frame at the query's position facing the
    same way scores 1, facing the opposite way 0.

    Args:
        memory_poses: ``(B, M, P)``.
        query_pose: ``(B, P)``.
        valid: ``(B, M)`` bool or None (all valid).
        scale: as in :func:`distance_scores`.

    Returns:
        ``(B, M)`` scores in ``[0, 1]``, 0 for invalid slots.
    """
    scale = check_real("scale", scale, positive=True)
    poses, query, mask = check_memory(memory_poses, query_pose, valid)
    cos_angle = (view_direction(poses) * view_direction(query)[:, None]).sum(-1)
    agreement = ((1.0 + cos_angle) * 0.5).clamp(0.0, 1.0)
    return torch.where(mask, _distance(poses, query, scale) * agreement, 0.0)
