"""Pose-based retrieval: pure, batched scoring, selection and gathering over memory tensors.

Every function works on plain tensors, one row per sample, so it serves a
:class:`~hybrid_cdit.memory.MemoryBuffer` as well as a training ``collate_fn`` that builds memory
from a trajectory's history. Shapes: ``B`` samples, ``M`` memory slots per sample, ``P`` the
pose size (3 ``(x, y, yaw)`` or 5 ``(x, y, z, pitch, yaw)``, see :mod:`.poses`), ``k`` slots
retrieved. A ``valid`` mask ``(B, M)`` marks the slots that hold a frame; the content of other
slots is ignored (it may even be non-finite). Row ``i`` of every output depends on row ``i`` of
the inputs only.

This module ties the pieces together: :func:`select_memory` scores with a strategy
(``"distance"`` and ``"pose"`` from :mod:`.scores`, ``"fov"`` from :mod:`.fov`) and selects
(:mod:`.selection`); :func:`gather_slots` and :func:`build_context` turn a selection into the
:class:`~hybrid_cdit.memory.MemoryContext` a model attends to; :func:`retrieve` does all three.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_positive_int, check_shape, check_tensor
from ._checks import check_generator, check_threshold
from .context import MemoryContext, all_finite
from .fov import FovParams, check_fov_params, fov_select
from .scores import Strategy, check_strategy, distance_scores, pose_scores
from .selection import Selection, select_top_k

__all__ = ["build_context", "gather_slots", "retrieve", "select_memory"]


def select_memory(
    memory_poses: Tensor,
    query_pose: Tensor,
    k: int = 8,
    *,
    valid: Tensor | None = None,
    steps: Tensor | None = None,
    strategy: Strategy | str = "distance",
    threshold: float = 0.7,
    query_step: Tensor | None = None,
    scale: float = 10.0,
    fov: FovParams | None = None,
    generator: torch.Generator | None = None,
) -> Selection:
    """Score the memory with ``strategy`` and select ``k`` slots per sample.

    Args:
        memory_poses: ``(B, M, P)`` poses of the stored frames.
        query_pose: ``(B, P)``.
        k: slots per sample, ``>= 1``.
        valid: ``(B, M)`` bool or None (all valid).
        steps: ``(B, M)`` integer steps or None; break ties (all strategies) and drive the
            recency penalty (``"fov"``).
        strategy: ``"distance"``, ``"fov"`` or ``"pose"``.
        threshold: slots scored under it are masked (the seed's
            ``spatial_similarity_threshold``, 0.7).
        query_step: ``(B,)`` integer step of the query, for ``"fov"``'s recency penalty.
        scale: distance scale of ``"distance"`` and ``"pose"``.
        fov: :class:`FovParams` for ``"fov"``.
        generator: point sampler for ``"fov"``.

    Returns:
        :class:`Selection` with ``(B, k)`` indices, scores and mask.
    """
    name = check_strategy(strategy)
    params = check_fov_params("fov", fov)
    check_generator(generator)
    if name == "fov":
        return fov_select(
            memory_poses,
            query_pose,
            valid,
            k,
            threshold=threshold,
            steps=steps,
            query_step=query_step,
            params=params,
            generator=generator,
        )
    check_positive_int("k", k)
    check_threshold(threshold)
    scorer = distance_scores if name == "distance" else pose_scores
    scores = scorer(memory_poses, query_pose, valid, scale=scale)
    return select_top_k(scores, valid, k, threshold, steps=steps)


def gather_slots(values: Tensor, indices: Tensor) -> Tensor:
    """Per-sample gather along the slot axis with one index operation.

    Args:
        values: ``(B, M, ...)``.
        indices: ``(B, k)`` long slot indices in ``[0, M)``.

    Returns:
        ``(B, k, ...)`` with ``out[b, j] = values[b, indices[b, j]]``.
    """
    check_tensor("values", values)
    if values.dim() < 2:
        raise ValueError(f"values must have shape (B, M, ...), got {tuple(values.shape)}")
    check_shape("indices", indices, [("B", int(values.shape[0])), ("k", None)])
    rows = torch.arange(values.shape[0], device=values.device)[:, None]
    return values[rows, indices.to(values.device)]


def retrieve(
    frames: Tensor,
    memory_poses: Tensor,
    query_pose: Tensor,
    k: int = 8,
    *,
    valid: Tensor | None = None,
    steps: Tensor | None = None,
    strategy: Strategy | str = "distance",
    threshold: float = 0.7,
    query_step: Tensor | None = None,
    scale: float = 10.0,
    fov: FovParams | None = None,
    generator: torch.Generator | None = None,
) -> MemoryContext:
    """Select memory with :func:`select_memory` and gather it into a :class:`MemoryContext`.

    Args:
        frames: ``(B, M, C, H, W)`` stored latents.
        memory_poses: ``(B, M, P)``; the other arguments as in :func:`select_memory`.

    Returns:
        ``MemoryContext`` with ``frames (B, k, C, H, W)``, ``poses (B, k, P)``, ``scores`` and
        ``mask`` ``(B, k)`` and ``query_pose (B, P)``; with ``steps`` also the selected slots'
        ``steps (B, k)``, and ``query_step`` when given.
    """
    frames = check_shape(
        "frames", frames, [("B", None), ("M", None), ("C", None), ("H", None), ("W", None)]
    )
    b, m = int(frames.shape[0]), int(frames.shape[1])
    check_shape("memory_poses", memory_poses, [("B", b), ("M", m), ("P", None)])
    selection = select_memory(
        memory_poses,
        query_pose,
        k,
        valid=valid,
        steps=steps,
        strategy=strategy,
        threshold=threshold,
        query_step=query_step,
        scale=scale,
        fov=fov,
        generator=generator,
    )
    return build_context(
        gather_slots(frames, selection.indices),
        gather_slots(memory_poses, selection.indices).to(selection.scores.device),
        selection,
        query_pose,
        steps=None if steps is None else gather_slots(steps, selection.indices),
        query_step=query_step,
    )


def build_context(
    frames: Tensor,
    poses: Tensor,
    selection: Selection,
    query_pose: Tensor,
    *,
    steps: Tensor | None = None,
    query_step: Tensor | None = None,
    assume_finite: bool = False,
) -> MemoryContext:
    """Wrap gathered slots into a :class:`MemoryContext` on ``frames``' device.

    Masked slots keep what was gathered (a real frame scored under the threshold, or whatever
    an empty slot holds) unless it is non-finite, in which case frames and poses of masked
    slots are zeroed; consumers must honour the mask either way.

    Args:
        frames: ``(B, k, C, H, W)`` gathered latents (on the target device).
        poses: ``(B, k, P)`` gathered poses.
        selection: the :class:`Selection` they were gathered with.
        query_pose: ``(B, P)``.
        steps: optional ``(B, k)`` time steps of the gathered slots (see
            :class:`~hybrid_cdit.memory.MemoryContext`).
        query_step: optional ``(B,)`` time step of the query.
        assume_finite: skip the test for non-finite gathered data (a ``MemoryBuffer`` only
            stores finite frames and poses).

    Returns:
        ``MemoryContext``; poses, scores and query pose in ``poses``' dtype.
    """
    device = frames.device
    mask = selection.mask.to(device)
    poses = poses.to(device)
    if not assume_finite and not all_finite(frames):
        frames = torch.where(
            mask[:, :, None, None, None], frames, torch.zeros((), dtype=frames.dtype, device=device)
        )
    if not assume_finite and not all_finite(poses):
        poses = torch.where(
            mask[:, :, None], poses, torch.zeros((), dtype=poses.dtype, device=device)
        )
    return MemoryContext(
        frames=frames,
        poses=poses,
        scores=selection.scores.to(device=device, dtype=poses.dtype),
        mask=mask,
        query_pose=query_pose.to(device=device, dtype=poses.dtype),
        steps=None if steps is None else steps.to(device),
        query_step=None if query_step is None else query_step.to(device),
    )
