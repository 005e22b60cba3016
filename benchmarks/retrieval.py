"""Time ``MemoryBuffer.retrieve`` against a per-frame Python loop like the seed's retrieval.

The loop baseline does what the seed's ``get_relevant_frames`` does: for each sample, for each
stored frame, compute the score with torch scalars, sort the Python list, keep the top k above
the threshold and stack their frames. For ``fov`` the baseline scores each frame's view overlap
with the same vectorised point test (one call per frame, as WorldMem's per-frame list) and then
takes a plain top-k, which is cheaper than the greedy coverage selection it is compared with.

Repetitions are interleaved (ours, loop, ours, loop, ...) and medians are reported.

    python benchmarks/retrieval.py                     # B=64, capacity 50, k=8, (4, 28, 28)
    python benchmarks/retrieval.py --strategies distance --repeats 50
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from hybrid_cdit.memory import STRATEGIES, FovParams, MemoryBuffer
from hybrid_cdit.memory import fov as F
from hybrid_cdit.memory.poses import view_direction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--capacity", type=int, default=50)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--frame-shape", type=int, nargs=3, default=[4, 28, 28], metavar="N")
    parser.add_argument("--pose-dim", type=int, choices=[3, 5], default=5)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument(
        "--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES)
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steady timings)"
    )
    parser.add_argument(
        "--min-speedup",
        type=float,
        default=20.0,
        help="exit with status 1 if 'distance' is not at least this much faster",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def filled_buffer(args: argparse.Namespace) -> MemoryBuffer:
    """A full buffer: poses on a 40 x 40 floor, headings anywhere, small pitches."""
    gen = torch.Generator().manual_seed(args.seed)
    b, p = args.batch_size, args.pose_dim
    buffer = MemoryBuffer(b, args.capacity, frame_shape=tuple(args.frame_shape), pose_dim=p)
    for _ in range(args.capacity):
        buffer.add(torch.randn(b, *args.frame_shape, generator=gen), random_poses(gen, b, p))
    return buffer


def random_poses(gen: torch.Generator, b: int, p: int) -> Tensor:
    poses = (torch.rand(b, p, generator=gen) - 0.5) * 40.0
    poses[:, -1] = (torch.rand(b, generator=gen) * 2 - 1) * math.pi
    if p == 5:
        poses[:, 2] *= 0.05
        poses[:, 3] = (torch.rand(b, generator=gen) - 0.5) * 0.5
    return poses


def loop_retrieve(
    frames: Tensor,
    poses: Tensor,
    valid: Tensor,
    query: Tensor,
    k: int,
    threshold: float,
    strategy: str,
    scale: float = 10.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-frame Python loop: ``(B, k, C, H, W)`` frames, ``(B, k)`` scores and mask."""
    b, m = valid.shape
    n = 2 if poses.shape[-1] == 3 else 3
    params = FovParams()
    out_frames, out_scores, out_mask = [], [], []
    for i in range(b):
        points = F._query_view_points(query[i : i + 1], params, None)
        scored: list[tuple[float, int]] = []
        for j in range(m):
            if not bool(valid[i, j]):
                continue
            if strategy == "fov":
                camera = poses[i, j].clone()
                camera[:n] -= query[i, :n]
                inside = F._in_view(points, camera[None, None], params)
                score = float(inside.float().mean())
            else:
                distance = torch.linalg.vector_norm(query[i, :n] - poses[i, j, :n])
                score = float(torch.exp(-distance / scale))
                if strategy == "pose":
                    dot = torch.dot(view_direction(query[i]), view_direction(poses[i, j]))
                    score *= (1.0 + float(dot)) / 2.0
            scored.append((score, j))
        scored.sort(key=lambda item: -item[0])
        top = scored[:k]
        chosen = [frames[i, j] for _, j in top]
        chosen += [torch.zeros_like(frames[i, 0])] * (k - len(top))
        out_frames.append(torch.stack(chosen))
        out_scores.append([s for s, _ in top] + [0.0] * (k - len(top)))
        out_mask.append([s >= threshold for s, _ in top] + [False] * (k - len(top)))
    return torch.stack(out_frames), torch.tensor(out_scores), torch.tensor(out_mask)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    buffer = filled_buffer(args)
    state = buffer.state_dict()
    frames, poses, valid = state["frames"], state["poses"], state["valid"]
    query = random_poses(
        torch.Generator().manual_seed(args.seed + 1), args.batch_size, args.pose_dim
    )
    print(
        f"B={args.batch_size} capacity={args.capacity} k={args.k} frames={tuple(args.frame_shape)} "
        f"P={args.pose_dim} threshold={args.threshold} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} torch={torch.__version__}"
    )
    print(f"{'strategy':<10}{'MemoryBuffer ms':>17}{'python loop ms':>16}{'speed-up':>10}")
    status = 0
    for strategy in args.strategies:

        def ours(strategy: str = strategy) -> object:
            return buffer.retrieve(query, args.k, strategy=strategy, threshold=args.threshold)

        def loop(strategy: str = strategy) -> object:
            return loop_retrieve(frames, poses, valid, query, args.k, args.threshold, strategy)

        ctx, (loop_frames, loop_scores, _) = ours(), loop()  # warm-up, and a sanity check
        if strategy != "fov":  # fov's greedy selection differs from the baseline's top-k
            torch.testing.assert_close(ctx.scores, loop_scores.to(ctx.scores), atol=1e-5, rtol=0)
            torch.testing.assert_close(ctx.frames, loop_frames)
        times_ours, times_loop = [], []
        for _ in range(args.repeats):
            times_ours.append(timed(ours))
            times_loop.append(timed(loop))
        t_ours, t_loop = statistics.median(times_ours), statistics.median(times_loop)
        ratio = t_loop / t_ours
        print(f"{strategy:<10}{t_ours * 1e3:>17.2f}{t_loop * 1e3:>16.2f}{ratio:>9.1f}x")
        if strategy == "distance" and ratio < args.min_speedup:
            print(f"distance speed-up {ratio:.1f}x is under --min-speedup {args.min_speedup}x")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
