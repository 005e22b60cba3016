"""Frames, memory and model inputs of the Memory Maze benchmark (plain torch, no MuJoCo).

Memory protocol, the same in training, one-step evaluation and rollouts: before the model
predicts frame ``t`` of an episode, frame ``t - context - 1`` (the frame that has just left the
context window) is written to the sample's :class:`~hybrid_cdit.MemoryBuffer`, then the buffer is
queried with the pose of frame ``t``. So memory only ever holds frames from before the context
window: never the target, never anything after it. The buffer's least-recently-used eviction and
its retrieval refreshes play out exactly as in a rollout.

For training, :func:`replay_memory` runs that protocol over whole episodes with a buffer whose
"frames" are frame indices (one number each), which yields the same selections as a buffer of
images (selection depends on poses, steps and the LRU clock only) at a fraction of the memory;
:func:`memory_for` gathers the images afterwards.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.maze.worlds import Episode, last_seen_gap, revisit_labels
from hybrid_cdit import MemoryContext
from hybrid_cdit.memory import MemoryBuffer, relative_pose, wrap_angle

__all__ = [
    "Batch",
    "Data",
    "MemorySchedule",
    "MemorySettings",
    "ModelInputs",
    "batch_for",
    "episode_tensors",
    "informativeness",
    "memory_for",
    "model_inputs",
    "new_buffer",
    "pairwise_mse",
    "replay_memory",
    "retrieval_hits",
    "settings_from",
    "slots_near",
    "step_memory",
    "subset_memory",
]


@dataclass(frozen=True)
class MemorySettings:
    """How the hybrid's buffer is used.

    Attributes:
        context: context frames of the model.
        capacity: buffer capacity (frames per episode).
        top_k: frames retrieved per target.
        strategy: the library's retrieval strategy (``"pose"``, ``"distance"`` or ``"fov"``).
        threshold: retrieval score under which a slot is masked.
        scale: distance scale of the ``"pose"`` / ``"distance"`` scores, in cells.
        write_policy: the buffer's write policy (``"lru"`` or ``"coverage"``).
        route: with ``"coverage"`` in rollouts, how many upcoming poses of the rollout the
            buffer is told at each write (``MemoryBuffer.add(upcoming=...)``); 0: none.
        guidance: memory guidance scale of the hybrid's samples (one-step and rollouts;
            :func:`hybrid_cdit.memory_guided_forward`); 1: the plain forward.
    """

    context: int = 2
    capacity: int = 50
    top_k: int = 4
    strategy: str = "pose"
    threshold: float = 0.7
    scale: float = 10.0
    write_policy: str = "lru"
    route: int = 0
    guidance: float = 1.0


@dataclass(frozen=True)
class MemorySchedule:
    """What the buffer returns for every frame of every episode.

    Attributes:
        indices: ``(N, T, k)`` long, episode frame index of each retrieved slot.
        scores: ``(N, T, k)`` retrieval scores.
        mask: ``(N, T, k)`` bool, True for usable slots.
    """

    indices: Tensor
    scores: Tensor
    mask: Tensor


def episode_tensors(episodes: Sequence[Episode], stride: int, size: int) -> tuple[Tensor, Tensor]:
    """Every ``stride``-th frame of each episode, resized to ``size x size``.

    Returns:
        ``frames (N, T, 3, size, size)`` float in ``[0, 1]`` (area-averaged), and ``poses
        (N, T, 3)`` float32 ``(x, y, yaw)``; ``T`` is the shortest episode's frame count.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    length = min(len(e) for e in episodes)
    frames, poses = [], []
    for e in episodes:
        images = torch.from_numpy(np.ascontiguousarray(e.images[:length:stride]))
        images = images.permute(0, 3, 1, 2).float() / 255.0
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="area")
        frames.append(images)
        poses.append(torch.from_numpy(np.ascontiguousarray(e.poses[:length:stride])))
    return torch.stack(frames), torch.stack(poses).float()


def new_buffer(
    batch: int, frame_shape: tuple[int, int, int], settings: MemorySettings
) -> MemoryBuffer:
    """An empty :class:`MemoryBuffer` of ``batch`` samples for the protocol."""
    return MemoryBuffer(
        batch,
        settings.capacity,
        frame_shape=frame_shape,
        pose_dim=3,
        write_policy=settings.write_policy,  # type: ignore[arg-type]
    )


def step_memory(
    buffer: MemoryBuffer,
    t: int,
    written: Tensor | None,
    written_poses: Tensor | None,
    query: Tensor,
    settings: MemorySettings,
    upcoming: tuple[Tensor, Tensor] | None = None,
    where: Tensor | None = None,
) -> MemoryContext:
    """One step of the memory protocol for frame ``t``: write ``written (B, C, H, W)`` (frame
    ``t - context - 1``, None when ``t <= context``) at ``written_poses (B, 3)``, then retrieve
    for ``query (B, 3)``. ``upcoming``: ``(B, L, 3)`` poses the next retrievals will query and
    their ``(B, L)`` mask, passed to the write. ``where``: ``(B,)`` bool, the samples that write
    (None: all)."""
    if written is not None:
        if written_poses is None:
            raise ValueError("written_poses must be given with written, got None")
        route, counted = (None, None) if upcoming is None else upcoming
        buffer.add(
            written,
            written_poses,
            step=t - settings.context - 1,
            where=where,
            upcoming=route,
            upcoming_mask=counted,
        )
    return buffer.retrieve(
        query,
        settings.top_k,
        strategy=settings.strategy,
        threshold=settings.threshold,
        scale=settings.scale,
        query_step=torch.full((query.shape[0],), t, dtype=torch.long),
    )


def replay_memory(poses: Tensor, settings: MemorySettings) -> MemorySchedule:
    """Run the memory protocol over whole episodes ``poses (N, T, 3)`` (vectorised over
    episodes, one step per frame)."""
    n, t_len, _ = poses.shape
    buffer = new_buffer(n, (1, 1, 1), settings)
    index_frames = torch.arange(t_len, dtype=torch.float32)[None, :, None, None, None]
    index_frames = index_frames.expand(n, t_len, 1, 1, 1)
    indices, scores, masks = [], [], []
    for t in range(t_len):
        src = t - settings.context - 1
        written = index_frames[:, src] if src >= 0 else None
        ctx = step_memory(
            buffer, t, written, poses[:, src] if src >= 0 else None, poses[:, t], settings
        )
        indices.append(ctx.frames.reshape(n, -1).round().long())
        scores.append(ctx.scores)
        masks.append(ctx.mask)
    return MemorySchedule(
        indices=torch.stack(indices, 1), scores=torch.stack(scores, 1), mask=torch.stack(masks, 1)
    )


def memory_for(
    frames: Tensor,
    poses: Tensor,
    schedule: MemorySchedule,
    episode: Tensor,
    target: Tensor,
    withheld: Tensor | None = None,
) -> MemoryContext:
    """The :class:`MemoryContext` of samples ``(episode[i], target[i])``.

    Args:
        frames: ``(N, T, C, H, W)`` the frames the model sees (already scaled).
        poses: ``(N, T, 3)``.
        schedule: from :func:`replay_memory` on ``poses``.
        episode, target: ``(B,)`` long.
        withheld: optional ``(B,)`` bool: those samples get an all-masked memory (the hybrid
            then adds exactly nothing from memory).
    """
    idx = schedule.indices[episode, target]  # (B, k)
    mask = schedule.mask[episode, target]
    if withheld is not None:
        mask = mask & ~withheld[:, None]
    safe = torch.where(mask, idx, torch.zeros_like(idx))
    return MemoryContext(
        frames=frames[episode[:, None], safe],
        poses=poses[episode[:, None], safe],
        scores=schedule.scores[episode, target],
        mask=mask,
        query_pose=poses[episode, target],
        steps=safe,
        query_step=target,
    )


@dataclass(frozen=True)
class ModelInputs:
    """One target frame per sample: ``x0 (B, C, H, W)``, ``x_cond (B, context, C, H, W)``, ``y
    (B, 3)`` the pose of the target relative to the last context frame (cells, radians),
    ``rel_t (B,)`` ones."""

    x0: Tensor
    x_cond: Tensor
    y: Tensor
    rel_t: Tensor


def model_inputs(
    frames: Tensor, poses: Tensor, episode: Tensor, target: Tensor, context: int
) -> ModelInputs:
    """Inputs of samples ``(episode[i], target[i])`` from ``frames (N, T, C, H, W)``."""
    offsets = torch.arange(-context, 0)
    x_cond = frames[episode[:, None], target[:, None] + offsets]
    y = relative_pose(poses[episode, target], poses[episode, target - 1])
    return ModelInputs(
        x0=frames[episode, target], x_cond=x_cond, y=y, rel_t=torch.ones(episode.shape[0])
    )


def pairwise_mse(frames: Tensor) -> Tensor:
    """``(N, T, T)`` pixel MSE between every two frames of each episode ``(N, T, C, H, W)``."""
    flat = frames.flatten(2).double()
    sq = flat.square().sum(-1)
    dist = sq[:, :, None] + sq[:, None, :] - 2 * flat @ flat.transpose(1, 2)
    return (dist.clamp(min=0) / flat.shape[-1]).float()


def informativeness(
    pair_mse: Tensor, schedule: MemorySchedule, episode: Tensor, target: Tensor, context: int
) -> dict[str, Tensor]:
    """How much the retrieved memory could tell about each target, in pixel MSE.

    Args:
        pair_mse: ``(N, T, T)`` from :func:`pairwise_mse`.

    Returns ``(B,)`` tensors: ``retrieved`` the best (lowest-MSE) unmasked retrieved frame
    (``inf`` with none), ``top`` the highest-scored retrieved frame (slot 0; ``inf`` when
    masked), ``last_context`` frame ``t - 1``, ``history`` the best frame anywhere before the
    context window (``inf`` with none) and ``history_index`` its step, and ``active`` whether
    any slot is usable.
    """
    per_frame = pair_mse[episode, target]  # (B, T)
    idx = schedule.indices[episode, target]
    mask = schedule.mask[episode, target]
    slot_mse = torch.where(mask, per_frame.gather(1, idx), torch.inf)
    steps = torch.arange(pair_mse.shape[1])[None]
    before = torch.where(steps < (target - context)[:, None], per_frame, torch.inf)
    history, history_index = before.min(1)
    last = per_frame.gather(1, (target - 1)[:, None]).squeeze(1)
    return {
        "retrieved": slot_mse.amin(1),
        "top": slot_mse[:, 0],
        "last_context": last,
        "history": history,
        "history_index": history_index,
        "active": mask.any(1),
    }


def retrieval_hits(
    poses: Tensor,
    schedule: MemorySchedule,
    episode: Tensor,
    target: Tensor,
    *,
    distance: float = 1.0,
    angle: float = math.pi / 4,
) -> Tensor:
    """``(B,)`` bool: some usable retrieved slot lies within ``distance`` cells and ``angle``
    radians of the target's pose (the revisit criterion)."""
    idx = schedule.indices[episode, target]
    mem = poses[episode[:, None], idx]
    mask = schedule.mask[episode, target]
    return slots_near(mem, poses[episode, target], mask, distance=distance, angle=angle)


def slots_near(
    slot_poses: Tensor,
    query: Tensor,
    mask: Tensor,
    *,
    distance: float = 1.0,
    angle: float = math.pi / 4,
) -> Tensor:
    """``(B,)`` bool: some usable slot of ``slot_poses (B, k, 3)`` (``mask (B, k)``) lies within
    ``distance`` cells and ``angle`` radians of ``query (B, 3)`` (the revisit criterion)."""
    near = (slot_poses[..., :2] - query[:, None, :2]).norm(dim=-1) <= distance
    turn = wrap_angle(slot_poses[..., 2] - query[:, None, 2])
    hits: Tensor = (near & (turn.abs() <= angle) & mask).any(1)
    return hits


class Data:
    """Frames (model scale), poses, labels and memory schedule of a set of episodes.

    Labels ``(N, T)`` bool: ``revisit``, ``novel`` and ``middle`` (partly seen: neither), all
    False before frame ``context``; ``gap`` ``(N, T)`` long, frames since the view was last
    seen (:func:`~benchmarks.maze.worlds.last_seen_gap`, -1 when never).

    ``poses`` are the true poses (labels, actions ``y``); ``memory_poses`` ``(N, T, 3)`` are
    the poses the memory sees (the buffer's writes and queries, so ``schedule``; the memory's
    slot and query poses; the retrieved-context poses): the true ones, or corrupted ones in a
    copy from :meth:`with_memory_poses`.
    """

    def __init__(
        self, episodes: Sequence[Episode], stride: int, size: int, settings: MemorySettings
    ) -> None:
        frames, self.poses = episode_tensors(episodes, stride, size)
        self.frames = frames * 2 - 1
        labels = [revisit_labels(p.numpy(), settings.context) for p in self.poses]
        self.revisit = torch.stack([torch.from_numpy(r) for r, _ in labels])
        self.novel = torch.stack([torch.from_numpy(n) for _, n in labels])
        self.revisit[:, : settings.context] = False
        self.novel[:, : settings.context] = False
        self.middle = ~self.revisit & ~self.novel
        self.middle[:, : settings.context] = False
        self.gap = torch.stack(
            [torch.from_numpy(last_seen_gap(p.numpy(), settings.context)) for p in self.poses]
        )
        self.memory_poses = self.poses
        self.schedule: MemorySchedule = replay_memory(self.poses, settings)
        self._pair_mse: Tensor | None = None

    def with_memory_poses(
        self,
        memory_poses: Tensor,
        settings: MemorySettings,
        schedule: MemorySchedule | None = None,
    ) -> Data:
        """A copy whose memory sees ``memory_poses (N, T, 3)`` (the schedule replayed on them,
        or ``schedule`` where the retrieval of each frame saw poses of its own); frames, true
        poses and labels shared with this one."""
        if memory_poses.shape != self.poses.shape:
            raise ValueError(
                f"memory_poses must have shape {tuple(self.poses.shape)}, got "
                f"{tuple(memory_poses.shape)}"
            )
        out = copy.copy(self)
        out.memory_poses = memory_poses
        out.schedule = replay_memory(memory_poses, settings) if schedule is None else schedule
        return out

    @property
    def pair_mse(self) -> Tensor:
        """``(N, T, T)`` pixel MSE between frames of each episode (model scale), computed once."""
        if self._pair_mse is None:
            self._pair_mse = pairwise_mse(self.frames)
        return self._pair_mse

    @property
    def length(self) -> int:
        return int(self.frames.shape[1])


def settings_from(args: argparse.Namespace) -> MemorySettings:
    """The memory settings of the benchmark's flags."""
    return MemorySettings(
        context=args.context,
        capacity=args.capacity,
        top_k=args.top_k,
        strategy=args.retrieval,
        threshold=args.threshold,
        scale=args.scale,
        write_policy=args.write_policy,
        guidance=args.memory_guidance,
    )


def subset_memory(memory: MemoryContext, rows: Tensor) -> MemoryContext:
    """Rows ``rows`` of a :class:`MemoryContext`: every tensor field (all are per sample,
    ``(B, ...)``, including fields of later versions such as a per-slot ``pose_std``)."""
    picked = {
        f.name: value[rows]
        for f in dataclasses.fields(memory)
        if isinstance(value := getattr(memory, f.name), Tensor)
    }
    return dataclasses.replace(memory, **picked)


@dataclass(frozen=True)
class Batch:
    """Everything any learned model or copy baseline sees for samples ``(episode[i],
    target[i])``; built once per batch so every model gets the same samples.

    Attributes:
        x0: ``(B, C, H, W)`` target frames.
        y, rel_t: the action and relative time (see :class:`ModelInputs`).
        x_cond: ``(B, context, C, H, W)`` the recent context frames.
        memory: the hybrid's :class:`~hybrid_cdit.MemoryContext` (withheld rows masked).
        long_cond: ``(B, context + k, C, H, W)`` the ``context + k`` most recent frames (frame 0
            repeated before the episode's start).
        retrieved_cond: ``(B, k + context, C, H, W)`` the ``k`` retrieved frames (slot ``k - 1``
            first, the top slot next to the recent frames; an unusable slot holds the oldest
            recent frame) followed by ``x_cond``.
        retrieved_pose: ``(B, k, 4)`` each retrieved-context frame's pose relative to the
            target, ``(dx, dy, cos dyaw, sin dyaw)``, in the order of ``retrieved_cond``.
    """

    x0: Tensor
    y: Tensor
    rel_t: Tensor
    x_cond: Tensor
    memory: MemoryContext
    long_cond: Tensor
    retrieved_cond: Tensor
    retrieved_pose: Tensor

    def rows(self, rows: Tensor) -> Batch:
        """The samples ``rows``."""
        memory = subset_memory(self.memory, rows)
        fields = {
            f.name: getattr(self, f.name)[rows]
            for f in dataclasses.fields(self)
            if f.name != "memory"
        }
        return Batch(memory=memory, **fields)


def batch_for(
    frames: Tensor,
    poses: Tensor,
    schedule: MemorySchedule,
    episode: Tensor,
    target: Tensor,
    context: int,
    withheld: Tensor | None = None,
    memory_poses: Tensor | None = None,
) -> Batch:
    """The :class:`Batch` of samples ``(episode[i], target[i])`` (see :func:`memory_for` for
    ``withheld``; the retrieved-context frames of withheld rows are unusable slots too).

    ``poses (N, T, 3)`` give the actions; ``memory_poses`` (default ``poses``), those the
    memory sees and ``schedule`` was replayed on, give the memory's slot and query poses and
    the retrieved-context poses."""
    inputs = model_inputs(frames, poses, episode, target, context)
    if memory_poses is None:
        memory_poses = poses
    memory = memory_for(frames, memory_poses, schedule, episode, target, withheld)
    k = memory.mask.shape[1]
    offsets = torch.arange(-(context + k), 0)
    long_cond = frames[episode[:, None], (target[:, None] + offsets).clamp(min=0)]
    oldest = target - context
    usable = memory.mask.flip(1)
    slot_frames = torch.where(
        usable[..., None, None, None], memory.frames.flip(1), inputs.x_cond[:, :1]
    )
    slot_poses = torch.where(
        usable[..., None], memory.poses.flip(1), memory_poses[episode, oldest][:, None]
    )
    rel = relative_pose(slot_poses, memory.query_pose[:, None])
    retrieved_pose = torch.stack(
        [rel[..., 0], rel[..., 1], rel[..., 2].cos(), rel[..., 2].sin()], dim=-1
    )
    return Batch(
        x0=inputs.x0,
        y=inputs.y,
        rel_t=inputs.rel_t,
        x_cond=inputs.x_cond,
        memory=memory,
        long_cond=long_cond,
        retrieved_cond=torch.cat([slot_frames, inputs.x_cond], dim=1),
        retrieved_pose=retrieved_pose,
    )
