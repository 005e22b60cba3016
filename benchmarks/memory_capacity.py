"""Cost of ``MemoryBuffer`` writes per policy and of retrieval at large capacities.

Two measurements, each side by side in one run with interleaved repetitions (medians):

1. **Writes** at ``--write-batch`` samples (64) and capacity 50: ``add`` with the ``coverage``
   policy, and with ``coverage`` told the next ``--route`` poses of the stream
   (``upcoming=``), against the ``lru`` policy (the buffer's original write path), on two pose
   streams:
   ``walk`` (a rollout: each sample walks on, forward 0.2 or turning 0.3 rad a step) and
   ``random`` (poses drawn anywhere: almost every write evicts, the coverage policy's worst
   case). Buffers are filled before timing.
2. **Retrieval** at ``--batch-size`` samples (16), ``k`` 8, for capacities 50, 500 and 5000:
   ``retrieve`` time, median and minimum (``pose`` strategy; scoring and ``topk`` selection are
   linear in the capacity, the gather moves ``k`` frames) and the bytes each sample takes:
   frames (on the CPU, pinned where CUDA is available) and everything else (poses and
   bookkeeping; on ``--index-device``).

    python benchmarks/memory_capacity.py
    python benchmarks/memory_capacity.py --index-device cuda      # poses on the GPU

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from hybrid_cdit.memory import MemoryBuffer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-batch", type=int, default=64)
    parser.add_argument("--write-capacity", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16, help="retrieval batch")
    parser.add_argument("--capacities", type=int, nargs="+", default=[50, 500, 5000])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--frame-shape", type=int, nargs=3, default=[4, 28, 28], metavar="N")
    parser.add_argument("--repeats", type=int, default=200, help="timed writes per stream")
    parser.add_argument("--route", type=int, default=64, help="upcoming poses of route writes")
    parser.add_argument("--retrieve-repeats", type=int, default=30)
    parser.add_argument("--index-device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def walk_poses(gen: torch.Generator, b: int, steps: int) -> list[Tensor]:
    """Each sample walks a 40 x 40 floor: forward 0.2 (70%) or a 0.3 rad turn."""
    pose = torch.zeros(b, 3)
    pose[:, :2] = torch.rand(b, 2, generator=gen) * 40
    out = []
    for _ in range(steps):
        turn = torch.rand(b, generator=gen) < 0.3
        side = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        yaw = pose[:, 2] + torch.where(turn, 0.3 * side, 0.0)
        step = torch.where(turn, 0.0, 0.2)
        x = (pose[:, 0] + step * torch.cos(yaw)).clamp(0, 40)
        y = (pose[:, 1] + step * torch.sin(yaw)).clamp(0, 40)
        pose = torch.stack([x, y, yaw], dim=1)
        out.append(pose)
    return out


def random_poses(gen: torch.Generator, b: int, steps: int, side: float = 9.0) -> list[Tensor]:
    """Poses anywhere on a ``side x side`` floor, any heading."""
    scale = torch.tensor([side, side, 2 * math.pi])
    return [torch.rand(b, 3, generator=gen) * scale for _ in range(steps)]


def time_writes(args: argparse.Namespace, stream: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(args.seed)
    b, shape = args.write_batch, tuple(args.frame_shape)
    make = walk_poses if stream == "walk" else random_poses
    poses = make(gen, b, 2 * args.write_capacity + args.repeats + args.route)
    frames = torch.randn(b, *shape, generator=gen)
    buffers = {
        policy: MemoryBuffer(
            b,
            args.write_capacity,
            frame_shape=shape,
            pose_dim=3,
            write_policy=policy,
            index_device=args.index_device,
        )
        for policy in ("lru", "coverage")
    }
    # the same coverage policy told the next --route poses of the stream (a known route)
    buffers["route"] = MemoryBuffer(
        b,
        args.write_capacity,
        frame_shape=shape,
        pose_dim=3,
        write_policy="coverage",
        index_device=args.index_device,
    )
    stacked = torch.stack(poses, 1)  # (B, steps, 3)
    warm = 2 * args.write_capacity
    times: dict[str, list[float]] = {name: [] for name in buffers}
    for i, pose in enumerate(poses[: len(poses) - args.route]):
        route = stacked[:, i + 1 : i + 1 + args.route].to(args.index_device)
        for name, buffer in buffers.items():
            upcoming = route if name == "route" else None
            seconds = timed(lambda b=buffer, p=pose, u=upcoming: b.add(frames, p, upcoming=u))
            if i >= warm:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_retrieval(args: argparse.Namespace, capacity: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(args.seed + capacity)
    b, shape = args.batch_size, tuple(args.frame_shape)
    buffer = MemoryBuffer(
        b, capacity, frame_shape=shape, pose_dim=3, index_device=args.index_device
    )
    # Fill every slot with one batched write per slot (content does not affect timing).
    frames = torch.randn(b, *shape, generator=gen)
    for pose in random_poses(gen, b, capacity, side=40.0):
        buffer.add(frames, pose)
    target = "cuda" if torch.cuda.is_available() else "cpu"
    query = random_poses(gen, b, 1, side=40.0)[0]
    for _ in range(3):
        buffer.retrieve(query, args.k, strategy="pose", device=target)
    times = [
        timed(lambda: buffer.retrieve(query, args.k, strategy="pose", device=target))
        for _ in range(args.retrieve_repeats)
    ]
    sizes = buffer.nbytes_per_sample
    return {
        "ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        **{k: float(v) for k, v in sizes.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"frames={tuple(args.frame_shape)} threads={torch.get_num_threads()} "
        f"index_device={args.index_device} cuda={torch.cuda.is_available()} "
        f"torch={torch.__version__}"
    )
    result: dict[str, object] = {}
    print(f"\nwrites: B={args.write_batch}, capacity {args.write_capacity}, {args.repeats} repeats")
    route = f"route {args.route} us"
    print(f"{'poses':<8}{'lru us':>10}{'coverage us':>13}{'ratio':>8}{route:>16}{'ratio':>8}")
    for stream in ("walk", "random"):
        t = time_writes(args, stream)
        ratio = t["coverage"] / t["lru"]
        route_ratio = t["route"] / t["lru"]
        print(
            f"{stream:<8}{t['lru'] * 1e6:>10.0f}{t['coverage'] * 1e6:>13.0f}{ratio:>7.2f}x"
            f"{t['route'] * 1e6:>16.0f}{route_ratio:>7.2f}x"
        )
        result[f"write_ratio_{stream}"] = round(ratio, 3)
        result[f"write_us_lru_{stream}"] = round(t["lru"] * 1e6, 1)
        result[f"write_us_coverage_{stream}"] = round(t["coverage"] * 1e6, 1)
        result[f"write_ratio_route_{stream}"] = round(route_ratio, 3)
        result[f"write_us_route_{stream}"] = round(t["route"] * 1e6, 1)
    result["route"] = args.route
    print(f"\nretrieval: B={args.batch_size}, k={args.k}, pose strategy")
    print(f"{'capacity':>9}{'ms':>9}{'min ms':>9}{'frames MiB/sample':>19}{'index KiB/sample':>18}")
    for capacity in args.capacities:
        r = time_retrieval(args, capacity)
        print(
            f"{capacity:>9}{r['ms']:>9.2f}{r['min_ms']:>9.2f}{r['frames'] / 2**20:>19.2f}"
            f"{r['index'] / 2**10:>18.1f}"
        )
        result[f"retrieve_ms_{capacity}"] = round(r["ms"], 3)
        result[f"retrieve_min_ms_{capacity}"] = round(r["min_ms"], 3)
        result[f"frame_bytes_per_sample_{capacity}"] = int(r["frames"])
        result[f"index_bytes_per_sample_{capacity}"] = int(r["index"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
