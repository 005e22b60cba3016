"""``python -m benchmarks.maze.pose_refiner``: trains a :class:`hybrid_cdit.memory.SlotPoseRefiner`
for each training seed of a benchmark run, on that seed's own training episodes, and saves it
beside the run's models (``DIR/models/seed{N}/pose_refiner.safetensors``), where
``python -m benchmarks.maze.robustness --refine-poses`` finds it.

    python -m benchmarks.maze --quick --seeds 0,1,2 --out runs/q3                 # the models
    python -m benchmarks.maze.pose_refiner --models-from runs/q3 --quick --seeds 0,1,2
    python -m benchmarks.maze.robustness --models-from runs/q3 --quick --seeds 0,1,2 --refine-poses

Training pairs are every two frames of a training episode taken within 1.6 cells and 70 degrees
of each other and more than 3 frames apart (:func:`training_pairs`: the views a retrieval hands
the memory, against the last context frame). Each pair's prior is its
true relative pose plus Gaussian noise of a scale drawn per pair, uniform between zero and
``--prior-noise XY,DEG`` (s.d. per position axis in cells, and of the yaw in degrees), so one
refiner serves poses of any quality up to that; half the pairs are mirrored left to right (both
frames flipped, the relative pose's ``y`` and yaw negated). The loss is
:func:`hybrid_cdit.memory.relative_pose_loss`. The printed figures are the median position and
heading error of the prior and of the refined pose on pairs of the held-out episodes of
``--split``, with priors drawn the same way; the last line printed is one JSON object.

Every other flag is ``python -m benchmarks.maze``'s (``--quick``, ``--seeds``, the data flags,
which must be those of the run that saved the models).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from benchmarks.maze.noise import PoseNoise, noise_flag
from benchmarks.maze.pipeline import held_out_episodes, save_weights, weights_path
from benchmarks.maze.pipeline import parse_args as pipeline_args
from benchmarks.maze.protocol import Data, settings_from
from benchmarks.maze.worlds import _pairs, load_episodes
from hybrid_cdit.memory import SlotPoseRefiner, relative_pose, relative_pose_loss, wrap_angle

__all__ = [
    "NAME",
    "draw_pairs",
    "load_refiner",
    "main",
    "pair_errors",
    "parse_args",
    "run",
    "train_refiner",
    "training_pairs",
]

NAME = "pose_refiner"
"""The refiner's name in a run's ``models/seed{N}`` folder (:func:`pipeline.weights_path`)."""


def training_pairs(
    poses: Tensor, distance: float = 1.6, turn: float = math.radians(70.0), gap: int = 3
) -> Tensor:
    """``(M, 3)`` int64 rows ``(episode, reference frame, other frame)`` of every two frames of
    ``poses (N, T, 3)`` within ``distance`` and ``turn`` radians of each other and more than
    ``gap`` frames apart (both orders)."""
    rows = []
    frames = np.arange(poses.shape[1])
    apart = np.abs(frames[:, None] - frames[None, :]) > gap
    for n in range(poses.shape[0]):
        _, close = _pairs(poses[n].numpy(), distance, turn)
        ref, other = np.nonzero(close & apart)
        rows.append(np.stack([np.full_like(ref, n), ref, other], axis=1))
    return torch.from_numpy(np.concatenate(rows)).long()


def draw_pairs(
    frames: Tensor,
    poses: Tensor,
    pairs: Tensor,
    prior_noise: PoseNoise,
    generator: torch.Generator,
    mirror: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A batch of the pairs ``(M, 3)``: ``reference (M, C, H, W)``, ``other (M, C, H, W)``, the
    noisy ``prior (M, 3)`` and the ``true (M, 3)`` pose of the other frame relative to the
    reference (float32; see the module's docstring for the noise and the mirroring)."""
    n, ref_t, other_t = pairs.unbind(1)
    true = relative_pose(poses[n, other_t].double(), poses[n, ref_t].double()).float()
    reference, other = frames[n, ref_t].float(), frames[n, other_t].float()
    m = pairs.shape[0]
    scale = torch.rand(m, 1, generator=generator)
    std = torch.tensor([prior_noise.position, prior_noise.position, prior_noise.radians])
    prior = true + torch.randn(m, 3, generator=generator) * scale * std
    if mirror:
        flip = torch.rand(m, generator=generator) < 0.5
        reference = torch.where(flip[:, None, None, None], reference.flip(-1), reference)
        other = torch.where(flip[:, None, None, None], other.flip(-1), other)
        sign = torch.where(flip[:, None], torch.tensor([1.0, -1.0, -1.0]), torch.ones(3))
        true, prior = true * sign, prior * sign
    prior[:, 2] = wrap_angle(prior[:, 2])
    return reference, other, prior, true


def train_refiner(
    frames: Tensor,
    poses: Tensor,
    *,
    steps: int,
    seed: int,
    prior_noise: PoseNoise,
    batch: int = 128,
    lr: float = 2e-3,
    log: Callable[[int, float], None] | None = None,
) -> SlotPoseRefiner:
    """A refiner trained on the pairs of ``frames (N, T, C, H, W)`` / ``poses (N, T, 3)`` for
    ``steps`` AdamW steps (one-cycle schedule peaking at ``lr``), seeded by ``seed``; in eval
    mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    pairs = training_pairs(poses)
    refiner = SlotPoseRefiner(in_channels=frames.shape[2])
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=lr / 2, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    refiner.train()
    for step in range(1, steps + 1):
        chosen = pairs[torch.randint(len(pairs), (batch,), generator=generator)]
        reference, other, prior, true = draw_pairs(frames, poses, chosen, prior_noise, generator)
        loss = relative_pose_loss(refiner(reference, other, prior), true)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        if log is not None:
            log(step, float(loss.detach()))
    return refiner.eval()


@torch.no_grad()
def pair_errors(
    refiner: SlotPoseRefiner,
    frames: Tensor,
    poses: Tensor,
    prior_noise: PoseNoise,
    seed: int,
    pairs: int = 4000,
) -> dict[str, float]:
    """Median position (cells) and heading (degrees) errors of the prior and of the refined
    pose on up to ``pairs`` random pairs of ``frames`` / ``poses`` (unmirrored)."""
    generator = torch.Generator().manual_seed(seed)
    every = training_pairs(poses)
    chosen = every[torch.randperm(len(every), generator=generator)[:pairs]]
    reference, other, prior, true = draw_pairs(
        frames, poses, chosen, prior_noise, generator, mirror=False
    )
    refined = refiner(reference, other, prior)
    out = {}
    for name, pose in (("prior", prior), ("refined", refined)):
        out[f"{name}_position_error"] = float((pose[:, :2] - true[:, :2]).norm(dim=1).median())
        turn = wrap_angle(pose[:, 2] - true[:, 2]).abs().median()
        out[f"{name}_heading_error_deg"] = math.degrees(float(turn))
    return out


def load_refiner(folder: Path, seed: int, in_channels: int = 3) -> SlotPoseRefiner:
    """The refiner :func:`run` saved for ``seed`` in the run folder ``folder``, in eval mode."""
    path = weights_path(folder, seed, NAME)
    if not path.is_file():
        raise FileNotFoundError(
            f"--refine-poses: no refiner at {path}; train one with python -m "
            "benchmarks.maze.pose_refiner --models-from " + str(folder)
        )
    refiner = SlotPoseRefiner(in_channels=in_channels)
    refiner.load_state_dict(load_file(str(path)), strict=True)
    return refiner.eval()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """This command's flags, on top of ``python -m benchmarks.maze``'s."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.maze.pose_refiner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--models-from", required=True, help="the --out folder of a benchmark run")
    p.add_argument("--refiner-steps", type=int, default=3000, help="training steps per seed")
    p.add_argument(
        "--prior-noise",
        type=noise_flag("jitter", "--prior-noise"),
        default=PoseNoise("jitter", 0.6, 15.0),
        metavar="XY,DEG",
        help="the largest prior noise of the training pairs (default 0.6,15)",
    )
    own, rest = p.parse_known_args(argv)
    if own.refiner_steps < 1:
        p.error(f"--refiner-steps must be >= 1, got {own.refiner_steps}")
    args = pipeline_args([*rest, "--models-from", own.models_from])
    args.refiner_steps = own.refiner_steps
    args.prior_noise = own.prior_noise
    return args


def run(args: argparse.Namespace) -> dict[str, object]:
    """Train, save and score one refiner per seed; return the summary."""
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    held_out = Data(held_out_episodes(args), args.stride, args.size, settings)
    folder = Path(args.models_from)
    per_seed: dict[str, dict[str, float]] = {}
    for seed in args.seeds or [args.seed]:
        start = time.perf_counter()
        episodes = load_episodes(
            args.maze_size, seed, args.train_episodes, args.env_steps,
            cache_dir=args.cache_dir, workers=args.workers,
        )  # fmt: skip
        data = Data(episodes, args.stride, args.size, settings)

        def log(step: int, loss: float, seed: int = seed) -> None:
            if step % 500 == 0 or step == args.refiner_steps:
                print(f"[refiner seed {seed}] step {step}/{args.refiner_steps} loss {loss:.4f}")

        refiner = train_refiner(
            data.frames, data.poses, steps=args.refiner_steps, seed=seed,
            prior_noise=args.prior_noise, log=log,
        )  # fmt: skip
        save_weights(refiner, weights_path(folder, seed, NAME))
        errors = pair_errors(refiner, held_out.frames, held_out.poses, args.prior_noise, seed)
        per_seed[str(seed)] = {**errors, "seconds": time.perf_counter() - start}
        print(f"[refiner seed {seed}] held-out pairs ({args.split}): " + ", ".join(
            f"{k} {v:.3f}" for k, v in errors.items()
        ))  # fmt: skip
    return {"split": args.split, "steps": args.refiner_steps, "seeds": per_seed}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.maze.pose_refiner``."""
    print(json.dumps(run(parse_args(argv))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
