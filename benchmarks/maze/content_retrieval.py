"""``python -m benchmarks.maze.content_retrieval``: can the frames themselves pick the memory's
slots better than noisy poses do? A retrieval-only study (no model is trained or run).

    python -m benchmarks.maze.content_retrieval --quick --split validation --eval-episodes 6

For the exact poses and each of ``--settings`` (corrupted memory poses, as in
:mod:`benchmarks.maze.robustness`), the memory protocol is replayed twice: as the benchmark runs
it (``top_k`` slots at the run's threshold: *pose*), and with a candidate pool of ``--pool``
slots at ``--pool-threshold``. The pool is then re-ranked by content against the sample's last
context frame (the only frame of the target's surroundings a model has), and its best ``top_k``
slots are kept:

- *pixel*: the smallest mean squared pixel difference to the last context frame;
- *warp*: the highest confidence of the turn that maps the slot's frame onto the last context
  frame (:func:`hybrid_cdit.memory.heading_offsets`; high where the two were taken at one
  place), with ``--min-confidence`` masking slots below it.

Per row and per band (revisit, novel): the hit rate (targets whose kept slots hold a frame
truly within 1 cell and 45 degrees of the target, the revisit criterion) and the share of
targets with any usable slot (where memory is active). *pool* is the share of targets whose
whole pool holds such a frame: what a perfect re-ranking could reach. Every other flag is
``python -m benchmarks.maze``'s (the memory flags set the pose retrieval). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from benchmarks.maze.pipeline import held_out_episodes, noisy_data
from benchmarks.maze.pipeline import parse_args as pipeline_args
from benchmarks.maze.protocol import (
    Data,
    MemorySchedule,
    replay_memory,
    settings_from,
    slots_near,
)
from benchmarks.maze.robustness import add_settings_flag, settings_rows
from benchmarks.maze.worlds import Episode
from benchmarks.side_by_side import format_table
from hybrid_cdit.memory import heading_offsets, wrap_angle

__all__ = [
    "main",
    "parse_args",
    "pixel_similarity",
    "rerank",
    "run",
    "warp_confidence",
]

Similarity = Callable[[Data, Data, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``(data, noisy, episode (B,), target (B,), indices (B, K), mask (B, K)) -> (B, K)`` content
score of each slot (higher: more alike), for the poses the memory of ``noisy`` sees."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """This command's flags, on top of ``python -m benchmarks.maze``'s."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.maze.content_retrieval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_settings_flag(p)
    p.add_argument("--pool", type=int, default=16, help="candidate slots retrieved by pose")
    p.add_argument(
        "--pool-threshold", type=float, default=0.3, help="retrieval threshold of the pool"
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="warp re-ranking masks slots whose fit's confidence is below this",
    )
    own, rest = p.parse_known_args(argv)
    args = pipeline_args(["--no-baselines", *rest])
    args.settings = settings_rows(p, own, args)
    if own.pool < args.top_k:
        p.error(f"--pool must be at least --top-k ({args.top_k}), got {own.pool}")
    if not 0 <= own.pool_threshold <= 1:
        p.error(f"--pool-threshold must be in [0, 1], got {own.pool_threshold}")
    if not 0 <= own.min_confidence < float("inf"):
        p.error(f"--min-confidence must be a finite number >= 0, got {own.min_confidence}")
    args.pool, args.pool_threshold = own.pool, own.pool_threshold
    args.min_confidence = own.min_confidence
    return args


def rerank(indices: Tensor, mask: Tensor, score: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` usable slots of highest ``score`` (ties: the earlier slot, i.e. the better pose
    rank), usable ones first.

    Args:
        indices, mask, score: ``(B, K)`` slot frame indices, usable slots, content scores.
        k: slots kept, ``1 <= k <= K``.

    Returns:
        ``indices (B, k)`` and ``mask (B, k)``.
    """
    if not 1 <= k <= indices.shape[1]:
        raise ValueError(f"k must be in [1, {indices.shape[1]}], got {k}")
    key = torch.where(mask, score.double(), -math.inf)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    return indices.gather(1, order), mask.gather(1, order)


def pixel_similarity(
    data: Data, noisy: Data, episode: Tensor, target: Tensor, indices: Tensor, mask: Tensor
) -> Tensor:
    """Minus the mean squared pixel difference between each slot's frame and the sample's last
    context frame ``target - 1``."""
    return -data.pair_mse[episode[:, None], indices, (target - 1)[:, None]]


def warp_confidence(fov_degrees: float, chunk: int = 1024) -> Similarity:
    """The confidence of the turn that maps each slot's frame onto the last context frame
    (:func:`hybrid_cdit.memory.heading_offsets`, searched around the turn the memory's poses
    imply), in chunks of ``chunk`` slots."""
    fov = math.radians(fov_degrees)

    def score(
        data: Data, noisy: Data, episode: Tensor, target: Tensor, indices: Tensor, mask: Tensor
    ) -> Tensor:
        b, k = indices.shape
        frames = data.frames[episode[:, None], indices].flatten(0, 1)
        reference = data.frames[episode, target - 1][:, None].expand(-1, k, -1, -1, -1)
        seen = noisy.memory_poses
        prior = wrap_angle(
            seen[episode[:, None], indices][..., 2] - seen[episode, target - 1][:, None, 2]
        ).flatten()
        out = [
            heading_offsets(f, r, p, fov)[1]
            for f, r, p in zip(
                torch.split(frames, chunk),
                torch.split(reference.flatten(0, 1), chunk),
                torch.split(prior, chunk),
                strict=True,
            )
        ]
        return torch.cat(out).view(b, k)

    return score


def _band(
    data: Data,
    noisy: Data,
    pool: MemorySchedule,
    episode: Tensor,
    target: Tensor,
    rankers: dict[str, tuple[Similarity, float]],
    k: int,
) -> dict[str, float]:
    """Hit rate and active share of pose retrieval, the ``pool`` (replayed on the memory poses
    of ``noisy``) and each re-ranking, on the targets ``(episode[i], target[i])``."""

    def figures(name: str, indices: Tensor, mask: Tensor) -> dict[str, float]:
        slots = data.poses[episode[:, None], indices]
        hits = slots_near(slots, data.poses[episode, target], mask)
        return {
            f"{name}_hit_rate": float(hits.double().mean()),
            f"{name}_active": float(mask.any(1).double().mean()),
        }

    out = figures(
        "pose", noisy.schedule.indices[episode, target], noisy.schedule.mask[episode, target]
    )
    indices, mask = pool.indices[episode, target], pool.mask[episode, target]
    out.update(figures("pool", indices, mask))
    for name, (similarity, floor) in rankers.items():
        score = similarity(data, noisy, episode, target, indices, mask)
        kept, kept_mask = rerank(indices, mask & (score >= floor), score, k)
        out.update(figures(name, kept, kept_mask))
    return out


def run(
    args: argparse.Namespace, eval_episodes: Sequence[Episode] | None = None
) -> dict[str, object]:
    """Every row's figures; prints the table and returns the summary (the JSON :func:`main`
    prints). ``eval_episodes``: held-out episodes of any world (None: Memory Maze's of
    ``--split``)."""
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    pool_settings = dataclasses.replace(settings, top_k=args.pool, threshold=args.pool_threshold)
    if eval_episodes is None:
        eval_episodes = held_out_episodes(args)
    data = Data(eval_episodes, args.stride, args.size, settings)
    rankers: dict[str, tuple[Similarity, float]] = {
        "pixel": (pixel_similarity, -math.inf),
        "warp": (warp_confidence(args.camera_fov), args.min_confidence),
    }
    bands = {"revisit": data.revisit, "novel": data.novel}
    rows: list[dict[str, object]] = []
    for noise in [None, *args.settings]:
        label = "exact" if noise is None else noise.label()
        print(f"[content_retrieval] {label}", flush=True)
        noisy = data if noise is None else noisy_data(data, noise, args.pose_noise_seed, settings)
        assert noisy is not None
        row: dict[str, object] = {"setting": label}
        pool = replay_memory(noisy.memory_poses, pool_settings)
        for band, labels in bands.items():
            episode, target = labels.nonzero(as_tuple=True)
            figures = _band(data, noisy, pool, episode, target, rankers, settings.top_k)
            row.update({f"{band}_{key}": value for key, value in figures.items()})
        rows.append(row)
    summary: dict[str, object] = {
        "rows": rows,
        "revisit_targets": int(data.revisit.sum()),
        "novel_targets": int(data.novel.sum()),
        "top_k": settings.top_k,
        "threshold": settings.threshold,
        "pool": args.pool,
        "pool_threshold": args.pool_threshold,
        "min_confidence": args.min_confidence,
        "split": args.split,
        "pose_noise_seed": args.pose_noise_seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(content_table(summary))
    return summary


def content_table(summary: dict[str, object]) -> str:
    """The printed table of a :func:`run` summary: revisit hit rates, then the share of novel
    targets with memory active."""
    rows = summary["rows"]
    assert isinstance(rows, list)
    names = ("pose", "pool", "pixel", "warp")
    header = ["memory poses"]
    header += [f"revisit hit: {n}" for n in names]
    header += [f"novel active: {n}" for n in names if n != "pool"]
    lines = [
        [row["setting"]]
        + [row[f"revisit_{n}_hit_rate"] for n in names]
        + [row[f"novel_{n}_active"] for n in names if n != "pool"]
        for row in rows
    ]
    return format_table(header, lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the last line printed is the JSON summary."""
    summary = run(parse_args(argv))
    print(json.dumps(summary, default=float))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
