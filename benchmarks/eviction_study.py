"""Which eviction rule keeps the frames a long journey comes back to? A study of online rules.

``memory_recall.py`` measures the library's write policies. This script asks whether another
online rule would do better, on the same episodes and the same replay: every frame is written
when it leaves the context window, and a revisit target is *held* when the kept frames include
one within 1 cell and 45 degrees of it (recall can only be lower). Every rule first merges a
frame whose view a kept frame already shows (``view_distance`` at most 1 for ``--radius`` and
``--max-angle``: the frame is not kept, the kept one counts a visit), as the ``coverage``
policy does; they differ in what they evict when full:

- ``redundant``: the frame nearest to its nearest other frame (the ``coverage`` policy's rule,
  without its least-recently-used tie-break);
- ``least-visited``: the frame with the fewest visits, ties to the most redundant;
- ``history``: the frame (the new one included) that alone holds the fewest earlier frames of
  the journey (it keeps every pose seen so far);
- ``farthest``: the frame farthest from the agent;
- ``least-recent`` / ``most-recent``: the frame whose view was visited longest ago / last;
- ``freeze``: nothing: when full, new views are not kept;
- ``fitted``: the frame a logistic regression over everything above an online rule can know
  (visits, times since the last and the first visit, redundancy, distance, heading and bearing
  from the agent) rates least likely to be the only frame holding a revisit target in the next
  ``--horizon`` frames; fitted on other episodes (``--fit-seed``, ``--fit-maze-size``), so it
  also learns what it can of this explorer's habits;
- ``clairvoyant``: ``memory_recall.clairvoyant_held``, which knows the future (no merging).

    python benchmarks/eviction_study.py --maze-size 9
    python benchmarks/eviction_study.py --maze-size 15 --steps 2000 --episodes 4
    python benchmarks/eviction_study.py --world synthetic --episodes 2 --steps 400

The last line printed is one JSON object: ``held_<rule>`` for every rule.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hybrid_cdit.memory import view_distance

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import memory_recall as recall
from benchmarks.maze import worlds as trajectories

RULES = (
    "redundant",
    "least-visited",
    "history",
    "farthest",
    "least-recent",
    "most-recent",
    "freeze",
    "fitted",
)


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
    parser.add_argument("--radius", type=float, default=0.8, help="merge radius, cells")
    parser.add_argument("--max-angle", type=float, default=35.0, help="merge angle, degrees")
    parser.add_argument("--context", type=int, default=4, help="context frames of the model")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--horizon", type=int, default=150, help="fitted: frames ahead")
    parser.add_argument("--fit-maze-size", type=int, choices=trajectories.MAZE_SIZES, default=9)
    parser.add_argument("--fit-seed", type=int, default=0, help="fitted: dataset seed")
    parser.add_argument("--fit-episodes", type=int, default=16, help="fitted: episodes")
    parser.add_argument("--fit-steps", type=int, default=1000, help="fitted: frames each")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2, help="processes generating episodes")
    return parser.parse_args(argv)


class Journey:
    """One episode's pairwise relations, computed once: ``merge (T, T)`` view distances at the
    merge tolerance, ``cover (T, T)`` bool (within 1 cell and 45 degrees, the pose itself
    included) and ``apart (T, T)`` ground distances."""

    def __init__(self, poses: np.ndarray, radius: float, max_angle: float) -> None:
        p = torch.tensor(poses, dtype=torch.float64)
        a, b = p[:, None], p[None, :]
        self.merge = view_distance(a, b, radius=radius, max_angle=max_angle).numpy()
        self.cover = (recall.same_place(a, b) | torch.eye(p.shape[0], dtype=torch.bool)).numpy()
        self.apart = torch.linalg.vector_norm(a[..., :2] - b[..., :2], dim=-1).numpy()


@dataclass
class Kept:
    """The frames one rule keeps (indices into the journey) and, per frame, its visits (frames
    merged into it, itself included), the last and the first of them."""

    frames: list[int] = field(default_factory=list)
    visits: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    first: list[int] = field(default_factory=list)

    def put(self, index: int, frame: int) -> None:
        """Keep ``frame`` at ``index`` (``len(frames)``: append)."""
        if index == len(self.frames):
            for values in (self.frames, self.visits, self.last, self.first):
                values.append(0)
        self.frames[index], self.visits[index] = frame, 1
        self.last[index] = self.first[index] = frame


Scorer = Callable[[np.ndarray], np.ndarray]


def redundancy(journey: Journey, kept: Kept, new: int) -> np.ndarray:
    """``(n,)`` merge-scale view distance of each kept frame to its nearest other frame, the
    new one included."""
    candidates = [*kept.frames, new]
    near = journey.merge[np.ix_(candidates, candidates)]
    np.fill_diagonal(near, np.inf)
    return near.min(1)[:-1]


def features(journey: Journey, poses: np.ndarray, kept: Kept, new: int) -> np.ndarray:
    """``(n, 8)`` what an online rule can know of each kept frame when ``new`` arrives: log
    visits, log time since its last and its first visit, redundancy (capped at 5) and its log,
    ground distance to the agent, cosine of the heading difference, and how far ahead of the
    agent it lies (cosine of the bearing)."""
    frames = np.asarray(kept.frames)
    near = np.minimum(redundancy(journey, kept, new), 5.0)
    apart = journey.apart[frames, new]
    offset = poses[frames, :2] - poses[new, :2]
    heading = np.array([math.cos(poses[new, 2]), math.sin(poses[new, 2])])
    return np.stack(
        [
            np.log(np.asarray(kept.visits, dtype=float)),
            np.log1p(new - np.asarray(kept.last, dtype=float)),
            np.log1p(new - np.asarray(kept.first, dtype=float)),
            near,
            np.log(near),
            apart,
            np.cos(poses[frames, 2] - poses[new, 2]),
            offset @ heading / np.maximum(apart, 1e-6),
        ],
        axis=1,
    )


def victim(
    rule: str,
    journey: Journey,
    poses: np.ndarray,
    kept: Kept,
    new: int,
    scorer: Scorer | None = None,
) -> int:
    """Index into ``kept`` of the frame ``rule`` evicts for the new frame ``new``, or
    ``len(kept.frames)`` to leave the new frame out. ``"fitted"`` evicts the lowest
    ``scorer(features(...))``."""
    if rule == "freeze":
        return len(kept.frames)
    if rule in ("least-recent", "most-recent"):
        order = np.asarray(kept.last)
        return int(order.argmin() if rule == "least-recent" else order.argmax())
    if rule == "farthest":
        return int(journey.apart[kept.frames, new].argmax())
    if rule == "history":
        holds = journey.cover[[*kept.frames, new], : new + 1]
        alone = holds & (holds.sum(0) == 1)
        return int(alone.sum(1).argmin())
    if rule == "fitted":
        assert scorer is not None
        return int(scorer(features(journey, poses, kept, new)).argmin())
    near = redundancy(journey, kept, new)
    if rule == "redundant":
        return int(near.argmin())
    return int(np.lexsort((near, np.asarray(kept.visits)))[0])  # fewest visits first


def held(
    rule: str,
    poses: np.ndarray,
    revisit: np.ndarray,
    args: argparse.Namespace,
    scorer: Scorer | None = None,
    samples: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> int:
    """Revisit targets of one episode that the frames ``rule`` keeps hold.

    With ``samples``, every eviction also appends the kept frames' ``features`` and whether
    each alone holds a revisit target within the next ``args.horizon`` frames."""
    journey = Journey(poses, args.radius, math.radians(args.max_angle))
    targets = np.flatnonzero(revisit)
    kept = Kept()
    count = 0
    for target in range(1, len(poses)):  # a study of rules, not a write path
        new = target - args.context - 1
        if new >= 0:
            nearest = int(journey.merge[kept.frames, new].argmin()) if kept.frames else -1
            if kept.frames and journey.merge[kept.frames[nearest], new] <= 1.0:
                kept.visits[nearest] += 1
                kept.last[nearest] = new
            elif len(kept.frames) < args.capacity:
                kept.put(len(kept.frames), new)
            else:
                if samples is not None:
                    soon = targets[(targets >= target) & (targets < target + args.horizon)]
                    holds = journey.cover[np.ix_([*kept.frames, new], soon)]
                    needed = (holds & (holds.sum(0) == 1)).any(1)[:-1]
                    samples.append((features(journey, poses, kept, new), needed))
                out = victim(rule, journey, poses, kept, new, scorer)
                if out < len(kept.frames):
                    kept.put(out, new)
        if revisit[target] and kept.frames and bool(journey.cover[kept.frames, target].any()):
            count += 1
    return count


def fit_scorer(poses: np.ndarray, revisits: np.ndarray, args: argparse.Namespace) -> Scorer:
    """A logistic regression of "alone holds a revisit target within ``args.horizon`` frames"
    on :func:`features`, fitted on these episodes at the evictions of ``redundant``, then
    refitted at the evictions of the fitted rule (two rounds)."""
    scorer: Scorer | None = None
    for _ in range(2):
        samples: list[tuple[np.ndarray, np.ndarray]] = []
        for p, r in zip(poses, revisits, strict=True):
            held("redundant" if scorer is None else "fitted", p, r, args, scorer, samples)
        x = torch.tensor(np.concatenate([f for f, _ in samples]), dtype=torch.float64)
        y = torch.tensor(np.concatenate([n for _, n in samples]), dtype=torch.float64)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        w = _logistic(torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1), y)
        scorer = _linear(mean, std, w)
        weights = " ".join(f"{float(v):+.2f}" for v in w)
        print(f"fitted on {len(y)} kept frames ({float(y.mean()):.3f} needed): {weights}")
    assert scorer is not None
    return scorer


def _logistic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(D,)`` weights of a logistic regression of ``y (N,)`` on ``x (N, D)`` (L-BFGS)."""
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(x @ weight, y)
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach()


def _linear(mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor) -> Scorer:
    def score(x: np.ndarray) -> np.ndarray:
        z = (torch.from_numpy(x) - mean) / std
        return (z @ weight[:-1] + weight[-1]).numpy()

    return score


def episodes(
    args: argparse.Namespace, size: int, seed: int, count: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, T, 3)`` poses and ``(N, T)`` revisit labels of ``count`` episodes of a
    ``size`` maze (``args`` gives the rest)."""
    chosen = {"maze_size": size, "seed": seed, "episodes": count, "steps": steps}
    return recall.labelled_episodes(argparse.Namespace(**{**vars(args), **chosen}))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    poses, labels = episodes(args, args.maze_size, args.seed, args.episodes, args.steps)
    steps = len(poses[0])
    targets = int(labels.sum())
    print(
        f"{args.world} {args.maze_size}x{args.maze_size}: {len(poses)} episodes x {steps} "
        f"frames, {targets} revisit targets; capacity {args.capacity}, merge within "
        f"{args.radius} cells and {args.max_angle} degrees"
    )
    scorer = None
    if "fitted" in args.rules:
        fit = episodes(args, args.fit_maze_size, args.fit_seed, args.fit_episodes, args.fit_steps)
        scorer = fit_scorer(*fit, args)
    result: dict[str, object] = {}
    for rule in args.rules:
        total = sum(held(rule, p, r, args, scorer) for p, r in zip(poses, labels, strict=True))
        result[f"held_{rule}"] = round(total / max(targets, 1), 4)
        print(f"{rule:<16}{result[f'held_{rule}']:>8.3f}")
    total = sum(
        recall.clairvoyant_held(p, r, args.capacity, args.context)
        for p, r in zip(poses, labels, strict=True)
    )
    result["held_clairvoyant"] = round(total / max(targets, 1), 4)
    print(f"{'clairvoyant':<16}{result['held_clairvoyant']:>8.3f}")
    result.update(
        capacity=args.capacity,
        episodes=len(poses),
        steps=steps,
        revisit_targets=targets,
        maze_size=args.maze_size,
        world=args.world,
        seconds=round(time.perf_counter() - start, 1),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
