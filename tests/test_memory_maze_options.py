"""The Memory Maze benchmark builds the hybrid with the memory age and ray options it is given."""

from __future__ import annotations

import math

import torch
from benchmarks.maze import pipeline as bench
from benchmarks.maze import protocol as mmem
from benchmarks.maze import training
from benchmarks.maze import worlds as mt


def test_flags_reach_the_model_and_its_memory_carries_ages() -> None:
    argv = [
        "--hidden", "32", "--depth", "2", "--heads", "2", "--patch-size", "2", "--size", "8",
        "--memory-pose-encoding", "frame", "--memory-time-embedding", "--camera-fov", "70",
        "--no-memory-ray-alignment",
    ]  # fmt: skip
    args = bench.parse_args(argv)
    _, hybrid = training.build_models(args)
    assert hybrid.memory_time_embedding and hybrid.memory_pose_encoding == "frame"
    assert not hybrid.memory_ray_alignment
    assert math.isclose(hybrid.camera_fov, math.radians(70))
    _, default = training.build_models(bench.parse_args(argv[:10]))
    assert not default.memory_time_embedding and default.memory_pose_encoding == "rays"
    assert default.memory_ray_alignment
    assert math.isclose(default.camera_fov, math.radians(80))
    # The benchmark's memory contexts carry steps and the query step, so ages reach the model.
    episodes = [mt.synthetic_episode(9, seed, 120) for seed in range(2)]
    frames, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    settings = mmem.MemorySettings(context=2, capacity=12, top_k=3, threshold=0.5, scale=4.0)
    schedule = mmem.replay_memory(poses, settings)
    episode, target = torch.tensor([0, 1]), torch.tensor([20, 25])
    context = mmem.memory_for(frames, poses, schedule, episode, target)
    assert context.ages is not None
    assert bool((context.ages[context.mask] > settings.context).all())
