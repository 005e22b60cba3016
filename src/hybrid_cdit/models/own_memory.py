"""``OwnMemory``: a HybridCDiT's own rollout memory, the state behind ``update_memory`` and
retrieval by ``current_pose``: its :class:`MemoryBuffer`, the pose whose frame an
``update_memory=True`` forward writes next, and the last retrieval, reused while nothing it was
made from changes."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..memory import CoveragePolicy, MemoryBuffer, MemoryContext, WritePolicy
from .memory_reader import geometry_dtype


class _Retrieval(NamedTuple):
    """The last retrieval from the buffer, and everything it was made from."""

    buffer: MemoryBuffer
    key: tuple[Any, ...]
    pose: Tensor
    context: MemoryContext


class OwnMemory:
    """The model's own memory between forwards of a rollout (not part of its state dict).

    Attributes:
        buffer: the :class:`MemoryBuffer`, created by the first :meth:`write`, or None.
        pending_pose: ``(N, P)`` the previous ``update_memory=True`` call's pose, whose frame
            the next call with another pose writes; None before the first.
    """

    def __init__(self) -> None:
        self.buffer: MemoryBuffer | None = None
        self.pending_pose: Tensor | None = None
        self._retrieved: _Retrieval | None = None

    def reset(self) -> None:
        """Forget the buffer, the pending write and the last retrieval."""
        self.buffer = None
        self.pending_pose = None
        self._retrieved = None

    def write(
        self,
        frames: Tensor,
        poses: Tensor,
        *,
        capacity: int,
        write_policy: WritePolicy | CoveragePolicy,
        step: int | Tensor | None = None,
        where: Tensor | None = None,
        upcoming: Tensor | None = None,
        upcoming_mask: Tensor | None = None,
    ) -> None:
        """Add clean ``frames (B, C, H, W)`` at ``poses (B, P)`` (checked by the caller) to the
        buffer, created on first use with ``capacity`` and ``write_policy`` (frames on the CPU,
        poses on ``frames``' device); the other arguments as :meth:`MemoryBuffer.add`."""
        batch = frames.shape[0]
        buffer = self.buffer
        if buffer is None:
            buffer = MemoryBuffer(
                batch,
                capacity,
                frame_shape=tuple(frames.shape[1:]),
                pose_dim=int(poses.shape[-1]),
                write_policy=write_policy,
                index_device=frames.device,
            )
        elif buffer.batch_size != batch:
            raise ValueError(
                f"frame_latent must have batch size {buffer.batch_size} (the memory buffer's; "
                f"call reset_memory() to start a new rollout), got {batch}"
            )
        buffer.add(
            frames.detach().to(buffer.device),
            poses.detach().to(buffer.index_device),
            step=step,
            where=where,
            upcoming=upcoming,
            upcoming_mask=upcoming_mask,
        )
        self.buffer = buffer

    def check_pose(self, pose: Tensor, *, writes: bool, reads: bool) -> None:
        """Raise ``ValueError``, before any state changes, when ``pose`` cannot be used with
        the pending ``update_memory=True`` write (``writes``) or the buffer (``reads``)."""
        shape = tuple(pose.shape)
        pending = self.pending_pose
        if writes and pending is not None and tuple(pending.shape) != shape:
            raise ValueError(
                f"current_pose must have shape {tuple(pending.shape)} (the previous call's, whose "
                "frame update_memory=True writes next; call reset_memory() to start a new "
                f"rollout), got {shape}"
            )
        buffer = self.buffer
        if (writes or reads) and buffer is not None:
            expected = (buffer.batch_size, buffer.pose_dim)
            if shape != expected:
                raise ValueError(
                    f"current_pose must have shape {expected} (the memory buffer's batch size and "
                    f"pose dimension; call reset_memory() to start a new rollout), got {shape}"
                )

    def due_write(self, pose: Tensor) -> tuple[Tensor, Tensor] | None:
        """For an ``update_memory=True`` call at ``pose (N, P)`` (geometry dtype, shape checked
        by :meth:`check_pose`): the pending pose and the ``(N,)`` bool samples whose pose
        changed, when some did, else None. Changes nothing."""
        pending = self.pending_pose
        if pending is None:
            return None
        changed = (pending != pose.to(pending)).any(dim=-1)
        return (pending, changed.to(pending.device)) if bool(changed.any()) else None

    def retrieve(
        self,
        current_pose: Tensor,
        device: torch.device,
        *,
        top_k: int,
        strategy: str,
        threshold: float,
        scale: float,
    ) -> MemoryContext | None:
        """The buffer's :meth:`MemoryBuffer.retrieve` for ``current_pose (N, P)``, on
        ``device``; the previous context when nothing it was made from changed (a denoising
        loop then reuses its cached tokens and keys/values). None without a buffer."""
        buffer = self.buffer
        if buffer is None:
            return None
        if current_pose.shape[-1] != buffer.pose_dim:
            raise ValueError(
                f"current_pose must have pose dimension {buffer.pose_dim} (the memory buffer's), "
                f"got {current_pose.shape[-1]}"
            )
        pose = current_pose.detach().to(buffer.index_device, geometry_dtype(buffer.dtype))
        key = (buffer.version, top_k, strategy, threshold, scale, torch.device(device))
        hit = self._retrieved
        if (
            hit is not None
            and hit.buffer is buffer
            and hit.key == key
            and hit.pose.dtype == pose.dtype
            and torch.equal(hit.pose, pose)
        ):
            return hit.context
        context = buffer.retrieve(
            pose, top_k, strategy=strategy, threshold=threshold, device=device, scale=scale
        )
        self._retrieved = _Retrieval(buffer, key, pose.clone(), context)
        return context
