"""Content-based heading refinement: a memory slot's yaw relative to a reference frame, from
the frames themselves.

A camera that only turns sees the same scene moved sideways: for level pinhole cameras of
horizontal field of view ``fov`` (square images, the convention of :mod:`.rays`), the view of a
camera turned by ``delta`` is an exact warp of the other's (a homography). :func:`heading_offsets`
searches ``delta`` on a grid around a prior, warps each memory frame into the reference camera
for every candidate, and keeps the one with the smallest mean squared difference over the pixels
both views see (refined between grid points by a parabola). Frames taken at other positions see
the scene with parallax, which no turn explains: their best cost stays close to the others, and
the ``confidence`` (median cost over the candidates divided by the best) stays low.
:func:`refine_headings` replaces the yaw of the slots whose fit is confident by the reference's
yaw plus the fitted offset, so the slot's heading relative to the query no longer carries the
error of either absolute pose; every other field is kept.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_real
from .context import MemoryContext
from .poses import check_pose, wrap_angle
from .rays import check_fov

__all__ = ["heading_offsets", "refine_headings"]


def _turn_grid(delta: Tensor, height: int, width: int, fov: float) -> tuple[Tensor, Tensor]:
    """Where each pixel of a reference camera looks in a camera turned by ``delta`` (left
    positive) from it: ``grid (N, D, H, W, 2)`` in ``grid_sample``'s normalised coordinates
    (``align_corners=False``) and ``seen (N, D, H, W)`` bool, the pixels inside that view.
    ``delta (N, D)`` radians."""
    t = math.tan(fov / 2)
    u = (2 * torch.arange(width, device=delta.device, dtype=delta.dtype) + 1) / width - 1
    v = (2 * torch.arange(height, device=delta.device, dtype=delta.dtype) + 1) / height - 1
    azimuth = -torch.atan(u * t)  # (W,): angle left of the optical axis
    radial = torch.sqrt(1 + (u * t).square())  # horizontal length of the ray (1, -u t, -v t)
    turned = azimuth - delta[..., None]  # (N, D, W): the same azimuth in the turned camera
    cos = turned.cos()
    u_turned = (-torch.tan(turned) / t)[:, :, None, :]  # (N, D, 1, W)
    v_turned = v[:, None] / (radial * cos)[:, :, None, :]  # (N, D, H, W)
    u_turned = u_turned.expand_as(v_turned)
    seen = (cos[:, :, None, :] > 0) & (u_turned.abs() <= 1) & (v_turned.abs() <= 1)
    return torch.stack([u_turned, v_turned], dim=-1), seen


def heading_offsets(
    frames: Tensor,
    reference: Tensor,
    prior: Tensor,
    fov: float,
    *,
    search: float = math.radians(30.0),
    step: float = math.radians(2.0),
    min_overlap: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """The yaw of each frame's camera minus that of the reference camera, fitted to the images.

    Args:
        frames: ``(N, C, H, W)`` frames (any channels: pixels or latents that keep the image's
            layout) of level cameras with horizontal field of view ``fov``.
        reference: ``(N, C, H, W)`` the reference frames.
        prior: ``(N,)`` the offsets the poses imply, radians; the search covers
            ``prior +- search`` in steps of ``step``.
        fov: horizontal field of view in radians, in ``(0, pi)``.
        search: half-width of the search, radians, > 0.
        step: grid step, radians, in ``(0, search]``.
        min_overlap: the smallest share of the reference's pixels that a candidate's warp must
            see to be scored, in ``(0, 1]``.

    Returns:
        ``offset (N,)`` radians in ``[-pi, pi)`` (``prior`` where no candidate is scored) and
        ``confidence (N,)`` float32: the median cost of the scored candidates over the best
        (1 for a flat cost, 0 where no candidate is scored; ``inf`` for an exact match).
    """
    fov = check_fov(fov)
    search = check_real("search", search, positive=True)
    step = check_real("step", step, positive=True)
    if step > search:
        raise ValueError(f"step must be <= search ({search!r}), got {step!r}")
    min_overlap = check_real("min_overlap", min_overlap, positive=True)
    if min_overlap > 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap!r}")
    if not isinstance(frames, Tensor) or frames.dim() != 4 or not frames.is_floating_point():
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a floating (N, C, H, W) tensor, got {got}")
    if not isinstance(reference, Tensor) or reference.shape != frames.shape:
        got = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__
        raise ValueError(f"reference must have frames' shape {tuple(frames.shape)}, got {got}")
    if not isinstance(prior, Tensor) or prior.shape != frames.shape[:1]:
        got = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
        raise ValueError(f"prior must have shape ({frames.shape[0]},), got {got}")
    n, _, h, w = frames.shape
    half = math.floor(search / step + 1e-9)
    grid_steps = torch.arange(-half, half + 1, device=frames.device, dtype=torch.float32) * step
    delta = prior.float()[:, None] + grid_steps  # (N, D)
    d = delta.shape[1]
    grid, seen = _turn_grid(delta, h, w, fov)
    warped = F.grid_sample(
        frames.float(),
        grid.view(n, d * h, w, 2),  # every candidate's grid stacked along the rows
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    ).view(n, -1, d, h, w)  # (N, C, D, H, W)
    error = (warped - reference.float()[:, :, None]).square().mean(1)  # (N, D, H, W)
    weight = seen.float()
    count = weight.sum((2, 3))
    cost = (error * weight).sum((2, 3)) / count.clamp(min=1)
    scored = count >= min_overlap * h * w
    cost = torch.where(scored, cost, torch.inf)
    best = cost.argmin(1)
    best_cost = cost.gather(1, best[:, None])[:, 0]
    # Parabola through the best candidate and its neighbours, where both are scored.
    lo = cost.gather(1, (best - 1).clamp(min=0)[:, None])[:, 0]
    hi = cost.gather(1, (best + 1).clamp(max=d - 1)[:, None])[:, 0]
    curvature = lo + hi - 2 * best_cost
    inner = (best > 0) & (best < d - 1) & torch.isfinite(lo) & torch.isfinite(hi)
    shift = torch.where(inner & (curvature > 0), 0.5 * (lo - hi) / curvature, 0.0)
    offset = delta.gather(1, best[:, None])[:, 0] + shift.clamp(-0.5, 0.5) * step
    any_scored = scored.any(1)
    median = torch.where(scored, cost, torch.nan).nanmedian(1).values
    confidence = torch.where(any_scored, median / best_cost, 0.0)
    offset = torch.where(any_scored, offset, prior.float())
    return wrap_angle(offset).to(prior.dtype), confidence.float()


def refine_headings(
    memory: MemoryContext,
    reference: Tensor,
    reference_pose: Tensor,
    fov: float,
    *,
    min_confidence: float = 2.0,
    search: float = math.radians(30.0),
    step: float = math.radians(2.0),
    min_overlap: float = 0.3,
) -> tuple[MemoryContext, Tensor]:
    """``memory`` with each slot's yaw fitted to its frame against a reference frame.

    The reference is a frame whose pose relative to the query is trusted: typically the last
    context frame, whose pose is the query pose composed with the inverse of the action. For
    every valid slot, :func:`heading_offsets` fits the slot's yaw minus the reference's around
    the offset the poses imply; where the fit's confidence is at least ``min_confidence`` the
    slot's yaw becomes ``reference yaw + offset``. Positions, pitch and every other field are
    kept. Cameras are taken to be level (pitch is not modelled).

    Args:
        memory: the context, poses ``(B, k, P)``.
        reference: ``(B, C, H, W)``, frames of the same kind as ``memory.frames``.
        reference_pose: ``(B, P)`` the reference's pose in the memory's coordinates.
        fov: the cameras' horizontal field of view in radians, in ``(0, pi)``.
        min_confidence: the smallest confidence that changes a slot's yaw, >= 1.
        search, step, min_overlap: as in :func:`heading_offsets`.

    Returns:
        The refined context and ``refined (B, k)`` bool, the slots whose yaw was replaced.
    """
    if not isinstance(memory, MemoryContext):
        raise ValueError(f"memory must be a MemoryContext, got {type(memory).__name__}")
    b, k = memory.mask.shape
    frame_shape = tuple(memory.frames.shape[2:])
    if not isinstance(reference, Tensor) or tuple(reference.shape) != (b, *frame_shape):
        got = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__
        raise ValueError(f"reference must have shape {(b, *frame_shape)}, got {got}")
    pose_dim = memory.poses.shape[-1]
    reference_pose = check_pose("reference_pose", reference_pose, pose_dim)
    if tuple(reference_pose.shape) != (b, pose_dim):
        raise ValueError(
            f"reference_pose must have shape {(b, pose_dim)}, got {tuple(reference_pose.shape)}"
        )
    min_confidence = check_real("min_confidence", min_confidence)
    if min_confidence < 1:
        raise ValueError(f"min_confidence must be >= 1, got {min_confidence!r}")
    ref_yaw = reference_pose[:, -1].to(memory.poses.dtype)
    prior = wrap_angle(memory.poses[..., -1] - ref_yaw[:, None])  # (B, k)
    offset, confidence = heading_offsets(
        memory.frames.flatten(0, 1),
        reference[:, None].expand(-1, k, *frame_shape).flatten(0, 1).to(memory.frames.dtype),
        prior.flatten(),
        fov,
        search=search,
        step=step,
        min_overlap=min_overlap,
    )
    refined = memory.mask & (confidence.view(b, k) >= min_confidence)
    yaw = wrap_angle(ref_yaw[:, None] + offset.view(b, k))
    poses = memory.poses.clone()
    poses[..., -1] = torch.where(refined, yaw, memory.poses[..., -1])
    return dataclasses.replace(memory, poses=poses), refined
