"""Write policies of :class:`~hybrid_cdit.memory.MemoryBuffer`: which slot a new frame takes.

- ``"lru"``: the sample's lowest empty slot, else its least recently used frame (a write or a
  retrieval refreshes a frame). After ``capacity`` writes over new ground the first places are
  gone.
- ``"coverage"`` (:class:`CoveragePolicy`): one frame per view. A frame whose view a stored
  frame already shows (:func:`view_distance` at most 1) is not stored again: the stored frame
  is kept and counts as used (``same_view="keep"``, the default), or the new frame replaces the
  nearest such frame (``same_view="replace"``, the newest view wins). Otherwise the frame takes
  the lowest empty slot; when the sample is full, the most redundant frame is evicted: the one
  whose nearest other frame (the new one included) is nearest, ties to the least recently
  used, then the lower slot. A few dozen slots then span a journey of thousands of steps.

With ``"keep"``, stored frames stay more than one view apart and never move. With
``"replace"``, a frame written every step of a continuous walk replaces its predecessor, so
the slot follows the walker and the places it passed are lost: prefer ``"keep"`` for frames
written every step, ``"replace"`` for sparse writes in a changing world.

The coverage bookkeeping (:class:`CoverageState`) keeps, per slot, the squared view distance
to the nearest other stored frame, updated incrementally: ``O(capacity)`` work per writing
sample, plus ``O(capacity)`` for each frame whose nearest neighbour was overwritten. Everything
runs on whole ``(B, capacity)`` tensors with a per-sample mask: no Python loop over samples or
slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from ._checks import check_real
from .poses import view_direction

__all__ = [
    "WRITE_POLICIES",
    "CoveragePolicy",
    "WritePolicy",
    "check_write_policy",
    "view_distance",
]

WritePolicy = Literal["lru", "coverage"]
"""Names of the write policies."""

WRITE_POLICIES: tuple[str, ...] = get_args(WritePolicy)
"""``("lru", "coverage")``."""


@dataclass(frozen=True)
class CoveragePolicy:
    """The coverage-keeping write policy and its notion of *the same view*.

    Two poses show the same view when their positions are at most ``radius`` apart and their
    view directions at most ``max_angle`` apart (:func:`view_distance` at most 1). The
    defaults, 1 unit (a Memory Maze cell; a metre in NWM's datasets) and 45 degrees, are the
    revisit rule of the Memory Maze benchmark.

    Attributes:
        radius: position tolerance, ``> 0``, in the poses' units.
        max_angle: view-direction tolerance in radians, in ``(0, pi]``.
        same_view: what a frame whose view is already stored does: ``"keep"`` the stored frame
            (the new one is not stored; the stored one counts as used) or ``"replace"`` it.

    Raises:
        ValueError: naming the field, the expected and the received value.
    """

    radius: float = 1.0
    max_angle: float = math.pi / 4
    same_view: Literal["keep", "replace"] = "keep"

    def __post_init__(self) -> None:
        if self.same_view not in ("keep", "replace"):
            raise ValueError(f"same_view must be 'keep' or 'replace', got {self.same_view!r}")
        object.__setattr__(self, "radius", check_real("radius", self.radius, positive=True))
        angle = check_real("max_angle", self.max_angle, positive=True)
        if angle > math.pi:
            raise ValueError(f"max_angle must be in (0, pi] radians, got {self.max_angle!r}")
        object.__setattr__(self, "max_angle", angle)

    @property
    def name(self) -> str:
        """``"coverage"``."""
        return "coverage"


def check_write_policy(policy: object) -> Literal["lru"] | CoveragePolicy:
    """``"lru"``, or the :class:`CoveragePolicy` that ``policy`` names or is.

    Raises:
        ValueError: ``policy`` is neither a name of :data:`WRITE_POLICIES` nor a
            ``CoveragePolicy``.
    """
    if isinstance(policy, CoveragePolicy):
        return policy
    if policy == "lru":
        return "lru"
    if policy == "coverage":
        return CoveragePolicy()
    raise ValueError(
        f"write_policy must be one of {WRITE_POLICIES} or a CoveragePolicy, got {policy!r}"
    )


def positions_of(poses: Tensor) -> Tensor:
    """``(..., 2)`` ground positions of 3-D poses, ``(..., 3)`` positions of 5-D poses."""
    return poses[..., : 2 if poses.shape[-1] == 3 else 3]


def view_distance(
    poses: Tensor, other: Tensor, *, radius: float = 1.0, max_angle: float = math.pi / 4
) -> Tensor:
    """``max(||position difference|| / radius, sin(angle / 2) / sin(max_angle / 2))``.

    ``angle`` is the angle between the two view directions
    (:func:`~hybrid_cdit.memory.heading_vector`); the position uses ``(x, y)`` of 3-D poses and
    ``(x, y, z)`` of 5-D poses. Both terms reach 1 exactly at their tolerance, so at most 1
    means *the same view* (:class:`CoveragePolicy`). Symmetric: ``view_distance(a, b)`` equals
    ``view_distance(b, a)`` bit for bit.

    Args:
        poses: ``(..., P)``.
        other: ``(..., P)``, broadcastable against ``poses``.
        radius: position tolerance, ``> 0``.
        max_angle: angle tolerance in radians, in ``(0, pi]``.

    Returns:
        ``(...)`` non-negative distances in ``poses``' dtype.
    """
    policy = CoveragePolicy(radius, max_angle)  # validates both
    if poses.shape[-1] != other.shape[-1] or poses.shape[-1] not in (3, 5):
        raise ValueError(
            f"poses and other must both have pose dimension 3 or 5, got shapes "
            f"{tuple(poses.shape)} and {tuple(other.shape)}"
        )
    state = CoverageState(policy, 1, 1, poses.shape[-1], poses.dtype, poses.device)
    squared = state.squared(state.query_features(poses), state.query_features(other))
    return torch.sqrt(squared)


class CoverageState:
    """The coverage policy's bookkeeping over ``(B, M)`` slots, on the buffer's index device.

    ``features (F, B, M)``: each stored frame's position divided by the radius (2 or 3 rows)
    and its unit view direction times ``sqrt(1 / (2 (1 - cos(max_angle))))`` (2 rows for 3-D
    poses, 3 for 5-D), one contiguous ``(B, M)`` plane per component, so that the squared view
    distance is the larger of two sums of squared feature differences;
    ``nearest (B, M)``: the squared view distance to the nearest other stored frame (``inf``
    when alone or empty); ``nearest_slot (B, M)``: that frame's slot (-1 when none).
    """

    def __init__(
        self,
        policy: CoveragePolicy,
        b: int,
        m: int,
        pose_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.policy = policy
        self.direction_scale = math.sqrt(0.5 / (1.0 - math.cos(policy.max_angle)))
        self.npos = 2 if pose_dim == 3 else 3
        self.features = torch.zeros(2 * self.npos, b, m, dtype=dtype, device=device)
        self.nearest = torch.full((b, m), math.inf, dtype=dtype, device=device)
        self.nearest_slot = torch.full((b, m), -1, dtype=torch.long, device=device)
        self.slot_ids = torch.arange(m, device=device)
        self.empty_order = self.slot_ids - m  # empty slots' eviction order: below any clock
        self.feature_scale = torch.tensor(
            [1.0 / policy.radius] * self.npos + [self.direction_scale] * self.npos,
            dtype=dtype,
            device=device,
        )

    def tensors(self) -> list[Tensor]:
        """The per-slot bookkeeping tensors (for byte counts)."""
        return [self.features, self.nearest, self.nearest_slot]

    def to(self, device: torch.device) -> None:
        self.features = self.features.to(device)
        self.nearest = self.nearest.to(device)
        self.nearest_slot = self.nearest_slot.to(device)
        self.slot_ids = self.slot_ids.to(device)
        self.empty_order = self.empty_order.to(device)
        self.feature_scale = self.feature_scale.to(device)

    def reset(self, rows: Tensor) -> None:
        """Forget the samples ``rows`` ``(R,)``."""
        self.features[:, rows] = 0
        self.nearest[rows] = math.inf
        self.nearest_slot[rows] = -1

    def query_features(self, poses: Tensor) -> Tensor:
        """``(F, ...)`` features of ``poses (..., P)``."""
        direction = view_direction(poses)[..., : self.npos]
        features = torch.cat([positions_of(poses), direction], dim=-1).mul_(self.feature_scale)
        return features.movedim(-1, 0).contiguous()  # one plane per component

    def squared(self, features: Tensor, query: Tensor) -> Tensor:
        """Squared view distance between broadcastable ``(F, ...)`` feature tensors.

        ``max(|position difference|^2 / radius^2, (1 - cos(angle)) / (1 - cos(max_angle)))``,
        with ``1 - cos(angle) = |u - v|^2 / 2`` for unit view directions ``u, v``. Sums run over
        the leading component axis in a fixed order, so swapping the two arguments gives the
        same value bit for bit (ties between a pair stay ties).
        """
        delta = features - query
        delta.mul_(delta)
        if self.npos == 2:
            return torch.maximum(delta[0] + delta[1], delta[2] + delta[3])
        return torch.maximum(delta[0] + delta[1] + delta[2], delta[3] + delta[4] + delta[5])

    def choose(
        self, valid: Tensor, last_used: Tensor, query: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decide every sample's write (the caller keeps the writers').

        Args:
            valid: ``(B, M)`` bool.
            last_used: ``(B, M)`` LRU clock.
            query: ``(F, B)`` features of the new frames (:meth:`query_features`).

        Returns:
            ``match (B,)`` bool (a stored frame shows this view), the ``(B,)`` slot to write
            (with ``match``, the slot of that frame) and the ``(B, M)`` squared view distances
            of the stored frames to the new ones (``inf`` at empty slots).
        """
        empty = ~valid
        to_new = self.squared(self.features, query[:, :, None]).masked_fill_(empty, math.inf)
        best, same = to_new.min(1)  # the nearest stored frame, lowest slot on ties
        match = best <= 1.0
        # The lowest empty slot first; when full, the most redundant frame: nearest to its
        # nearest other frame, the new one included; ties to the least recently used, then
        # (argmin) the lowest slot.
        redundancy = torch.minimum(self.nearest, to_new).masked_fill_(empty, -math.inf)
        tied = redundancy == redundancy.amin(1, keepdim=True)
        order = torch.where(valid, last_used, self.empty_order)
        evict = torch.where(tied, order, torch.iinfo(torch.long).max).argmin(1)
        return match, torch.where(match, same, evict), to_new

    def choose_upcoming(
        self,
        valid: Tensor,
        last_used: Tensor,
        query: Tensor,
        upcoming: Tensor,
        upcoming_mask: Tensor | None,
        *,
        chunk_elements: int = 1 << 21,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decide every sample's write knowing the poses the next retrievals will query.

        No frame is merged: the new frame takes the lowest empty slot, or, when the sample is
        full, every stored frame and the new one are candidates and the one whose next *use*
        comes latest is dropped (Belady's rule). A candidate uses upcoming pose ``j`` when it is
        the only candidate showing that view (squared view distance at most 1); candidates
        with no use come last (after the route), ties go to the most redundant, then to the
        least recently used (the new frame after every stored one), then the lower slot.

        Args:
            valid: ``(B, M)`` bool.
            last_used: ``(B, M)`` LRU clock.
            query: ``(F, B)`` features of the new frames.
            upcoming: ``(F, B, L)`` features of the upcoming poses, nearest first.
            upcoming_mask: optional ``(B, L)`` bool, the upcoming poses that count.
            chunk_elements: bound on the ``B * M * chunk`` elements of each temporary.

        Returns:
            ``store (B,)`` bool (False: the new frame is the one dropped), the ``(B,)`` slot to
            write (0 where nothing is stored) and the ``(B, M)`` squared view distances of the
            stored frames to the new ones (``inf`` at empty slots).
        """
        b, m = valid.shape
        length = upcoming.shape[-1]
        empty = ~valid
        to_new = self.squared(self.features, query[:, :, None]).masked_fill_(empty, math.inf)
        # each candidate's first use (``length``: never), the new frame last
        next_use = torch.full((b, m + 1), length, dtype=torch.long, device=valid.device)
        step = max(1, chunk_elements // max(1, b * m))
        for start in range(0, length, step):  # bounds the (F, B, M, chunk) temporary
            part = upcoming[:, :, start : start + step]
            shows = self.squared(self.features[..., None], part[:, :, None]) <= 1.0  # (B, M, c)
            shows &= valid[:, :, None]
            shows_new = self.squared(query[:, :, None], part) <= 1.0  # (B, c)
            if upcoming_mask is not None:
                counted = upcoming_mask[:, start : start + step]
                shows &= counted[:, None]
                shows_new &= counted
            alone = (shows.sum(1) + shows_new) == 1  # (B, c)
            uses = torch.cat([shows & alone[:, None], (shows_new & alone)[:, None]], 1)
            first = uses.to(torch.uint8).argmax(2) + start  # the first use in this chunk
            next_use = torch.minimum(next_use, torch.where(uses.any(2), first, length))
        # Only full samples drop a candidate (they have no empty slot); the others store the
        # new frame in their lowest empty slot.
        redundancy = torch.cat(
            [torch.minimum(self.nearest, to_new), to_new.amin(1, keepdim=True)], 1
        )
        latest = next_use == next_use.amax(1, keepdim=True)
        redundancy = torch.where(latest, redundancy, math.inf)
        tied = latest & (redundancy == redundancy.amin(1, keepdim=True))
        limit = torch.iinfo(torch.long).max
        order = torch.cat([last_used, torch.full_like(last_used[:, :1], limit - 1)], 1)
        drop = torch.where(tied, order, limit).argmin(1)
        full = valid.all(1)
        store = ~full | (drop < m)
        lowest_empty = valid.to(torch.uint8).argmin(1)
        slots = torch.where(full, drop.clamp_max(m - 1), lowest_empty).masked_fill_(~store, 0)
        return store, slots, to_new

    def update(
        self, valid: Tensor, rows: Tensor | None, slots: Tensor, flat: Tensor, to_new: Tensor
    ) -> None:
        """Bring the bookkeeping up to date after the new frames were stored.

        Args:
            valid: ``(B, M)`` bool, new frames included.
            rows: ``(R,)`` long, the samples that stored a frame; None when all did.
            slots: ``(B,)`` where they stored it (as :meth:`choose` returned it).
            flat: ``(R,)`` long, ``rows * M + slots[rows]``.
            to_new: ``(B, M)`` as :meth:`choose` returned it; overwritten.
        """
        # Distances to the new frame from the other stored frames of the storing samples;
        # ``to_new`` is already inf at the slots that were empty.
        dist = to_new
        if rows is not None:
            stored = torch.zeros_like(valid[:, 0]).index_fill_(0, rows, True)
            dist.masked_fill_(~stored[:, None], math.inf)
        dist.view(-1).index_fill_(0, flat, math.inf)
        # Frames whose nearest neighbour was overwritten search again below; the others keep
        # theirs unless the new frame is nearer.
        slot_col = slots[:, None]
        stale = (self.nearest_slot == slot_col) & (dist < math.inf)
        closer = dist < self.nearest
        self.nearest = torch.where(closer, dist, self.nearest)
        self.nearest_slot = torch.where(closer, slot_col, self.nearest_slot)
        best, best_slot = (dist if rows is None else dist.index_select(0, rows)).min(1)
        self._set_nearest(flat, best, best_slot)
        flat_stale = stale.view(-1).nonzero().squeeze(1)
        if flat_stale.numel():
            self._search(valid, flat_stale)

    def store(self, flat: Tensor, query: Tensor) -> None:
        """Write the ``(F, R)`` features ``query`` of new frames at flat indices ``flat (R,)``."""
        self.features.view(self.features.shape[0], -1).index_copy_(1, flat, query)

    def _set_nearest(self, flat: Tensor, best: Tensor, best_slot: Tensor) -> None:
        """Record ``(S,)`` nearest distances and slots at flat indices ``flat (S,)``."""
        self.nearest.view(-1).index_copy_(0, flat, best)
        best_slot.masked_fill_(best == math.inf, -1)
        self.nearest_slot.view(-1).index_copy_(0, flat, best_slot)

    def _search(self, valid: Tensor, flat: Tensor) -> None:
        """Recompute the nearest neighbour of the frames at flat indices ``flat`` ``(S,)``."""
        f, b, m = self.features.shape
        sample = flat.div(m, rounding_mode="floor")
        d = self.squared(
            self.features.index_select(1, sample),
            self.features.view(f, b * m).index_select(1, flat)[:, :, None],
        )  # (S, M)
        # Candidates: the sample's stored frames but the frame itself.
        others = valid.index_select(0, sample) & (self.slot_ids != flat.remainder(m)[:, None])
        best, best_slot = torch.where(others, d, math.inf).min(1)
        self._set_nearest(flat, best, best_slot)

    def rebuild(self, poses: Tensor, valid: Tensor, *, chunk: int = 256) -> None:
        """Recompute everything from the stored ``poses (B, M, P)`` (after loading a state
        dict); ``chunk`` slots at a time bound the ``(B, chunk, M)`` temporary."""
        m = valid.shape[1]
        self.features = torch.where(valid, self.query_features(poses), 0.0).contiguous()
        self.nearest.fill_(math.inf)
        self.nearest_slot.fill_(-1)
        for start in range(0, m, chunk):  # load time only, not a write path
            stop = min(start + chunk, m)
            d = self.squared(self.features[:, :, None], self.features[:, :, start:stop, None])
            others = valid[:, None, :] & valid[:, start:stop, None]
            others &= self.slot_ids[start:stop, None] != self.slot_ids
            best, best_slot = torch.where(others, d, math.inf).min(2)
            self.nearest[:, start:stop] = best
            self.nearest_slot[:, start:stop] = torch.where(torch.isinf(best), -1, best_slot)
