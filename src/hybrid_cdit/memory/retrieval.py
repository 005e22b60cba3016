"""Pose-based retrieval: pure, batched scoring and top-k selection over memory tensors.

Every function works on plain tensors, one row per sample, so it serves a
:class:`~hybrid_cdit.memory.MemoryBuffer` as well as a training ``collate_fn`` that builds memory
from a trajectory's history. Shapes: ``B`` samples, ``M`` memory slots per sample, ``P`` the
pose size (3 ``(x, y, yaw)`` or 5 ``(x, y, z, pitch, yaw)``, see :mod:`.poses`), ``k`` slots
retrieved. A ``valid`` mask ``(B, M)`` marks the slots that hold a frame; the content of other
slots is ignored (it may even be non-finite). Row ``i`` of every output depends on row ``i`` of
the inputs only.

Strategies (scores in ``[0, 1]``, higher is more relevant, 0 for invalid slots):

- ``"distance"``: the seed's ``exp(-||p_query - p_mem|| / scale)`` over the position components
  (``x, y`` for 3-D poses, ``x, y, z`` for 5-D), ``scale`` 10 by default.
- ``"pose"``: the distance score times the heading agreement ``(1 + cos(angle)) / 2``, where
  ``angle`` is the angle between the two view directions (:func:`.poses.heading_vector`); for
  3-D poses ``cos(angle) = cos(yaw_query - yaw_mem)``. The same place seen facing the other way
  scores 0.
- ``"fov"``: WorldMem-style view overlap. Points are sampled uniformly in the part of a ball of
  radius ``FovParams.radius`` around the query camera that the query sees (its horizontal and
  vertical half-angles); a memory frame's score is the share of those points inside its own
  field of view. Selection is greedy coverage: each pick maximises the share of the query's view
  not yet covered by earlier picks (once everything is covered, coverage starts over), minus a
  recency penalty ``recency_weight * age / max_age`` from the frames' steps.

Selection (:func:`select_top_k`) ranks by score, breaks ties by the more recent step (when steps
are given) and then by the lower slot index, and masks slots scored under ``threshold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine

from .._validation import check_positive_int, check_shape, check_tensor
from .context import MemoryContext, all_finite
from .poses import POSE_DIMS, view_direction

__all__ = [
    "STRATEGIES",
    "FovParams",
    "Selection",
    "Strategy",
    "build_context",
    "check_strategy",
    "distance_scores",
    "fov_scores",
    "fov_select",
    "gather_slots",
    "pose_scores",
    "retrieve",
    "select_memory",
    "select_top_k",
]

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


def _check_real(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FovParams:
    """Parameters of the ``"fov"`` strategy (WorldMem's defaults).

    Attributes:
        half_fov_h: horizontal half field of view in radians, in ``(0, pi]`` (52.5 degrees,
            WorldMem's 105-degree horizontal field of view).
        half_fov_v: vertical half field of view in radians, in ``(0, pi/2]`` (37.5 degrees).
        radius: radius of the ball around the query camera where points are sampled (30).
        num_points: points sampled inside the query's view (512, from a scrambled Sobol
            sequence: overlaps within about 0.002 on average, 0.03 at worst, of a
            65536-point estimate).
        recency_weight: weight of the recency penalty in greedy selection (0.2).
        seed: seed of the point sampler when no ``generator`` is given, so retrieval is
            deterministic by default (a ``generator`` draws the seed instead).
    """

    half_fov_h: float = math.radians(52.5)
    half_fov_v: float = math.radians(37.5)
    radius: float = 30.0
    num_points: int = 512
    recency_weight: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        h = _check_real("half_fov_h", self.half_fov_h, positive=True)
        v = _check_real("half_fov_v", self.half_fov_v, positive=True)
        if h > math.pi:
            raise ValueError(f"half_fov_h must be in (0, pi], got {h!r}")
        if v > math.pi / 2:
            raise ValueError(f"half_fov_v must be in (0, pi/2], got {v!r}")
        _check_real("radius", self.radius, positive=True)
        check_positive_int("num_points", self.num_points)
        if _check_real("recency_weight", self.recency_weight) < 0:
            raise ValueError(f"recency_weight must be >= 0, got {self.recency_weight!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


class Selection(NamedTuple):
    """The slots chosen for each sample.

    Attributes:
        indices: ``(B, k)`` long slot indices into the memory's ``M`` axis (0 for slots padded
            beyond ``M``).
        scores: ``(B, k)`` their scores in ``[0, 1]`` (0 where padded or empty).
        mask: ``(B, k)`` bool, True for slots that hold a frame scored at or above the
            threshold.
    """

    indices: Tensor
    scores: Tensor
    mask: Tensor


# --------------------------------------------------------------------------- validation


def _check_memory(
    memory_poses: object, query_pose: object, valid: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate ``(B, M, P)`` poses, ``(B, P)`` query and ``(B, M)`` mask; zero invalid slots."""
    poses = check_shape("memory_poses", memory_poses, [("B", None), ("M", None), ("P", None)])
    b, m, p = poses.shape
    if p not in POSE_DIMS:
        raise ValueError(
            f"memory_poses must have pose dimension 3 (x, y, yaw) or 5 (x, y, z, pitch, yaw), "
            f"got shape {tuple(poses.shape)}"
        )
    if m < 1:
        raise ValueError(f"memory_poses must hold at least one slot (M >= 1), got M={m}")
    if not poses.is_floating_point():
        raise ValueError(f"memory_poses must have a floating-point dtype, got {poses.dtype}")
    query = check_shape("query_pose", query_pose, [("B", b), ("P", p)])
    if not query.is_floating_point():
        raise ValueError(f"query_pose must have a floating-point dtype, got {query.dtype}")
    if not bool(torch.isfinite(query).all()):
        raise ValueError("query_pose must be finite, got non-finite values (NaN or inf)")
    if valid is None:
        mask = torch.ones(b, m, dtype=torch.bool, device=poses.device)
    else:
        mask = check_shape("valid", valid, [("B", b), ("M", m)])
        if mask.dtype != torch.bool:
            raise ValueError(f"valid must have dtype torch.bool, got {mask.dtype}")
        mask = mask.to(poses.device)
    if not bool((torch.isfinite(poses).all(-1) | ~mask).all()):
        raise ValueError("memory_poses must be finite in valid slots, got NaN or inf")
    clean = torch.where(mask.unsqueeze(-1), poses, torch.zeros((), dtype=poses.dtype))
    return clean, query.to(device=poses.device, dtype=poses.dtype), mask


def _check_steps(name: str, steps: object, b: int, m: int) -> Tensor:
    tensor = check_shape(name, steps, [("B", b), ("M", m)])
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {tensor.dtype}")
    return tensor


# --------------------------------------------------------------------------- scores


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
    scale = _check_real("scale", scale, positive=True)
    poses, query, mask = _check_memory(memory_poses, query_pose, valid)
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
    scale = _check_real("scale", scale, positive=True)
    poses, query, mask = _check_memory(memory_poses, query_pose, valid)
    cos_angle = (view_direction(poses) * view_direction(query)[:, None]).sum(-1)
    agreement = ((1.0 + cos_angle) * 0.5).clamp(0.0, 1.0)
    return torch.where(mask, _distance(poses, query, scale) * agreement, 0.0)


def _point_seed(params: FovParams, generator: torch.Generator | None) -> int:
    if generator is None:
        return params.seed
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def _query_view_points(
    query: Tensor, params: FovParams, generator: torch.Generator | None
) -> Tensor:
    """``(B, N, 3)`` points uniform (in volume) in the query's view within ``radius``, relative
    to the query camera's position.

    The ``(N, 3)`` unit-cube samples come from a scrambled Sobol sequence (seeded from
    ``generator``, or ``params.seed``): low-discrepancy points estimate overlaps about as well as
    four times as many independent random points. The same samples are mapped through every
    sample's pose, so a sample's points do not depend on the rest of the batch.
    """
    engine = SobolEngine(3, scramble=True, seed=_point_seed(params, generator))  # type: ignore[no-untyped-call]
    gen_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    u = engine.draw(params.num_points, dtype=gen_dtype).to(device=query.device, dtype=query.dtype)
    pitch = query[:, 3] if query.shape[-1] == 5 else torch.zeros_like(query[:, 0])
    yaw = query[:, -1]
    radius = params.radius * u[:, 0].pow(1.0 / 3.0)  # (N,)
    azimuth = yaw[:, None] + (2.0 * u[:, 1] - 1.0) * params.half_fov_h  # (B, N)
    low = (pitch - params.half_fov_v).clamp(-math.pi / 2, math.pi / 2)
    high = (pitch + params.half_fov_v).clamp(-math.pi / 2, math.pi / 2)
    sin_low = torch.sin(low)[:, None]
    sin_elev = (sin_low + u[:, 2] * (torch.sin(high)[:, None] - sin_low)).clamp(-1.0, 1.0)
    cos_elev = torch.sqrt((1.0 - sin_elev.square()).clamp_min(0.0))
    return radius[None, :, None] * torch.stack(
        [cos_elev * torch.cos(azimuth), cos_elev * torch.sin(azimuth), sin_elev], dim=-1
    )


def _in_view(points: Tensor, cameras: Tensor, params: FovParams) -> Tensor:
    """``(B, M, N)`` bool: point ``n`` ``(B, N, 3)`` lies in the view of camera ``m``.

    ``cameras`` are ``(B, M, P)`` poses whose positions are relative to the same origin as the
    points. A point is in view when its azimuth differs from the camera's yaw by less than
    ``half_fov_h`` and its elevation differs from the camera's pitch by less than
    ``half_fov_v`` (WorldMem's test). Both tests compare cosines without square roots or
    arc-tangents: with ``x |x|`` monotonic, ``cos(angle) = a / |v| > c`` becomes
    ``a |a| > c |c| |v|^2``.
    """
    yaw = cameras[..., -1, None]
    vx = points[:, None, :, 0] - cameras[..., 0, None]  # (B, M, N)
    vy = points[:, None, :, 1] - cameras[..., 1, None]
    horizontal2 = vx * vx
    horizontal2.addcmul_(vy, vy)
    inside: Tensor
    if params.half_fov_h < math.pi:
        forward = vx.mul_(torch.cos(yaw)).addcmul_(vy, torch.sin(yaw))
        c_h = math.cos(params.half_fov_h)
        inside = forward.mul_(forward.abs()) > (c_h * abs(c_h)) * horizontal2
    else:
        inside = torch.ones_like(horizontal2, dtype=torch.bool)
    del vx, vy
    c_v2 = math.cos(params.half_fov_v) ** 2
    if cameras.shape[-1] == 3:
        # Level cameras on the ground plane: |elevation| < half_fov_v  <=>
        # (1 - c_v^2) horizontal^2 > c_v^2 z^2.
        inside &= (1.0 - c_v2) * horizontal2 > c_v2 * points[:, None, :, 2].square()
        return inside
    vz = points[:, None, :, 2] - cameras[..., 2, None]
    pitch = cameras[..., 3, None]
    along = torch.sqrt(horizontal2).mul_(torch.cos(pitch)).addcmul_(vz, torch.sin(pitch))
    norm2 = horizontal2.addcmul_(vz, vz)
    inside &= along.mul_(along.abs()) > c_v2 * norm2
    return inside


_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def _pack_bits(bits: Tensor) -> Tensor:
    """``(..., N)`` bool -> ``(..., ceil(N / 64))`` int64 words, zero-padded at the end."""
    pad = -bits.shape[-1] % 64
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    grouped = bits.reshape(*bits.shape[:-1], -1, 8).view(torch.uint8)
    packed = (grouped * _BIT_WEIGHTS.to(bits.device)).sum(-1, dtype=torch.uint8)
    return packed.view(torch.int64)


def _popcount(words: Tensor) -> Tensor:
    """``(..., W)`` int64 -> ``(...)`` int64 number of set bits (SWAR bit counting)."""
    x = words - ((words >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # each byte now holds its own bit count
    return x.view(torch.uint8).sum(-1, dtype=torch.int64)


def _fov_overlap(
    poses: Tensor, query: Tensor, params: FovParams, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``(B, M, ceil(N / 64))`` bit-packed in-view points and ``(B, M)`` overlap ratios."""
    points = _query_view_points(query, params, generator)
    n_pos = 2 if poses.shape[-1] == 3 else 3
    cameras = poses.clone()
    cameras[..., :n_pos] -= query[:, None, :n_pos]
    packed = _pack_bits(_in_view(points, cameras, params))
    overlap = _popcount(packed).to(poses.dtype) / params.num_points
    return packed, overlap


def fov_scores(
    memory_poses: Tensor,
    query_pose: Tensor,
    valid: Tensor | None = None,
    *,
    params: FovParams | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """View overlap: the share of the query's view that each memory frame also sees.

    Args:
        memory_poses: ``(B, M, P)``.
        query_pose: ``(B, P)``.
        valid: ``(B, M)`` bool or None (all valid).
        params: :class:`FovParams` (WorldMem's defaults when None).
        generator: draws the sample points; None uses a generator seeded with ``params.seed``.

    Returns:
        ``(B, M)`` overlap ratios in ``[0, 1]``, 0 for invalid slots.
    """
    params = FovParams() if params is None else params
    poses, query, mask = _check_memory(memory_poses, query_pose, valid)
    _, overlap = _fov_overlap(poses, query, params, generator)
    return torch.where(mask, overlap, 0.0)


# --------------------------------------------------------------------------- selection


def _check_threshold(threshold: object) -> float:
    return _check_real("threshold", threshold)


def _secondary_order(steps: Tensor | None, b: int, m: int, device: torch.device) -> Tensor:
    """``(B, M)`` slot indices ordered by step descending, then slot ascending."""
    if steps is None:
        return torch.arange(m, device=device).expand(b, m)
    return torch.argsort(steps.to(device), dim=1, descending=True, stable=True)


def _pad(selection: Selection, k: int) -> Selection:
    extra = k - selection.indices.shape[1]
    if extra <= 0:
        return selection
    idx, scores, mask = selection
    b = idx.shape[0]
    return Selection(
        torch.cat([idx, idx.new_zeros(b, extra)], dim=1),
        torch.cat([scores, scores.new_zeros(b, extra)], dim=1),
        torch.cat([mask, mask.new_zeros(b, extra)], dim=1),
    )


def select_top_k(
    scores: Tensor,
    valid: Tensor | None,
    k: int,
    threshold: float = 0.0,
    *,
    steps: Tensor | None = None,
) -> Selection:
    """The ``k`` highest-scoring valid slots of each sample.

    Ties are broken by the more recent step when ``steps`` is given, then by the lower slot
    index, so the result does not depend on how equal-scored frames happen to be laid out.
    ``k`` may exceed ``M``: the extra slots come back masked with index 0 and score 0. Slots
    that are empty or scored under ``threshold`` are masked.

    Args:
        scores: ``(B, M)`` floating scores (only valid slots must be finite).
        valid: ``(B, M)`` bool or None (all valid).
        k: number of slots to return, ``>= 1``.
        threshold: slots scored strictly under it are masked.
        steps: optional ``(B, M)`` integer steps (timestamps) for tie-breaking.

    Returns:
        :class:`Selection` with ``(B, k)`` indices (sorted by decreasing score), scores, mask.
    """
    scores = check_shape("scores", scores, [("B", None), ("M", None)])
    b, m = scores.shape
    if m < 1:
        raise ValueError(f"scores must hold at least one slot (M >= 1), got shape {(b, m)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must have a floating-point dtype, got {scores.dtype}")
    k = check_positive_int("k", k)
    threshold = _check_threshold(threshold)
    if valid is None:
        mask = torch.ones(b, m, dtype=torch.bool, device=scores.device)
    else:
        mask = check_shape("valid", valid, [("B", b), ("M", m)])
        if mask.dtype != torch.bool:
            raise ValueError(f"valid must have dtype torch.bool, got {mask.dtype}")
        mask = mask.to(scores.device)
    if steps is not None:
        steps = _check_steps("steps", steps, b, m)
    if not bool((torch.isfinite(scores) | ~mask).all()):
        raise ValueError("scores must be finite in valid slots, got NaN or inf")
    return _top_k(scores, mask, k, threshold, steps)


def _top_k(
    scores: Tensor, valid: Tensor, k: int, threshold: float, steps: Tensor | None
) -> Selection:
    b, m = scores.shape
    order = _secondary_order(steps, b, m, scores.device)
    key = torch.where(valid, scores, -math.inf).gather(1, order)
    order = order.gather(1, torch.argsort(key, dim=1, descending=True, stable=True))
    top = order[:, : min(k, m)]
    top_scores = torch.where(valid, scores, 0.0).gather(1, top)
    top_mask = valid.gather(1, top) & (top_scores >= threshold)
    return _pad(Selection(top, top_scores, top_mask), k)


def _recency_penalty(
    steps: Tensor | None,
    valid: Tensor,
    query_step: Tensor | None,
    weight: float,
    dtype: torch.dtype,
) -> Tensor:
    """``(B, M)`` ``weight * age / max_age`` (0 without steps); ages count from ``query_step``."""
    if steps is None or weight == 0.0:
        return torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    steps = steps.to(valid.device)
    if query_step is None:
        latest = torch.where(valid, steps, torch.iinfo(steps.dtype).min).amax(1)
        query_step = torch.where(valid.any(1), latest + 1, 0)
    age = (query_step.to(steps.device)[:, None] - steps).clamp_min(0)
    age = torch.where(valid, age, 0).to(dtype)
    return weight * age / age.amax(1, keepdim=True).clamp_min(1.0)


def fov_select(
    memory_poses: Tensor,
    query_pose: Tensor,
    valid: Tensor | None,
    k: int,
    *,
    threshold: float = 0.0,
    steps: Tensor | None = None,
    query_step: Tensor | None = None,
    params: FovParams | None = None,
    generator: torch.Generator | None = None,
) -> Selection:
    """Greedy coverage selection of ``k`` frames covering different parts of the query's view.

    Pick ``j`` maximises ``gain - recency_weight * age / max_age``, where ``gain`` is the share
    of the query's view points that frame sees and no earlier pick saw (when earlier picks cover
    every point, coverage starts over, so later picks rank by full overlap), ``age`` is
    ``query_step - step`` (clamped at 0) and ``max_age`` the oldest valid frame's age. Ties
    prefer the more recent step, then the lower slot. The loop runs over the ``k`` picks only;
    everything inside is batched over samples and frames.

    Args:
        memory_poses: ``(B, M, P)``.
        query_pose: ``(B, P)``.
        valid: ``(B, M)`` bool or None (all valid).
        k: number of slots, ``>= 1`` (extra slots beyond ``M`` come back masked).
        threshold: picks whose overlap (:func:`fov_scores`) is under it are masked.
        steps: optional ``(B, M)`` integer steps; without them there is no recency penalty.
        query_step: optional ``(B,)`` integer step of the query; defaults to one after the most
            recent valid step.
        params: :class:`FovParams`.
        generator: point sampler, see :func:`fov_scores`.

    Returns:
        :class:`Selection` in pick order; ``scores`` are the picks' overlaps in ``[0, 1]``.
    """
    params = FovParams() if params is None else params
    poses, query, mask = _check_memory(memory_poses, query_pose, valid)
    b, m = mask.shape
    k = check_positive_int("k", k)
    threshold = _check_threshold(threshold)
    if steps is not None:
        steps = _check_steps("steps", steps, b, m)
    if query_step is not None:
        query_step = check_shape("query_step", query_step, [("B", b)])
        if query_step.is_floating_point() or query_step.dtype == torch.bool:
            raise ValueError(f"query_step must have an integer dtype, got {query_step.dtype}")
    return _fov_greedy(poses, query, mask, k, threshold, steps, query_step, params, generator)


def _fov_greedy(
    poses: Tensor,
    query: Tensor,
    valid: Tensor,
    k: int,
    threshold: float,
    steps: Tensor | None,
    query_step: Tensor | None,
    params: FovParams,
    generator: torch.Generator | None,
) -> Selection:
    b, m = valid.shape
    in_view, overlap = _fov_overlap(poses, query, params, generator)  # (B, M, W) packed bits
    penalty = _recency_penalty(steps, valid, query_step, params.recency_weight, poses.dtype)
    order = _secondary_order(steps, b, m, poses.device)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(m, device=poses.device).expand(b, m)
    )
    rows = torch.arange(b, device=poses.device)
    every = _pack_bits(torch.ones(params.num_points, dtype=torch.bool, device=poses.device))
    covered = torch.zeros(b, every.shape[0], dtype=torch.int64, device=poses.device)
    taken = torch.zeros(b, m, dtype=torch.bool, device=poses.device)
    picks: list[Tensor] = []
    for _ in range(min(k, m)):
        remaining = ~covered & every
        done = (remaining == 0).all(1, keepdim=True)
        remaining = torch.where(done, every, remaining)  # all covered: coverage starts over
        gain = _popcount(in_view & remaining[:, None]).to(poses.dtype) / params.num_points
        key = torch.where(valid & ~taken, gain - penalty, -math.inf)
        best = key.amax(1, keepdim=True)
        candidates = ~taken & (key == best)
        pick = torch.where(candidates, rank, m).argmin(1)  # (B,)
        taken[rows, pick] = True
        covered |= in_view[rows, pick]
        picks.append(pick)
    indices = torch.stack(picks, dim=1)
    scores = torch.where(valid, overlap, 0.0).gather(1, indices)
    mask = valid.gather(1, indices) & (scores >= threshold)
    return _pad(Selection(indices, scores, mask), k)


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
    if name == "fov":
        return fov_select(
            memory_poses,
            query_pose,
            valid,
            k,
            threshold=threshold,
            steps=steps,
            query_step=query_step,
            params=fov,
            generator=generator,
        )
    check_positive_int("k", k)
    _check_threshold(threshold)
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
        ``mask`` ``(B, k)`` and ``query_pose (B, P)``.
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
    )


def build_context(
    frames: Tensor,
    poses: Tensor,
    selection: Selection,
    query_pose: Tensor,
    *,
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
    )
