"""``MemoryContext``: the memory frames a model attends to for one batch, one row per sample."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .._validation import all_finite, check_finite, check_positive_int, check_shape

__all__ = ["MemoryContext", "all_finite"]


def _check_time(name: str, value: object, dims: list[tuple[str, int | None]]) -> None:
    tensor = check_shape(name, value, dims)
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer or floating dtype, got {tensor.dtype}")
    check_finite(name, tensor)


def _check_ray_std(ray_std: object, b: int, k: int) -> None:
    tensor = check_shape("ray_std", ray_std, [("B", b), ("k", k)])
    if not tensor.is_floating_point():
        raise ValueError(f"ray_std must have a floating dtype, got {tensor.dtype}")
    if bool(torch.isnan(tensor).any()) or bool((tensor < 0).any()):
        raise ValueError(
            "ray_std must be >= 0 (inf for an unknown pose), got NaN or negative values"
        )


@dataclass(eq=False)
class MemoryContext:
    """Retrieved memory for a batch of ``B`` samples, ``k`` slots each.

    Build one with :meth:`MemoryBuffer.retrieve`, or directly from a trajectory's history (for
    instance in a training ``collate_fn``). Everything is per sample: row ``i`` is sample ``i``'s
    memory and never influences another sample.

    Attributes:
        frames: ``(B, k, C, H, W)`` clean latents of the remembered frames.
        poses: ``(B, k, P)`` their absolute poses, ``P`` 3 ``(x, y, yaw)`` or 5
            ``(x, y, z, pitch, yaw)``.
        scores: ``(B, k)`` retrieval scores in ``[0, 1]`` (higher is more relevant).
        mask: ``(B, k)`` bool, True for slots that may be attended. False marks empty slots and
            slots scored under the similarity threshold: they never influence the output.
        query_pose: ``(B, P)`` the pose of the frame being predicted.
        steps: optional ``(B, k)`` time steps at which the memory frames were taken (integer or
            floating, finite; any value in masked slots).
        query_step: optional ``(B,)`` time step of the frame being predicted. With both given,
            a model may use each frame's age ``query_step[:, None] - steps``; with either
            missing, memory carries no time.
        ray_std: optional ``(B, k)`` standard deviation, in radians, of the error of the
            view-ray directions implied by each slot's pose relative to the query pose (see
            :func:`~hybrid_cdit.memory.ray_angle_std` to get it from position and heading
            uncertainty). A model with ray-aligned memory attention softens the alignment of an
            uncertain slot: its ray distances are scaled by ``s**2 / (s**2 + ray_std**2)``, ``s``
            the angle between neighbouring memory tokens. ``inf`` marks a slot whose pose is
            unknown: it is never attended, as if masked. None means exact poses (0). On
            Memory Maze, finite values lost more of an exact-pose-trained model's memory gain
            than they saved (``docs/memory.md``); ``inf`` for unknown poses is the tested use.

    Validation runs on construction and raises ``ValueError`` naming the field; every tensor
    must be finite, masked slots included (an attention weight of zero times NaN is NaN), and
    every score must lie in ``[0, 1]``.
    """

    frames: Tensor
    poses: Tensor
    scores: Tensor
    mask: Tensor
    query_pose: Tensor
    steps: Tensor | None = None
    query_step: Tensor | None = None
    ray_std: Tensor | None = None

    def __post_init__(self) -> None:
        # The cache is no dataclass field, so code that rebuilds dataclasses field by field
        # (FSDP2's input casting calls dataclasses.replace) gets a valid context back.
        self._cache: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        check_shape(
            "frames", self.frames, [("B", None), ("k", None), ("C", None), ("H", None), ("W", None)]
        )
        b, k = self.frames.shape[:2]
        if k < 1:
            raise ValueError(f"frames must hold at least one slot (k >= 1), got k={k}")
        check_shape("poses", self.poses, [("B", b), ("k", k), ("P", None)])
        pose_dim = self.poses.shape[-1]
        if pose_dim not in (3, 5):
            raise ValueError(
                f"poses must have pose dimension 3 (x, y, yaw) or 5 (x, y, z, pitch, yaw), "
                f"got {pose_dim}"
            )
        check_shape("scores", self.scores, [("B", b), ("k", k)])
        check_shape("mask", self.mask, [("B", b), ("k", k)])
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must have dtype torch.bool, got {self.mask.dtype}")
        check_shape("query_pose", self.query_pose, [("B", b), ("P", pose_dim)])
        check_finite("query_pose", self.query_pose)
        if self.steps is not None:
            _check_time("steps", self.steps, [("B", b), ("k", k)])
        if self.query_step is not None:
            _check_time("query_step", self.query_step, [("B", b)])
        if self.ray_std is not None:
            _check_ray_std(self.ray_std, b, k)
        # Masked slots must be finite too: attention weights of zero times NaN are still NaN.
        for name in ("frames", "poses", "scores"):
            if not all_finite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got non-finite values (NaN or inf)")
        scores = self.scores
        if scores.numel() and not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError(
                f"scores must lie in [0, 1], got values in [{float(scores.min()):g}, "
                f"{float(scores.max()):g}]"
            )

    @classmethod
    def empty(
        cls,
        batch_size: int,
        k: int,
        frame_shape: tuple[int, int, int],
        pose_dim: int = 3,
        query_pose: Tensor | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> MemoryContext:
        """A context with every slot masked: zero frames ``(B, k, C, H, W)``, zero poses
        ``(B, k, P)``, zero scores and an all-False mask.

        Args:
            batch_size: ``B``.
            k: slots per sample.
            frame_shape: ``(C, H, W)``.
            pose_dim: ``P``, 3 or 5.
            query_pose: ``(B, P)``; zeros when None.
            device: where the tensors live (``query_pose``'s device when given, else CPU).
            dtype: floating dtype of frames, poses, scores and query pose.
        """
        check_positive_int("batch_size", batch_size)
        check_positive_int("k", k)
        if (
            not isinstance(frame_shape, tuple | list)
            or len(frame_shape) != 3
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in frame_shape
            )
        ):
            raise ValueError(
                f"frame_shape must be a tuple of three positive ints (C, H, W), got {frame_shape!r}"
            )
        if query_pose is not None and device is None:
            device = query_pose.device
        if query_pose is None:
            query_pose = torch.zeros(batch_size, pose_dim, device=device, dtype=dtype)
        return cls(
            frames=torch.zeros(batch_size, k, *frame_shape, device=device, dtype=dtype),
            poses=torch.zeros(batch_size, k, pose_dim, device=device, dtype=dtype),
            scores=torch.zeros(batch_size, k, device=device, dtype=dtype),
            mask=torch.zeros(batch_size, k, dtype=torch.bool, device=device),
            query_pose=query_pose.to(device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.frames.shape[0])

    @property
    def num_slots(self) -> int:
        """``k``."""
        return int(self.frames.shape[1])

    @property
    def pose_dim(self) -> int:
        """``P``."""
        return int(self.poses.shape[-1])

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        geometry_dtype: torch.dtype | None = None,
    ) -> MemoryContext:
        """A copy on ``device`` with ``frames`` in ``dtype`` and ``poses``, ``scores`` and
        ``query_pose`` in ``geometry_dtype`` (mask stays bool, steps keep theirs).

        ``geometry_dtype`` None means ``dtype``, as ``Tensor.to``. A model moving memory to its
        compute dtype passes a float32 (or float64) ``geometry_dtype``: in half precision,
        positions of hundreds of units are quantised to whole units.
        """
        geometry = dtype if geometry_dtype is None else geometry_dtype
        return MemoryContext(
            frames=self.frames.to(device=device, dtype=dtype),
            poses=self.poses.to(device=device, dtype=geometry),
            scores=self.scores.to(device=device, dtype=geometry),
            mask=self.mask.to(device=device),
            query_pose=self.query_pose.to(device=device, dtype=geometry),
            steps=None if self.steps is None else self.steps.to(device=device),
            query_step=None if self.query_step is None else self.query_step.to(device=device),
            ray_std=None
            if self.ray_std is None
            else self.ray_std.to(device=device, dtype=geometry),
        )

    def is_placed(
        self, device: torch.device, dtype: torch.dtype, geometry_dtype: torch.dtype
    ) -> bool:
        """Whether :meth:`to` with these arguments would change nothing: every tensor on
        ``device``, ``frames`` in ``dtype``, poses, scores and query pose in ``geometry_dtype``."""
        geometry: tuple[Tensor, ...] = (self.poses, self.scores, self.query_pose)
        if self.ray_std is not None:
            geometry = (*geometry, self.ray_std)
        tensors = (self.frames, self.mask, *geometry)
        return (
            all(t.device == device for t in tensors)
            and self.frames.dtype == dtype
            and all(t.dtype == geometry_dtype for t in geometry)
        )

    def with_known_poses(self) -> MemoryContext:
        """This context with every slot whose ``ray_std`` is ``inf`` (pose unknown) masked and
        its ``ray_std`` set to 0; ``self`` when no slot is unknown."""
        if self.ray_std is None:
            return self
        unknown = torch.isinf(self.ray_std)
        if not bool(unknown.any()):
            return self
        return replace(
            self,
            mask=self.mask & ~unknown,
            ray_std=torch.where(unknown, torch.zeros_like(self.ray_std), self.ray_std),
        )

    @property
    def ages(self) -> Tensor | None:
        """``(B, k)`` ages ``query_step[:, None] - steps`` of the memory frames (float32), or
        None unless both ``steps`` and ``query_step`` are given."""
        if self.steps is None or self.query_step is None:
            return None
        return self.query_step.to(self.steps.device)[:, None].float() - self.steps.float()

    def cached(self, owner: Any, key: Any) -> Any:
        """The value cached for ``owner`` (a module, held weakly) under ``key``, or None."""
        entry = self._cache.get(owner)
        if entry is None or entry[0] != key:
            return None
        return entry[1]

    def store(self, owner: Any, key: Any, value: Any) -> None:
        """Cache ``value`` for ``owner`` under ``key``; a later ``key`` replaces it."""
        self._cache[owner] = (key, value)

    def clear_cache(self) -> None:
        """Drop every cached value (for instance after editing the tensors in place)."""
        self._cache.clear()
