"""The Memory Maze benchmark: HybridCDiT against CDiT and matched baselines, one module a stage.

Run from the repository root::

    python -m benchmarks.maze --quick          # Memory Maze (pip install -e ".[bench]")
    python -m benchmarks.maze --help           # every flag

Stages: :mod:`~benchmarks.maze.worlds` (episodes: the :class:`~benchmarks.maze.worlds.Episode`
type, Memory Maze's environment, the explorer, a synthetic world, the cache),
:mod:`~benchmarks.maze.protocol` (labels, the memory protocol, model inputs),
:mod:`~benchmarks.maze.training`, :mod:`~benchmarks.maze.evaluation`,
:mod:`~benchmarks.maze.report`, :mod:`~benchmarks.maze.pipeline` (flags and :func:`run`),
:mod:`~benchmarks.maze.noise` (pose jitter and drift), :mod:`~benchmarks.maze.robustness`
(``python -m benchmarks.maze.robustness``: saved models under corrupted memory poses) and
:mod:`~benchmarks.maze.content_retrieval` (``python -m benchmarks.maze.content_retrieval``:
pose candidates re-ranked by content, retrieval only).

Python entry point: ``run(args, train_episodes, eval_episodes)`` runs the whole protocol
(train, evaluate, print the tables, return the summary) on episodes from any world: each
:class:`~benchmarks.maze.worlds.Episode` holds ``images (T, H, W, 3)`` uint8 and ``poses (T, 3)``
``(x, y, yaw)`` (yaw in radians; the revisit labels' distances, 1 and 2, are in the poses' unit);
``args`` comes from :func:`parse_args`. Episodes given are used as they are; None loads Memory
Maze episodes. On your own recorded trajectories::

    import numpy as np
    from benchmarks.maze import Episode, parse_args, run

    def episode(seed: int) -> Episode:  # a recorded trajectory: images and poses
        rng = np.random.default_rng(seed)
        yaw = np.cumsum(rng.uniform(-0.3, 0.3, 160))
        xy = np.cumsum(0.2 * np.stack([np.cos(yaw), np.sin(yaw)], 1), 0) % 4
        images = rng.integers(0, 256, (160, 8, 8, 3), dtype=np.uint8)
        return Episode(images=images, poses=np.c_[xy, yaw].astype(np.float32))

    args = parse_args(["--steps", "2", "--pretrain-steps", "1", "--batch", "4",
                       "--hidden", "32", "--depth", "2", "--heads", "2", "--patch-size", "2",
                       "--size", "8", "--ddim-steps", "2", "--threads", "1", "--stride", "2",
                       "--max-revisit-targets", "4", "--rollout-length", "4",
                       "--rollout-min-start", "10", "--rollouts-per-episode", "1",
                       "--no-long-rollouts"])
    summary = run(args, [episode(0), episode(1)], [episode(2)])
    print(summary["revisit_psnr_hybrid"], summary["novel_psnr_cdit"])
"""

from benchmarks.maze.pipeline import SUMMARY_KEYS, main, parse_args, run
from benchmarks.maze.worlds import Episode

__all__ = ["SUMMARY_KEYS", "Episode", "main", "parse_args", "run"]
