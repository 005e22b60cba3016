"""Recall of memory retrieval over long journeys, for each ``MemoryBuffer`` write policy.

Each episode is replayed through a buffer the way a rollout fills it: every frame is written,
when it leaves the context window (the last ``--context`` frames, which the model sees anyway),
and before each target frame the buffer is asked for the ``k`` frames it would retrieve for the
target's pose. A target is a *revisit* when some frame before its context window was taken
within 1 cell and 45 degrees of it (never the identical pose; ``revisit_labels`` of
``benchmarks/maze/worlds.py``). **Recall** is the fraction of revisit targets whose retrieved top
``k`` (unmasked slots) contains such a frame; **held** is the fraction for which the buffer
holds one at all (what eviction left; recall can only be lower).

Three buffers replay the same episodes side by side, all episodes of a run batched as the
buffer's samples: ``lru`` and the chosen policy at ``--capacity``, and an unlimited buffer (one
slot per frame, the upper bound). Recall needs poses only, so the buffers store a one-number
frame. Two references know the whole episode. ``held_hindsight``: one fixed set of
``--capacity`` frames, a greedy maximum cover of the episode's revisit targets (each frame
counts only for targets after its context window). ``held_clairvoyant``: a buffer filled like
the others that, when full, drops the frame whose next revisit target no other frame holds
lies furthest ahead (Belady's rule). Its contents change along the journey, so it holds more
than the fixed set; the gap between it and an online policy is what not knowing the future
costs, not what the capacity allows.

    python benchmarks/memory_recall.py --maze-size 9            # Memory Maze 9x9, capacity 50
    python benchmarks/memory_recall.py --maze-size 15 --steps 2000 --episodes 4
    python benchmarks/memory_recall.py --world synthetic --episodes 4 --steps 400   # no MuJoCo

Memory Maze episodes come from ``benchmarks.maze.worlds.load_episodes`` (cached on disk; generating
them needs ``pip install -e ".[bench]"`` and ``MUJOCO_GL=egl``). ``--world synthetic`` replays
the same corridor explorer in a MuJoCo-free point world (``synthetic_episode``). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hybrid_cdit.memory import STRATEGIES, CoveragePolicy, MemoryBuffer, wrap_angle

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.maze import worlds as trajectories

POLICIES = ("coverage", "coverage-replace")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=["maze", "synthetic"], default="maze")
    parser.add_argument("--maze-size", type=int, choices=trajectories.MAZE_SIZES, default=9)
    parser.add_argument(
        "--seed",
        type=int,
        default=trajectories.VALIDATION_DATASET,
        help="dataset seed (maze seeds); default the validation mazes",
    )
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1000, help="frames per episode")
    parser.add_argument("--capacity", type=int, default=50)
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default="coverage",
        help="the policy compared with lru: coverage (same_view='keep') or coverage-replace",
    )
    parser.add_argument(
        "--route",
        type=int,
        default=0,
        help="tell the policy's buffer the next N target poses (a rollout along a known "
        "route, MemoryBuffer.add(upcoming=...)); 0: no route",
    )
    parser.add_argument("--radius", type=float, default=1.0, help="coverage radius, cells")
    parser.add_argument(
        "--max-angle", type=float, default=45.0, help="coverage angle tolerance, degrees"
    )
    parser.add_argument("--context", type=int, default=4, help="context frames of the model")
    parser.add_argument("--k", type=int, default=8, help="frames retrieved per target")
    parser.add_argument("--strategy", choices=STRATEGIES, default="pose")
    parser.add_argument("--scale", type=float, default=10.0, help="retrieval distance scale")
    parser.add_argument("--threshold", type=float, default=0.7, help="retrieval threshold")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2, help="processes generating episodes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def load_poses(args: argparse.Namespace) -> list[np.ndarray]:
    """``(T, 3)`` poses of each episode."""
    if args.world == "synthetic":
        seeds = trajectories.episode_seeds(args.seed, args.episodes)
        return [trajectories.synthetic_episode(args.maze_size, s, args.steps).poses for s in seeds]
    episodes = trajectories.load_episodes(
        args.maze_size,
        args.seed,
        args.episodes,
        args.steps,
        cache_dir=args.cache_dir,
        workers=args.workers,
    )
    return [episode.poses for episode in episodes]


def same_place(a: Tensor, b: Tensor) -> Tensor:
    """Within 1 cell and 45 degrees, not the identical pose (the revisit rule), elementwise
    over ``(..., 3)`` poses."""
    dist = torch.linalg.vector_norm(a[..., :2] - b[..., :2], dim=-1)
    angle = wrap_angle(a[..., 2] - b[..., 2])
    identical = (dist == 0) & (angle == 0)
    return (dist <= 1.0) & (angle.abs() <= math.pi / 4) & ~identical


@dataclass
class Tally:
    """Counts over revisit targets."""

    recalled: int = 0
    held: int = 0

    def add(self, retrieved: Tensor, held: Tensor, revisit: Tensor) -> None:
        self.recalled += int((retrieved & revisit).sum())
        self.held += int((held & revisit).sum())


def replay(poses: Tensor, revisit: Tensor, buffers: dict[str, MemoryBuffer], args) -> dict:
    """Replay ``poses (B, T, 3)`` through each buffer; ``revisit (B, T)`` bool labels."""
    b, t, _ = poses.shape
    tallies = {name: Tally() for name in buffers}
    frame = torch.zeros(b, 1, 1, 1)
    for target in range(1, t):
        leaving = target - args.context - 1  # the frame that leaves the context window
        if leaving >= 0:
            for name, buffer in buffers.items():
                route = None
                if name == "policy" and args.route > 0:  # the poses the rollout asks for next
                    route = poses[:, target : target + args.route]
                buffer.add(frame, poses[:, leaving], step=leaving, upcoming=route)
        if not bool(revisit[:, target].any()):
            continue
        query = poses[:, target]
        for name, buffer in buffers.items():
            ctx = buffer.retrieve(
                query, args.k, strategy=args.strategy, threshold=args.threshold, scale=args.scale
            )
            hits = (same_place(ctx.poses, query[:, None]) & ctx.mask).any(1)
            state = buffer.state_dict()
            held = (same_place(state["poses"], query[:, None]) & state["valid"]).any(1)
            tallies[name].add(hits, held, revisit[:, target])
    return tallies


def hindsight_held(poses: np.ndarray, revisit: np.ndarray, capacity: int, context: int) -> int:
    """Revisit targets of one episode that ``capacity`` frames chosen greedily with hindsight
    hold (a frame holds a target when it is ``same_place`` and before its context window)."""
    p = torch.tensor(poses, dtype=torch.float64)
    t = p.shape[0]
    close = same_place(p[:, None], p[None, :]).numpy()  # (target, frame)
    order = np.arange(t)
    cover = (close & (order[None, :] < order[:, None] - context))[revisit]
    covered = np.zeros(cover.shape[0], dtype=bool)
    for _ in range(capacity):  # greedy maximum coverage
        gain = (cover & ~covered[:, None]).sum(0)
        best = int(gain.argmax())
        if gain[best] == 0:
            break
        covered |= cover[:, best]
    return int(covered.sum())


def clairvoyant_held(poses: np.ndarray, revisit: np.ndarray, capacity: int, context: int) -> int:
    """Revisit targets of one episode held by a ``capacity``-frame buffer that knows the
    future: it is filled like the others (every frame written when it leaves the context
    window, no frame taken back once dropped), and when full it drops the candidate (a stored
    frame or the new one) whose next revisit target held by no other candidate lies furthest
    ahead (Belady's rule over coverage). A reference for how much of the gap to the unlimited
    buffer is capacity and how much is not knowing where the journey goes next."""
    p = torch.tensor(poses, dtype=torch.float64)
    close = same_place(p[:, None], p[None, :]).numpy()  # (frame, target)
    targets = np.flatnonzero(revisit)
    stored: list[int] = []
    held = 0
    for target in range(1, p.shape[0]):  # a reference, not a write path
        leaving = target - context - 1
        if leaving >= 0 and len(stored) < capacity:
            stored.append(leaving)
        elif leaving >= 0:
            candidates = [*stored, leaving]
            ahead = close[np.ix_(candidates, targets[targets >= target])]
            alone = ahead & (ahead.sum(0) == 1)
            never = np.ones((capacity + 1, 1), dtype=bool)  # a column after every target
            drop = int(np.concatenate([alone, never], 1).argmax(1).argmax())  # latest next use
            if drop < capacity:
                stored[drop] = leaving
        if revisit[target] and stored and bool(close[stored, target].any()):
            held += 1
    return held


def labelled_episodes(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """``(N, T, 3)`` float64 poses of ``args``' episodes (cut to the shortest) and their
    ``(N, T)`` revisit labels; frames inside the first context window are no targets."""
    episode_poses = load_poses(args)
    steps = min(len(p) for p in episode_poses)
    poses = np.stack([p[:steps] for p in episode_poses]).astype(np.float64)
    labels = np.stack([trajectories.revisit_labels(p, args.context)[0] for p in poses])
    labels[:, : args.context + 1] = False
    return poses, labels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    episode_poses, labels = labelled_episodes(args)
    poses = torch.tensor(episode_poses, dtype=torch.float32)
    revisit = torch.from_numpy(labels)
    b, steps = poses.shape[:2]
    policy = CoveragePolicy(
        args.radius,
        math.radians(args.max_angle),
        same_view="replace" if args.policy == "coverage-replace" else "keep",
    )
    buffers = {
        "lru": MemoryBuffer(b, args.capacity, frame_shape=(1, 1, 1), pose_dim=3),
        "policy": MemoryBuffer(
            b, args.capacity, frame_shape=(1, 1, 1), pose_dim=3, write_policy=policy
        ),
        "unlimited": MemoryBuffer(b, steps, frame_shape=(1, 1, 1), pose_dim=3),
    }
    tallies = replay(poses, revisit, buffers, args)
    targets = int(revisit.sum())
    world = "Memory Maze" if args.world == "maze" else "synthetic"
    print(
        f"{world} {args.maze_size}x{args.maze_size}: {b} episodes x {steps} frames, "
        f"{targets} revisit targets; context {args.context}, k={args.k}, {args.strategy} "
        f"retrieval (scale {args.scale}, threshold {args.threshold}), capacity {args.capacity}"
    )
    print(f"{'buffer':<26}{'recall':>8}{'held':>8}")
    names = {
        "lru": f"lru ({args.capacity})",
        "policy": f"{args.policy}{' + route' if args.route else ''} ({args.capacity})",
        "unlimited": f"unlimited ({steps})",
    }
    result: dict[str, object] = {}
    for key, tally in tallies.items():
        recall = tally.recalled / max(targets, 1)
        held = tally.held / max(targets, 1)
        print(f"{names[key]:<26}{recall:>8.3f}{held:>8.3f}")
        result[f"recall_{key}"] = round(recall, 4)
        result[f"held_{key}"] = round(held, 4)
    hindsight = sum(
        hindsight_held(p, r, args.capacity, args.context)
        for p, r in zip(poses.numpy(), revisit.numpy(), strict=True)
    )
    result["held_hindsight"] = round(hindsight / max(targets, 1), 4)
    print(f"{'hindsight (' + str(args.capacity) + ')':<26}{'':>8}{result['held_hindsight']:>8.3f}")
    clairvoyant = sum(
        clairvoyant_held(p, r, args.capacity, args.context)
        for p, r in zip(poses.numpy(), revisit.numpy(), strict=True)
    )
    result["held_clairvoyant"] = round(clairvoyant / max(targets, 1), 4)
    label = f"clairvoyant ({args.capacity})"
    print(f"{label:<26}{'':>8}{result['held_clairvoyant']:>8.3f}")
    result.update(
        capacity=args.capacity,
        episodes=b,
        steps=steps,
        revisit_targets=targets,
        maze_size=args.maze_size,
        world=args.world,
        policy=args.policy,
        route=args.route,
        seconds=round(time.perf_counter() - start, 1),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
