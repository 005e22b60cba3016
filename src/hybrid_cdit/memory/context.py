"""``MemoryContext``: the memory frames a model attends to for one batch, one row per sample."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._validation import check_finite, check_shape


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

    Validation runs on construction and raises ``ValueError`` naming the field.
    """

    frames: Tensor
    poses: Tensor
    scores: Tensor
    mask: Tensor
    query_pose: Tensor
    _cache: weakref.WeakKeyDictionary[Any, Any] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    def __post_init__(self) -> None:
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
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MemoryContext:
        """A copy on ``device`` with floating tensors in ``dtype`` (mask stays bool)."""
        return MemoryContext(
            frames=self.frames.to(device=device, dtype=dtype),
            poses=self.poses.to(device=device, dtype=dtype),
            scores=self.scores.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            query_pose=self.query_pose.to(device=device, dtype=dtype),
        )

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
