"""Closing loops in drifting odometry with a learned pose refiner, as a sampler could at each
frame.

Under the drift noise model the memory's poses are dead reckoning: the error of a slot's pose
relative to the query grows with the steps between them. Every retrieval pairs a frame with
earlier frames of (by the poses) the same place, and a :class:`~hybrid_cdit.memory.SlotPoseRefiner`
measures each pair's relative pose from the two frames: a loop closure.
:func:`~hybrid_cdit.memory.pose_graph` then finds the trajectory that explains the odometry
and the loops together.

:func:`loop_closed` gives what a user knows at each frame: ``(N, T, T, 3)``, row ``t`` the
trajectory solved from every odometry step and the loops measured at frames ``0 .. t-1``
(frame ``t``'s own pose follows from the last one by odometry). The refiner corrects a prior
and keeps part of its error, so the loops are measured in ``passes``: pass 0 from the
dead-reckoned poses, each later pass with the priors of the previous pass's solution, the loop
of reference frame ``s`` from row ``s`` (so every pass stays causal: a user keeps one graph per
pass). Loops whose measured pose is no longer the same place (farther than ``max_distance``
cells or turned more than ``max_turn`` degrees) are dropped as false matches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmarks.maze.noise import PoseNoise, _noisy_steps, corrupt
from benchmarks.maze.protocol import MemorySettings, replay_memory
from hybrid_cdit.memory import SlotPoseRefiner, measure_loops, pose_graph, relative_pose

__all__ = ["loop_closed"]


def loop_closed(
    poses: Tensor,
    frames: Tensor,
    noise: PoseNoise,
    generator: torch.Generator,
    refiner: SlotPoseRefiner,
    settings: MemorySettings,
    *,
    passes: int,
    loop_std: PoseNoise,
    max_distance: float = 0.7,
    max_turn: float = 25.0,
    chunk: int = 25,
) -> Tensor:
    """The trajectory as known at each frame: ``(N, T, T, 3)`` in ``poses``' dtype (see the
    module's docstring).

    Args:
        poses: ``(N, T, 3)`` true poses; the odometry is their steps with ``noise``'s
            drift-model noise drawn from ``generator`` as :func:`~benchmarks.maze.noise.corrupt`
            draws it (so ``passes=0`` gives every row the unfused drift row's poses).
        frames: ``(N, T, C, H, W)`` the frames the refiner reads.
        noise: a drift noise model; the graph weighs each step by its nominal standard
            deviation (``F`` times the step's length, ``DEG``).
        refiner: a trained refiner, in eval mode.
        settings: the memory protocol whose retrieval (on the dead-reckoned poses) pairs the
            frames.
        passes: rounds of measuring the loops, >= 0.
        loop_std: the standard deviation of a measured loop, position per axis (cells) and
            heading (degrees), as a jitter model.
        max_distance: loops measured farther apart than this (cells) are dropped.
        max_turn: loops measured turned by more than this (degrees) are dropped.
        chunk: rows solved at a time.
    """
    if noise.kind != "drift" or loop_std.kind != "jitter":
        raise ValueError(
            f"loop_closed needs a drift noise and a jitter loop_std, got {noise.kind!r} and "
            f"{loop_std.kind!r}"
        )
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    exact = poses.double()
    n, t_len, _ = poses.shape
    twin = torch.Generator().set_state(generator.get_state())
    steps, length = _noisy_steps(exact, noise, twin)
    drifted = corrupt(poses, noise, generator)
    schedule = replay_memory(drifted, settings)
    k = schedule.indices.shape[-1]
    reference = torch.arange(t_len)[None, :, None].expand(n, t_len, k).reshape(n, -1)
    slot = schedule.indices.reshape(n, -1)
    retrieved = schedule.mask.reshape(n, -1)
    rows = torch.arange(n)[:, None]
    known = drifted.double()[:, None].expand(n, t_len, t_len, 3)  # pass 0: dead reckoning
    for _ in range(passes):
        prior = relative_pose(known[rows, reference, slot], known[rows, reference, reference])
        measured, same_place = measure_loops(
            refiner, frames[rows, reference].flatten(0, 1), frames[rows, slot].flatten(0, 1),
            prior.flatten(0, 1), max_distance=max_distance, max_turn=math.radians(max_turn),
        )  # fmt: skip
        measured = measured.view(n, -1, 3)
        usable = retrieved & same_place.view(n, -1)
        solved = torch.empty(n, t_len, t_len, 3, dtype=torch.float64)
        for lo in range(0, t_len, chunk):
            times = torch.arange(lo, min(lo + chunk, t_len))
            c = times.shape[0]
            seen = reference[:, None, :] <= times[None, :, None] - 1  # (N, c, E)
            solved[:, times] = pose_graph(
                exact[:, None, 0].expand(n, c, 3),
                steps[:, None].expand(n, c, t_len - 1, 3),
                reference[:, None].expand(n, c, -1),
                slot[:, None].expand(n, c, -1),
                measured[:, None].expand(n, c, -1, 3),
                step_position_std=(noise.position * length)[:, None].expand(n, c, t_len - 1),
                step_heading_std=noise.radians,
                loop_position_std=loop_std.position,
                loop_heading_std=loop_std.radians,
                loop_mask=usable[:, None] & seen,
            )
        known = solved
    return known.to(poses.dtype)
