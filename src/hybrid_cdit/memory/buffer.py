"""``MemoryBuffer``: preallocated, per-sample long-term memory of clean latents and their poses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from .._validation import check_positive_int, check_shape
from ._checks import check_data, check_device, check_generator
from .context import MemoryContext, all_finite
from .fov import FovParams, check_fov_params
from .policies import CoveragePolicy, CoverageState, WritePolicy, check_write_policy
from .poses import POSE_DIMS
from .retrieval import build_context, select_memory
from .scores import Strategy, check_strategy

__all__ = ["MemoryBuffer"]

_STATE_KEYS = ("frames", "poses", "steps", "valid", "last_used", "next_step", "clock")


_LIMIT = 2**62
"""Bound of the step counters and the LRU clock (:attr:`MemoryBuffer.COUNTER_LIMIT`)."""


def _is_integer(tensor: Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def _first(where: Tensor) -> tuple[int, ...]:
    """Index of the first True element of ``where`` (error messages only)."""
    return tuple(int(i) for i in where.nonzero()[0])


class MemoryBuffer:
    """One independent memory of at most ``capacity`` frames for each of ``B`` samples.

    Storage is preallocated: ``frames (B, capacity, C, H, W)``, ``poses (B, capacity, P)``, an
    integer step per frame, a validity mask and a least-recently-used clock (a write or a
    retrieval refreshes a frame; within one retrieval the best-ranked frame counts as the most
    recent use). ``write_policy`` decides which slot a new frame takes
    (:mod:`~hybrid_cdit.memory.policies`): ``"lru"`` fills the sample's lowest empty slot, or
    else evicts its least recently used frame; ``"coverage"`` (or a :class:`CoveragePolicy`)
    replaces a stored frame of the same view, and when full evicts the most redundant frame.

    The frames live on ``device`` (pinned host memory when it is the CPU and CUDA is
    available); the poses and the bookkeeping retrieval and writes need live on
    ``index_device`` (``device`` when None), e.g. the model's GPU. Retrieval scores and
    selects there, and only the ``k`` retrieved frames per sample travel.

    Every method is batched over samples; sample ``i``'s memory never influences sample ``j``.
    Bad arguments raise ``ValueError`` before anything changes.

    Every state the methods reach satisfies these invariants (:meth:`load_state_dict`
    refuses a state that breaks one), per sample:

    - a stored frame's step lies in ``[0, next_step)``, and ``0 <= next_step <=``
      :attr:`COUNTER_LIMIT` (a write's step is never before the sample's last written step);
    - a stored frame's last use lies in ``[1, clock]``, and ``0 <= clock <=``
      :attr:`COUNTER_LIMIT`;
    - an empty slot holds zeros: frame, pose, step and last use;
    - stored frames and poses are finite.

    Args:
        batch_size: ``B``.
        capacity: frames per sample (50, the seed's default).
        frame_shape: ``(C, H, W)`` of the stored latents.
        pose_dim: ``P``: 3 ``(x, y, yaw)`` or 5 ``(x, y, z, pitch, yaw)``.
        device: storage device of the frames.
        dtype: floating dtype of the stored frames and poses.
        write_policy: ``"lru"`` (default), ``"coverage"`` or a :class:`CoveragePolicy`.
        index_device: device of poses, steps, masks and clocks; None means ``device``.
    """

    COUNTER_LIMIT: ClassVar[int] = _LIMIT
    """Bound of each sample's step counter and of the LRU clock: ``2**62``, beyond any
    rollout, with room for arithmetic on steps in ``int64``. A write or retrieval that would
    pass it raises ``ValueError``."""

    def __init__(
        self,
        batch_size: int,
        capacity: int = 50,
        *,
        frame_shape: Sequence[int],
        pose_dim: int = 5,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        write_policy: WritePolicy | CoveragePolicy = "lru",
        index_device: torch.device | str | None = None,
    ) -> None:
        self._policy = check_write_policy(write_policy)
        self._batch_size = check_positive_int("batch_size", batch_size)
        self._capacity = check_positive_int("capacity", capacity)
        if (
            not isinstance(frame_shape, Sequence)
            or len(frame_shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in frame_shape)
            or min(frame_shape) < 1
        ):
            raise ValueError(
                f"frame_shape must be three positive ints (C, H, W), got {frame_shape!r}"
            )
        self._frame_shape = (int(frame_shape[0]), int(frame_shape[1]), int(frame_shape[2]))
        if pose_dim not in POSE_DIMS:
            raise ValueError(
                f"pose_dim must be 3 (x, y, yaw) or 5 (x, y, z, pitch, yaw), got {pose_dim!r}"
            )
        self._pose_dim = int(pose_dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self._dtype = dtype
        self._device = check_device("device", device)
        self._index = (
            self._device if index_device is None else check_device("index_device", index_device)
        )
        b, n, idx = self._batch_size, self._capacity, self._index
        self._frames = torch.zeros(b, n, *self._frame_shape, dtype=dtype, device=self._device)
        self._poses = torch.zeros(b, n, self._pose_dim, dtype=dtype, device=idx)
        self._steps = torch.zeros(b, n, dtype=torch.long, device=idx)
        self._valid = torch.zeros(b, n, dtype=torch.bool, device=idx)
        self._last_used = torch.zeros(b, n, dtype=torch.long, device=idx)
        self._next_step = torch.zeros(b, dtype=torch.long, device=idx)
        self._row_offsets = torch.arange(b, device=idx) * n  # flat index of each sample's slot 0
        self._policy_replaces = (
            isinstance(self._policy, CoveragePolicy) and self._policy.same_view == "replace"
        )
        self._coverage = (
            CoverageState(self._policy, b, n, self._pose_dim, dtype, idx)
            if isinstance(self._policy, CoveragePolicy)
            else None
        )
        self._clock = 0
        self._step_ceiling = 0  # an upper bound of max(next_step), to skip exact checks
        self._version = 0
        self._staging: dict[int, Tensor] = {}
        self._pinned = False
        self._pin()

    # ------------------------------------------------------------------ properties

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self._batch_size

    @property
    def capacity(self) -> int:
        """Frames per sample."""
        return self._capacity

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return self._frame_shape

    @property
    def pose_dim(self) -> int:
        """``P``."""
        return self._pose_dim

    @property
    def device(self) -> torch.device:
        """Storage device of the frames."""
        return self._device

    @property
    def index_device(self) -> torch.device:
        """Device of the poses, steps, masks and clocks (where retrieval runs)."""
        return self._index

    @property
    def write_policy(self) -> Literal["lru"] | CoveragePolicy:
        """``"lru"`` or the :class:`CoveragePolicy`."""
        return self._policy

    @property
    def nbytes_per_sample(self) -> dict[str, int]:
        """Bytes each sample's storage takes: ``{"frames": ..., "index": ...}`` (frames on
        :attr:`device`, everything else on :attr:`index_device`)."""
        index = [self._poses, self._steps, self._valid, self._last_used, self._next_step]
        if self._coverage is not None:
            index += self._coverage.tensors()
        b = self._batch_size
        return {
            "frames": self._frames.nbytes // b,
            "index": sum(t.nbytes for t in index) // b,
        }

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of frames and poses."""
        return self._dtype

    @property
    def counts(self) -> Tensor:
        """``(B,)`` long: frames stored per sample (never above ``capacity``)."""
        return self._valid.sum(1)

    @property
    def version(self) -> int:
        """Increases on every ``add``, ``reset`` and ``load_state_dict`` (not on retrieval), so a
        retrieval cached under an older version is stale."""
        return self._version

    def __repr__(self) -> str:
        return (
            f"MemoryBuffer(batch_size={self._batch_size}, capacity={self._capacity}, "
            f"frame_shape={self._frame_shape}, pose_dim={self._pose_dim}, "
            f"device={self._device}, dtype={self._dtype}, write_policy={self._policy!r}, "
            f"counts={self.counts.tolist()})"
        )

    # ------------------------------------------------------------------ validation

    def _check_where(self, where: object) -> Tensor:
        """``(B,)`` bool on the storage device; all True when ``where`` is None."""
        if where is None:
            return torch.ones(self._batch_size, dtype=torch.bool, device=self._index)
        mask = check_data("where", check_shape("where", where, [("B", self._batch_size)]))
        if mask.dtype != torch.bool:
            raise ValueError(f"where must have dtype torch.bool, got {mask.dtype}")
        return mask.to(self._index)

    def _check_step_arg(self, name: str, step: object) -> int | Tensor | None:
        """``step`` as None, an int in ``[0, COUNTER_LIMIT)`` or a ``(B,)`` long tensor on the
        index device (values unchecked)."""
        if step is None:
            return None
        if isinstance(step, int) and not isinstance(step, bool):
            if not 0 <= step < _LIMIT:
                raise ValueError(f"{name} must be in [0, 2**62), got {step!r}")
            return step
        if not isinstance(step, Tensor):
            raise ValueError(
                f"{name} must be None, an int or a (B={self._batch_size},) integer tensor, "
                f"got {type(step).__name__}"
            )
        tensor = check_data(name, check_shape(name, step, [("B", self._batch_size)]))
        if not _is_integer(tensor):
            raise ValueError(f"{name} must have an integer dtype, got {tensor.dtype}")
        return tensor.to(device=self._index, dtype=torch.long)

    def _check_write_steps(self, step: int | Tensor | None, rows: Tensor) -> tuple[Tensor, int]:
        """The ``(B,)`` steps of a write and the new bound of ``max(next_step)``.

        A writing sample's step must lie in ``[last written step, COUNTER_LIMIT)``. The exact
        test reads values (a sync); it runs for tensor steps only, or when the Python-side
        bound cannot rule a violation out.
        """
        ceiling = self._step_ceiling
        if step is None:
            if ceiling >= _LIMIT and rows.numel():
                full = self._next_step[rows] >= _LIMIT
                if bool(full.any()):
                    row = int(rows[_first(full)[0]])
                    raise ValueError(
                        f"step: sample {row}'s step counter reached the limit 2**62; give an "
                        "explicit step or reset the sample"
                    )
            steps = self._next_step
            return steps, min(ceiling + 1, _LIMIT)
        if isinstance(step, int):
            if step + 1 < ceiling and rows.numel():
                behind = self._next_step[rows] > step + 1
                if bool(behind.any()):
                    row = int(rows[_first(behind)[0]])
                    raise ValueError(
                        f"step must not go back before a writing sample's last written step: "
                        f"sample {row} wrote step {int(self._next_step[row]) - 1}, got {step}"
                    )
            steps = torch.full((self._batch_size,), step, dtype=torch.long, device=self._index)
            return steps, max(ceiling, step + 1)
        if rows.numel() == 0:
            return step, ceiling
        new = step[rows]
        lowest = (self._next_step[rows] - 1).clamp_min(0)
        bad = (new < lowest) | (new >= _LIMIT)
        failed, highest = torch.stack([bad.any().long(), new.max()]).tolist()
        if failed:
            i = _first(bad)[0]
            row, value = int(rows[i]), int(new[i])
            if 0 <= value < _LIMIT:
                raise ValueError(
                    f"step must not go back before a writing sample's last written step: "
                    f"sample {row} wrote step {int(lowest[i])}, got {value}"
                )
            raise ValueError(
                f"step must be in [0, 2**62) for writing samples, got {value} for sample {row}"
            )
        return step, max(ceiling, highest + 1)

    def _check_clock(self, what: str, uses: int) -> None:
        """Refuse an operation that would move the LRU clock ``uses`` ticks past the limit."""
        if self._clock + uses > _LIMIT:
            raise ValueError(
                f"{what} would move the LRU clock from {self._clock} by {uses}, past its limit "
                "2**62; load a state with a smaller clock or build a new buffer"
            )

    def _check_rows_finite(self, name: str, tensor: Tensor, rows: Tensor) -> None:
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must have a floating-point dtype, got {tensor.dtype}")
        if not all_finite(tensor[rows.to(tensor.device)]):
            raise ValueError(
                f"{name} must be finite in the rows that write, got non-finite values (NaN or inf)"
            )

    def _check_upcoming(
        self, upcoming: object, upcoming_mask: object, rows: Tensor
    ) -> tuple[Tensor, Tensor | None] | None:
        """``(upcoming, mask)`` on the index device, checked; None without ``upcoming``."""
        if upcoming is None:
            if upcoming_mask is not None:
                raise ValueError("upcoming_mask needs upcoming, got upcoming=None")
            return None
        if self._coverage is None:
            raise ValueError(
                f"upcoming needs the coverage write policy, got write_policy={self._policy!r}"
            )
        route = check_shape(
            "upcoming", upcoming, [("B", self._batch_size), ("L", None), ("P", self._pose_dim)]
        )
        if route.shape[1] == 0:
            raise ValueError("upcoming must hold at least one pose per sample, got L=0")
        if not route.is_floating_point():
            raise ValueError(f"upcoming must have a floating-point dtype, got {route.dtype}")
        check_data("upcoming", route)
        mask = None
        if upcoming_mask is not None:
            mask = check_shape(
                "upcoming_mask", upcoming_mask, [("B", self._batch_size), ("L", route.shape[1])]
            )
            check_data("upcoming_mask", mask)
            if mask.dtype != torch.bool:
                raise ValueError(f"upcoming_mask must have dtype torch.bool, got {mask.dtype}")
            mask = mask.to(self._index)
        route = route.to(self._index)
        counted = route[rows] if mask is None else route[rows][mask[rows]]
        if not all_finite(counted):
            raise ValueError(
                "upcoming must be finite where it counts in the rows that write, got non-finite "
                "values (NaN or inf)"
            )
        return route, mask

    # ------------------------------------------------------------------ writing

    def add(
        self,
        frames: Tensor,
        poses: Tensor,
        step: int | Tensor | None = None,
        where: Tensor | None = None,
        *,
        upcoming: Tensor | None = None,
        upcoming_mask: Tensor | None = None,
    ) -> None:
        """Store one clean frame per writing sample (a detached copy), in the slot the
        :attr:`write_policy` picks.

        With ``upcoming`` (the ``coverage`` policy only), the write knows the poses the next
        retrievals will query, as a rollout along a given route does. No frame is merged into
        a stored view; a full sample drops whichever frame, stored or new, the route needs
        last. A frame is needed by an upcoming pose when it is the only one of them showing
        that view (:func:`~hybrid_cdit.memory.view_distance` at most 1); frames never needed
        go first, the most redundant of them. It costs ``O(capacity * L)`` per writing sample.

        Args:
            frames: ``(B, C, H, W)`` clean latents (never noised ones).
            poses: ``(B, P)`` their absolute poses.
            step: the frames' step (timestamp): None uses each sample's counter (one after the
                last step it wrote, 0 at first), an int applies to all samples, a ``(B,)``
                integer tensor gives one per sample. A writing sample's step must lie in
                ``[its last written step, 2**62)``: steps never go back.
            where: optional ``(B,)`` bool, True for the samples that write; None means all.
                Rows of samples that do not write are ignored (they need not be finite).
            upcoming: optional ``(B, L, P)`` absolute poses of the next ``L`` retrievals'
                queries, nearest first (the rest of the route, or a horizon of it).
            upcoming_mask: optional ``(B, L)`` bool, the entries of ``upcoming`` that count
                (routes of different lengths); None means all. Entries that do not count need
                not be finite.

        Raises:
            ValueError: a bad argument, a step that goes back or reaches ``2**62``, or an LRU
                clock at :attr:`COUNTER_LIMIT`; nothing is changed then.
        """
        b, (c, h, w) = self._batch_size, self._frame_shape
        check_data(
            "frames", check_shape("frames", frames, [("B", b), ("C", c), ("H", h), ("W", w)])
        )
        check_data("poses", check_shape("poses", poses, [("B", b), ("P", self._pose_dim)]))
        step_arg = self._check_step_arg("step", step)
        writers = self._check_where(where)
        rows = writers.nonzero().squeeze(1)
        self._check_rows_finite("frames", frames, rows)
        self._check_rows_finite("poses", poses, rows)
        route = self._check_upcoming(upcoming, upcoming_mask, rows)
        all_steps, ceiling = self._check_write_steps(step_arg, rows)
        self._check_clock("add", 1)

        self._step_ceiling = ceiling
        self._clock += 1
        if self._coverage is not None:
            self._add_coverage(frames, poses, all_steps, writers, rows, route)
            self._version += 1
            return
        # lru: the lowest empty slot, else the least recently used one
        slot_ids = torch.arange(self._capacity, device=self._index)
        key = torch.where(self._valid, self._last_used, slot_ids - self._capacity - 1)
        slots = key.argmin(1)[rows]
        new_steps = all_steps[rows]
        frame_rows, frame_slots = rows.to(self._device), slots.to(self._device)
        self._frames[frame_rows, frame_slots] = frames.detach()[rows.to(frames.device)].to(
            device=self._device, dtype=self._dtype
        )
        self._poses[rows, slots] = poses.detach()[rows.to(poses.device)].to(
            device=self._index, dtype=self._dtype
        )
        self._steps[rows, slots] = new_steps
        self._valid[rows, slots] = True
        self._last_used[rows, slots] = self._clock
        self._next_step[rows] = new_steps + 1
        self._version += 1

    def _add_coverage(
        self,
        frames: Tensor,
        poses: Tensor,
        all_steps: Tensor,
        writers: Tensor,
        rows: Tensor,
        upcoming: tuple[Tensor, Tensor | None] | None = None,
    ) -> None:
        """The coverage policy's write, decided for every sample at once (rows that do not
        write are zeroed, then ignored) and stored with flat ``index_copy_`` writes;
        ``upcoming``: the checked ``(B, L, P)`` poses and ``(B, L)`` mask of :meth:`add`."""
        coverage = self._coverage
        assert coverage is not None
        b, n = self._batch_size, self._capacity
        everyone = rows.numel() == b
        new = poses.detach().to(device=self._index, dtype=self._dtype)
        if not everyone:
            new = new.masked_fill(~writers[:, None], 0.0)
        query = coverage.query_features(new)
        if everyone:
            self._next_step = all_steps + 1
        else:
            self._next_step = torch.where(writers, all_steps + 1, self._next_step)
        if upcoming is None:
            match, slots, to_new = coverage.choose(self._valid, self._last_used, query)
            flat_all = self._row_offsets + slots  # (B,) every sample's chosen slot, flat
            # Writers refresh the chosen slot: the new frame's, or the kept frame's (it counts
            # as used); samples that do not write touch nothing.
            self._last_used.view(-1).index_fill_(
                0, flat_all if everyone else flat_all.index_select(0, rows), self._clock
            )
            store = ~match if everyone else writers & ~match
            if self._policy_replaces:
                store = writers
        else:
            route, route_mask = upcoming
            features = coverage.query_features(
                route.detach().to(self._dtype).masked_fill(~writers[:, None, None], 0.0)
            )
            store, slots, to_new = coverage.choose_upcoming(
                self._valid, self._last_used, query, features, route_mask
            )
            store &= writers
            flat_all = self._row_offsets + slots
        stored = store.nonzero().squeeze(1)
        if stored.numel() == 0:
            return
        all_store = stored.numel() == b
        flat = flat_all if all_store else flat_all.index_select(0, stored)
        source = frames.detach()
        if not all_store:
            source = source.index_select(0, stored.to(frames.device))
        self._frames.view(b * n, *self._frame_shape).index_copy_(
            0, flat.to(self._device), source.to(device=self._device, dtype=self._dtype)
        )
        self._poses.view(b * n, self._pose_dim).index_copy_(
            0, flat, new if all_store else new.index_select(0, stored)
        )
        self._steps.view(-1).index_copy_(
            0, flat, all_steps if all_store else all_steps.index_select(0, stored)
        )
        self._valid.view(-1).index_fill_(0, flat, True)
        if upcoming is not None:
            self._last_used.view(-1).index_fill_(0, flat, self._clock)
        coverage.store(flat, query if all_store else query.index_select(1, stored))
        coverage.update(self._valid, None if all_store else stored, slots, flat, to_new)

    def reset(self, where: Tensor | None = None) -> None:
        """Empty the memory of the samples selected by ``where`` ``(B,)`` bool (all if None)."""
        rows = self._check_where(where).nonzero().squeeze(1)
        self._frames[rows.to(self._device)] = 0
        self._poses[rows] = 0
        self._steps[rows] = 0
        self._valid[rows] = False
        self._last_used[rows] = 0
        self._next_step[rows] = 0
        if self._coverage is not None:
            self._coverage.reset(rows)
        if where is None:
            self._step_ceiling = 0
        self._version += 1

    # ------------------------------------------------------------------ reading

    def retrieve(
        self,
        query_pose: Tensor,
        k: int = 8,
        *,
        strategy: Strategy | str = "distance",
        threshold: float = 0.7,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        query_step: int | Tensor | None = None,
        scale: float = 10.0,
        fov: FovParams | None = None,
    ) -> MemoryContext:
        """Retrieve ``k`` frames per sample for ``query_pose``.

        Selection is :func:`~hybrid_cdit.memory.select_memory` over the stored poses (ties go
        to the more recent step, then the lower slot). The retrieved, unmasked frames become the
        most recently used ones; the content and :attr:`version` do not change.

        Args:
            query_pose: ``(B, P)`` pose of the frame being predicted.
            k: slots per sample, ``>= 1``; may exceed what is stored (extra slots are masked).
            strategy: ``"distance"``, ``"fov"`` or ``"pose"``.
            threshold: slots scored under it are masked.
            device: where the returned context lives (an available device); None keeps the
                storage device.
            generator: point sampler of ``"fov"``.
            query_step: ``(B,)`` integer step of the query, or an int in ``[0, 2**62)`` for
                every sample, for ``"fov"``'s recency penalty and the context's
                ``query_step``; defaults to each sample's step counter (the step the next
                written frame gets).
            scale: distance scale of ``"distance"`` and ``"pose"``.
            fov: :class:`~hybrid_cdit.memory.FovParams` of ``"fov"``.

        Returns:
            ``MemoryContext``: ``frames (B, k, C, H, W)``, ``poses (B, k, P)``, ``scores``,
            ``mask`` and ``steps`` ``(B, k)``, ``query_pose (B, P)`` and ``query_step (B,)``.
            A masked slot holds zeros or one of the sample's own frames scored under the
            threshold: honour the mask.

        Raises:
            ValueError: a bad argument, or an LRU clock that ``k`` uses would move past
                :attr:`COUNTER_LIMIT`; nothing is changed then.
        """
        query = check_shape(
            "query_pose", query_pose, [("B", self._batch_size), ("P", self._pose_dim)]
        )
        check_data("query_pose", query)
        k = check_positive_int("k", k)
        check_strategy(strategy)
        check_fov_params("fov", fov)
        check_generator(generator)
        target = self._device if device is None else check_device("device", device)
        step_arg = self._check_step_arg("query_step", query_step)
        if step_arg is None:
            query_steps = self._next_step.clone()
        elif isinstance(step_arg, int):
            query_steps = torch.full_like(self._next_step, step_arg)
        else:
            query_steps = step_arg
        self._check_clock(f"k={k}", k)
        selection = select_memory(
            self._poses,
            query.to(device=self._index),
            k,
            valid=self._valid,
            steps=self._steps,
            strategy=strategy,
            threshold=threshold,
            query_step=query_steps,
            scale=scale,
            fov=fov,
            generator=generator,
        )
        indices, mask = selection.indices, selection.mask
        rows = torch.arange(self._batch_size, device=self._index)[:, None]
        context = build_context(
            self._gather_frames(indices.to(self._device), target),
            self._poses[rows, indices],
            selection,
            query,
            steps=self._steps[rows, indices],
            query_step=query_steps,
            assume_finite=True,
        )
        # Refresh the LRU clock of the unmasked picks, best rank most recent.
        k = int(indices.shape[1])
        ranks = torch.arange(k, 0, -1, device=self._index).expand_as(indices)
        hit_rows, hit_cols = mask.nonzero(as_tuple=True)
        self._last_used[hit_rows, indices[hit_rows, hit_cols]] = (
            self._clock + ranks[hit_rows, hit_cols]
        )
        self._clock += k
        return context

    def _gather_frames(self, indices: Tensor, target: torch.device) -> Tensor:
        """``(B, k, C, H, W)`` frames at ``indices`` ``(B, k)``, on ``target``, one index op."""
        b, k = indices.shape
        flat = self._frames.view(b * self._capacity, *self._frame_shape)
        offsets = torch.arange(b, device=self._device)[:, None] * self._capacity
        flat_idx = (indices + offsets).reshape(-1)
        if self._pinned and target.type == "cuda":
            # Gather into a reused pinned buffer: the host-to-device copy then needs no
            # pageable bounce; the copy is synchronous, so reusing the buffer is safe.
            staging = self._staging.get(k)
            if staging is None:
                staging = torch.empty(b * k, *self._frame_shape, dtype=self._dtype, pin_memory=True)
                self._staging[k] = staging
            torch.index_select(flat, 0, flat_idx, out=staging)
            out = staging.to(target)
        else:
            out = flat.index_select(0, flat_idx).to(target)
        return out.view(b, k, *self._frame_shape)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Tensor]:
        """Detached copies of the content: ``frames``, ``poses``, ``steps``, ``valid``,
        ``last_used``, ``next_step`` and the LRU ``clock`` (0-d), enough to resume a rollout
        with identical retrievals and evictions."""
        return {
            "frames": self._frames.detach().clone(),
            "poses": self._poses.detach().clone(),
            "steps": self._steps.clone(),
            "valid": self._valid.clone(),
            "last_used": self._last_used.clone(),
            "next_step": self._next_step.clone(),
            "clock": torch.tensor(self._clock, dtype=torch.long),
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore content saved by :meth:`state_dict` into this buffer's storage.

        The buffer's shape (batch size, capacity, frame shape, pose size) must match, and the
        state must satisfy the invariants of the class docstring: no buffer reaches a state
        that breaks one, and one that does would lose frames (a stored frame evicted while
        slots are empty) or overflow its counters. Frames and poses are checked finite after
        the cast to :attr:`dtype`. The version increases (it is not restored), so caches
        keyed on it see the change.

        Raises:
            ValueError: missing or unexpected keys, wrong shapes, dtypes or devices, or a
                broken invariant, naming the field and the first offending slot; nothing is
                changed then.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping of tensors, got {type(state).__name__}")
        missing = sorted(set(_STATE_KEYS) - set(state))
        unexpected = sorted(set(state) - set(_STATE_KEYS))
        if missing or unexpected:
            raise ValueError(
                f"state must have exactly the keys {list(_STATE_KEYS)}, got missing {missing} "
                f"and unexpected {unexpected}"
            )
        b, n, (c, h, w) = self._batch_size, self._capacity, self._frame_shape
        slot_dims = [("B", b), ("capacity", n)]
        dims = {
            "frames": [*slot_dims, ("C", c), ("H", h), ("W", w)],
            "poses": [*slot_dims, ("P", self._pose_dim)],
            "steps": slot_dims,
            "valid": slot_dims,
            "last_used": slot_dims,
            "next_step": [("B", b)],
            "clock": [],
        }
        tensors = {
            key: check_data(f"state['{key}']", check_shape(f"state['{key}']", state[key], shape))
            for key, shape in dims.items()
        }
        for key in ("frames", "poses"):
            if not tensors[key].is_floating_point():
                raise ValueError(f"state['{key}'] must be floating-point, got {tensors[key].dtype}")
        for key in ("steps", "last_used", "next_step", "clock"):
            if not _is_integer(tensors[key]):
                raise ValueError(
                    f"state['{key}'] must have an integer dtype, got {tensors[key].dtype}"
                )
        if tensors["valid"].dtype != torch.bool:
            raise ValueError(
                f"state['valid'] must have dtype torch.bool, got {tensors['valid'].dtype}"
            )
        frames = tensors["frames"].detach().to(device=self._device, dtype=self._dtype)
        poses = tensors["poses"].detach().to(device=self._index, dtype=self._dtype)
        valid = tensors["valid"].to(self._index)
        steps, last_used, next_step = (
            tensors[key].to(device=self._index, dtype=torch.long)
            for key in ("steps", "last_used", "next_step")
        )
        clock = int(tensors["clock"].to(torch.long))
        _check_state(frames, poses, steps, valid, last_used, next_step, clock)

        self._frames.copy_(frames)
        self._poses.copy_(poses)
        self._steps.copy_(steps)
        self._valid.copy_(valid)
        self._last_used.copy_(last_used)
        self._next_step.copy_(next_step)
        self._clock = clock
        self._step_ceiling = int(next_step.max())
        if self._coverage is not None:
            self._coverage.rebuild(self._poses, self._valid)
        self._version += 1

    def to(
        self, device: torch.device | str, *, index_device: torch.device | str | None = None
    ) -> MemoryBuffer:
        """Move the frames to ``device`` (pinned when it is the CPU and CUDA is available) and
        the poses and bookkeeping to ``index_device`` (``device`` when None); returns ``self``.
        Content and :attr:`version` are unchanged."""
        target = check_device("device", device)
        index = target if index_device is None else check_device("index_device", index_device)
        # Every check above runs before the first move, so a bad device moves nothing.
        self._frames = self._frames.to(target)
        self._poses = self._poses.to(index)
        self._steps = self._steps.to(index)
        self._valid = self._valid.to(index)
        self._last_used = self._last_used.to(index)
        self._next_step = self._next_step.to(index)
        self._row_offsets = self._row_offsets.to(index)
        if self._coverage is not None:
            self._coverage.to(index)
        self._device = target
        self._index = index
        self._staging.clear()
        self._pinned = False
        self._pin()
        return self

    def _pin(self) -> None:
        """Pin the host storage when CUDA is available (faster, asynchronous-capable copies)."""
        if self._device.type != "cpu" or not torch.cuda.is_available():
            return
        self._frames = self._frames.pin_memory()
        if self._index.type == "cpu":
            self._poses = self._poses.pin_memory()
        self._pinned = True


def _check_state(
    frames: Tensor,
    poses: Tensor,
    steps: Tensor,
    valid: Tensor,
    last_used: Tensor,
    next_step: Tensor,
    clock: int,
) -> None:
    """Raise ``ValueError`` naming the field and the first offending slot when the state of a
    :class:`MemoryBuffer` breaks one of its invariants (see the class docstring).

    ``frames (B, M, C, H, W)`` and ``poses (B, M, P)`` in the buffer's dtype (``frames`` on
    the storage device, the rest on the index device), ``steps``, ``last_used (B, M)`` and
    ``next_step (B,)`` long, ``valid (B, M)`` bool. Every test is one reduction over whole
    tensors.
    """

    def refuse(key: str, bad: Tensor, rule: str, values: Tensor) -> None:
        if bool(bad.any()):
            where = _first(bad)
            raise ValueError(f"state['{key}'] must {rule}, got {int(values[where])} at {where}")

    if not 0 <= clock <= _LIMIT:
        raise ValueError(f"state['clock'] must lie in [0, 2**62], got {clock}")
    refuse("next_step", (next_step < 0) | (next_step > _LIMIT), "lie in [0, 2**62]", next_step)
    empty = ~valid
    refuse(
        "steps",
        valid & ((steps < 0) | (steps >= next_step[:, None])),
        "lie in [0, next_step) at stored frames",
        steps,
    )
    refuse("steps", empty & (steps != 0), "be 0 at empty slots", steps)
    refuse(
        "last_used",
        valid & ((last_used < 1) | (last_used > clock)),
        f"lie in [1, clock={clock}] at stored frames",
        last_used,
    )
    refuse("last_used", empty & (last_used != 0), "be 0 at empty slots", last_used)
    for key, tensor in (("poses", poses), ("frames", frames)):
        values = tensor.flatten(2)
        stored = valid.to(tensor.device)
        if not all_finite(values):
            bad = ~torch.isfinite(values).all(2) & stored
            if bool(bad.any()):
                raise ValueError(
                    f"state['{key}'] must be finite at stored frames (in the buffer's dtype), "
                    f"got non-finite values at {_first(bad)}"
                )
        nonzero = (values != 0).any(2) & ~stored
        if bool(nonzero.any()):
            raise ValueError(
                f"state['{key}'] must be 0 at empty slots, got non-zero values at {_first(nonzero)}"
            )
