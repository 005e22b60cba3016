"""HybridCDiT against CDiT on DeepMind's Memory Maze: revisits seen from new viewpoints.

    pip install -e ".[bench]"        # memory-maze, mujoco<4, gym==0.26.2; MUJOCO_GL=egl
    python -m benchmarks.maze --quick                 # about 10 minutes on 2 cores
    python -m benchmarks.maze                         # 9x9 mazes, the documented run
    python -m benchmarks.maze --maze-size 11 --seed 1 --out runs/mm11
    python -m benchmarks.maze --quick --memory-pose-encoding frame --memory-time-embedding

Data. A scripted explorer (``benchmarks/maze/worlds.py``) walks breadth-first paths between cell
centres to the cells it has not seen for the longest time, so episodes cover the maze and come back
to places after long absences, often from another direction. Training episodes (dataset ``--seed``,
0 to 999) and held-out episodes live in different mazes: ``--split test`` (dataset 1000, the
reported tables) or ``--split validation`` (dataset 2000, every design decision; the default of
``--memory-report-only``); the rule is in ``worlds.episode_seeds``. Episodes are generated in
parallel processes once and cached (``~/.cache/hybrid-cdit/memory_maze``, ``$HYBRID_CDIT_CACHE``
overrides the root). Every ``--stride``-th camera frame is used, at ``--size`` pixels square, in
pixel space (RGB scaled to ``[-1, 1]``); poses are ``(x, y, yaw)`` in cells and radians.

Models. A CDiT and a HybridCDiT with the same CDiT weights at initialisation are trained side by
side on the same batches, timesteps and noise (``benchmarks/side_by_side.py``: the DDPM loss with a
v target by default, ``--prediction eps`` for the epsilon target; cosine schedule). The hybrid's
memory for each sample is what its :class:`~hybrid_cdit.MemoryBuffer` holds at that point of the
episode under the protocol of ``protocol.py`` (a frame enters memory as it leaves the context
window; retrieval with the library's strategy), the same in training, one-step evaluation and
rollouts. By default the buffer holds a whole episode (capacity 250, as WorldMem keeps the whole
history) and ``pose`` retrieval uses a 2-cell distance scale and threshold 0.5:
``--memory-report-only`` measured that these find a frame of the target's place and heading for
99.9% of held-out revisit targets and activate memory for no novel target (capacity 50 with LRU:
37%; a 10-cell scale: 63% of novel targets active). For ``--withhold`` of the training samples the
hybrid's memory is withheld (all slots masked), so the hybrid stays a good model without memory.

Evaluation, on the held-out episodes. Labels: a target is a *revisit* when a frame before the
context window lies within 1 cell and 45 degrees of it (not the identical pose), *novel* when no
frame before the context window lies within 2 cells, *middle* otherwise (partly seen). Figures:
one-step DDIM PSNR and SSIM (fixed noise) on every band and over all frames, for CDiT, HybridCDiT,
HybridCDiT with memory withheld, the learned baselines (``baselines.py``: long context, context as
memory with and without poses, trained side by side from the same pretrained CDiT) and the copy
baselines (the last context frame, the top retrieved frame); revisit PSNR by frames since the view
was last seen; 95% bootstrap intervals over held-out episodes of the headline differences
(``stats.py``); parameters and FLOPs per forward, and held-out learning curves, of every learned
model; the noise-prediction MSE ratio hybrid/CDiT on revisit targets at fixed noise levels (plus two
diagnostics: memory withheld and an oracle memory holding the pixel-closest history frame); memory
informativeness (pixel MSE of the best retrieved frame, the last context frame and the closest
history frame); autoregressive rollouts of ``--rollout-length`` frames, generated frames becoming
context and entering the hybrid's memory, which holds the true history before the rollout's start
(also run by the hybrid with its memory withheld, the rollouts' control); and the figure of one
rollout. ``--seeds 0,1,2`` repeats training per seed on the same held-out targets and aggregates.
The last printed line is one JSON object.

Poses as odometry gives them (``benchmarks/maze/noise.py``). ``--pose-jitter XY,DEG`` (i.i.d.
Gaussian noise per frame, s.d. XY cells per axis and DEG degrees) or ``--pose-drift F,DEG``
(every step's motion off by s.d. F times its length per axis and DEG degrees of turn, integrated
from the true first pose) corrupts the poses the memory sees at evaluation (the buffer's writes
and queries, the memory's and the query's poses, the retrieved-context poses; drawn from
``--pose-noise-seed``, the same for every training seed); actions, context, labels and targets
keep the true poses. The one-step figures are then scored again on the same targets and noise by
every model that reads memory (``{band}_psnr_{model}_noisy_poses``, ``copy_top`` included), with
``revisit_gain_noisy_poses`` (hybrid minus CDiT, 95% interval), ``gain_share_noisy_poses`` (of the
exact-pose gain), ``hit_rate`` / ``hit_rate_noisy_poses`` (revisit frames whose retrieval holds
a frame truly within 1 cell and 45 degrees) and ``pose_error_median`` (cells) /
``heading_error_median_deg`` over all held-out frames; every other key stays exact-pose.
``--train-pose-jitter`` / ``--train-pose-drift`` corrupt the training batches' memory poses the
same way, afresh every epoch. ``python -m benchmarks.maze.robustness`` evaluates saved models
under a series of such settings (the robustness table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from benchmarks.maze.baselines import BASELINES, Learner, build_baselines, forward_flops
from benchmarks.maze.evaluation import BANDS, band_scores, band_weights, evaluate, memory_report
from benchmarks.maze.noise import PoseNoise, corrupt, noise_flag
from benchmarks.maze.protocol import Data, MemorySettings, settings_from
from benchmarks.maze.report import print_tables, rollout_figure
from benchmarks.maze.stats import bootstrap_interval, headline_intervals, mean_tables
from benchmarks.maze.training import (
    HeldOutBatch,
    architecture,
    build_models,
    train,
    train_pose_noise,
)
from benchmarks.maze.worlds import (
    SPLITS,
    Episode,
    check_training_dataset,
    held_out_dataset,
    load_episodes,
)
from benchmarks.side_by_side import Diffusion, format_table

__all__ = [
    "SUMMARY_KEYS",
    "eval_pose_noise",
    "held_out_episodes",
    "load_models",
    "main",
    "noisy_data",
    "parse_args",
    "run",
    "save_models",
    "save_weights",
    "weights_path",
]

SUMMARY_KEYS = (
    "revisit_psnr_cdit",
    "revisit_psnr_hybrid",
    "revisit_psnr_hybrid_no_memory",
    "novel_psnr_cdit",
    "novel_psnr_hybrid",
    "rollout_revisit_psnr_cdit",
    "rollout_revisit_psnr_hybrid",
    "revisit_eps_mse_ratio",
    "revisit_targets",
    "novel_targets",
    "seconds",
    "revisit_psnr_ctx_memory",
    "revisit_psnr_ctx_memory_pose",
    "revisit_psnr_long_context",
    "revisit_psnr_copy_top",
    "revisit_psnr_copy_last",
    "novel_psnr_copy_last",
    "all_psnr_copy_last",
    "middle_psnr_cdit",
    "middle_psnr_hybrid",
    "all_psnr_cdit",
    "all_psnr_hybrid",
    "revisit_gain_ci_low",
    "revisit_gain_ci_high",
    "params_cdit",
    "params_hybrid",
    "outback_psnr_cdit",
    "outback_psnr_hybrid",
)
"""Keys the last printed JSON line always has (the learned baselines' with ``--baselines``, the
default; the middle band's and ``all``'s when the held-out episodes have middle-band frames;
out-and-back's with ``--outback``, the default, when a held-out episode has an out-and-back
window)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.maze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--maze-size", type=int, choices=(9, 11, 13, 15), default=9)
    p.add_argument(
        "--seed", type=int, default=0, help="training mazes (dataset 0-999), model init, noise"
    )
    p.add_argument(
        "--split",
        choices=tuple(SPLITS),
        default=None,
        help="held-out mazes: test (dataset 1000, the reported tables) or validation (dataset "
        "2000, design decisions); default test, validation with --memory-report-only",
    )
    p.add_argument(
        "--seeds",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="run the protocol once per training seed (e.g. 0,1,2) on the same held-out "
        "targets and aggregate (overrides --seed)",
    )
    p.add_argument("--quick", action="store_true", help="a smaller run (about 10 minutes)")
    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the learned baselines (long context, context as memory with and without "
        "poses) beside the CDiT and the hybrid",
    )
    p.add_argument(
        "--baseline-models",
        type=lambda v: [name for name in v.split(",") if name],
        default=list(BASELINES),
        metavar="NAMES",
        help="which learned baselines --baselines trains, comma-separated (default: "
        + ",".join(BASELINES)
        + "); each trains as it would beside the others",
    )
    p.add_argument(
        "--curve-every", type=int, default=250, help="steps between held-out loss evaluations"
    )
    p.add_argument("--curve-samples", type=int, default=64, help="held-out samples of the curve")
    p.add_argument("--bootstrap-draws", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", type=Path, default=None, help="write summary.json and the figure")
    p.add_argument("--figure", type=Path, default=None, help="also write the figure here")
    p.add_argument("--cache-dir", type=Path, default=None, help="episode cache folder")
    p.add_argument("--workers", type=int, default=2, help="episode generation processes")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--train-episodes", type=int, default=None, help="default 16 (quick 8)")
    p.add_argument("--eval-episodes", type=int, default=None, help="default 6 (quick 3)")
    p.add_argument("--env-steps", type=int, default=1000, help="environment steps an episode")
    p.add_argument("--stride", type=int, default=4, help="environment steps between frames")
    p.add_argument("--size", type=int, default=32, help="frame side in pixels")
    p.add_argument("--context", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="default 4000 (quick 400)")
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="CDiT-only steps before side-by-side training; default 2000 (quick 300)",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--memory-lr", type=float, default=10.0, help="memory lr / --lr")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--withhold", type=float, default=0.3, help="share of samples without memory")
    p.add_argument(
        "--tie-backbone",
        action="store_true",
        help="the hybrid's CDiT weights follow the CDiT's (copied after every step, frozen in "
        "the hybrid); only the memory branch learns from the hybrid's loss",
    )
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--memory-patch-size", type=int, default=None, help="default: --patch-size")
    p.add_argument(
        "--memory-layers",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="default: every layer of the second half",
    )
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument(
        "--capacity", type=int, default=250, help="memory buffer capacity (250: a whole episode)"
    )
    p.add_argument("--write-policy", choices=("lru", "coverage"), default="lru")
    p.add_argument("--memory-time-embedding", action="store_true", help="embed memory ages")
    p.add_argument("--memory-pose-encoding", choices=("frame", "rays"), default="rays")
    p.add_argument("--camera-fov", type=float, default=80.0, help="degrees (Memory Maze's is 80)")
    p.add_argument(
        "--memory-ray-alignment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bias memory attention to tokens whose view rays match the query's",
    )
    p.add_argument(
        "--route-inactive",
        action="store_true",
        help="at evaluation, samples whose memory is inactive are predicted by the CDiT trained "
        "beside the hybrid (hybrid_cdit.routed_forward), the rest by the hybrid",
    )
    p.add_argument("--retrieval", choices=("pose", "distance", "fov"), default="pose")
    p.add_argument("--threshold", type=float, default=0.5, help="similarity threshold")
    p.add_argument("--scale", type=float, default=2.0, help="retrieval distance scale, cells")
    p.add_argument(
        "--prediction",
        choices=("eps", "v"),
        default="v",
        help="what the networks predict (the DDPM loss's target); see side_by_side.Diffusion",
    )
    p.add_argument("--ddim-steps", type=int, default=25)
    p.add_argument(
        "--memory-guidance",
        type=float,
        default=1.0,
        metavar="W",
        help="sample the hybrid with memory guidance W: f(no memory) + W (f(memory) - "
        "f(no memory)) where memory is active (hybrid_cdit.memory_guided_forward); 1: none",
    )
    p.add_argument("--eval-t", type=lambda s: [int(v) for v in s.split(",")], default=None)
    p.add_argument("--max-revisit-targets", type=int, default=None, help="default 320 (quick 96)")
    p.add_argument("--rollout-length", type=int, default=16)
    p.add_argument("--rollout-min-start", type=int, default=60)
    p.add_argument("--rollouts-per-episode", type=int, default=2)
    p.add_argument(
        "--long-rollouts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also roll out through returns after long absences with small buffers per policy",
    )
    p.add_argument("--long-gap", type=int, default=75, help="frames since the view was last seen")
    p.add_argument("--long-capacity", type=int, default=50, help="buffer of the policy rollouts")
    p.add_argument("--long-min-start", type=int, default=100, help="earliest long rollout frame")
    p.add_argument(
        "--outback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also roll out out-and-back windows with memory holding only generated frames",
    )
    p.add_argument("--outback-length", type=int, default=32, help="frames of an out-and-back")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument(
        "--pose-jitter",
        type=noise_flag("jitter", "--pose-jitter"),
        default=None,
        metavar="XY,DEG",
        help="also evaluate one step with the memory's poses off by i.i.d. Gaussian noise per "
        "frame: s.d. XY cells per axis, DEG degrees of heading (benchmarks/maze/noise.py)",
    )
    noise.add_argument(
        "--pose-drift",
        type=noise_flag("drift", "--pose-drift"),
        default=None,
        metavar="F,DEG",
        help="also evaluate one step with the memory's poses dead-reckoned from noisy steps: "
        "s.d. F times each step's length per axis, DEG degrees on each turn",
    )
    p.add_argument(
        "--pose-noise-seed",
        type=int,
        default=0,
        help="seed of the evaluation's pose noise (the same for every training seed)",
    )
    train_noise = p.add_mutually_exclusive_group()
    train_noise.add_argument(
        "--train-pose-jitter",
        type=noise_flag("jitter", "--train-pose-jitter"),
        default=None,
        metavar="XY,DEG",
        help="train with the memory's poses jittered (as --pose-jitter), afresh every epoch",
    )
    train_noise.add_argument(
        "--train-pose-drift",
        type=noise_flag("drift", "--train-pose-drift"),
        default=None,
        metavar="F,DEG",
        help="train with the memory's poses drifting (as --pose-drift), afresh every epoch",
    )
    p.add_argument("--log-every", type=int, default=100)
    saved = p.add_mutually_exclusive_group()
    saved.add_argument(
        "--models-from",
        default=None,
        help="evaluate the models a run with --out saved (its models/seed{N}/ folders) "
        "instead of training them",
    )
    saved.add_argument(
        "--init-from",
        default=None,
        help="start every learned model from the weights a run with --out saved (its "
        "models/seed{N}/ folders) and train --steps more side by side, without pretraining "
        "(a longer run, or a fine-tune with --train-pose-jitter / --train-pose-drift)",
    )
    p.add_argument(
        "--baselines-only",
        action="store_true",
        help="with --models-from: train only the learned baselines (after the same CDiT "
        "pretraining, on the same batches and noise as beside the CDiT and the hybrid) and "
        "evaluate them beside the saved CDiT and hybrid",
    )
    p.add_argument(
        "--memory-report-only",
        action="store_true",
        help="only the retrieval and informativeness report on the held-out episodes (no training)",
    )
    args = p.parse_args(argv)
    if not (math.isfinite(args.memory_guidance) and args.memory_guidance >= 0):
        p.error(f"--memory-guidance must be a finite number >= 0, got {args.memory_guidance}")
    unknown = sorted(set(args.baseline_models) - set(BASELINES))
    if unknown or not args.baseline_models:
        p.error(
            f"--baseline-models must name some of {', '.join(BASELINES)}, "
            f"got {','.join(args.baseline_models)!r}"
        )
    if args.baselines_only and (args.models_from is None or not args.baselines):
        p.error(
            "--baselines-only needs --models-from and --baselines, got "
            f"--models-from {args.models_from} and --baselines {args.baselines}"
        )
    if args.route_inactive and args.memory_guidance != 1.0:
        p.error(f"--route-inactive needs --memory-guidance 1, got {args.memory_guidance}")
    try:
        for seed in args.seeds or [args.seed]:
            check_training_dataset(seed)
    except ValueError as err:
        p.error(str(err))
    if args.seeds:
        args.seed = args.seeds[0]
    if args.split is None:
        args.split = "validation" if args.memory_report_only else "test"
    quick = args.quick
    defaults = {
        "train_episodes": 8 if quick else 16,
        "eval_episodes": 3 if quick else 6,
        "steps": 400 if quick else 4000,
        "pretrain_steps": 300 if quick else 2000,
        "max_revisit_targets": 96 if quick else 320,
        "eval_t": [100, 300, 500, 700],
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (episode generation), in seconds."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(
    args: argparse.Namespace,
    train_episodes: Sequence[Episode] | None = None,
    eval_episodes: Sequence[Episode] | None = None,
) -> dict[str, object]:
    """The whole protocol: train, evaluate, print the tables, write the figure; return the
    summary (the JSON ``main`` prints).

    Args:
        args: from :func:`parse_args`.
        train_episodes: training episodes of any world (images and poses); None loads Memory
            Maze's of dataset ``--seed`` (of each of ``--seeds``: with episodes given, every
            training seed trains on them).
        eval_episodes: held-out episodes; None loads Memory Maze's of ``--split``.

    The learning curves' held-out loss is measured on ``eval_episodes`` when they are given,
    else on the validation mazes (they decide how long to train; the test mazes decide
    nothing).
    """
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    curve_episodes = eval_episodes
    if eval_episodes is None:
        eval_episodes = held_out_episodes(args)
        curve_episodes = eval_episodes
        if args.split == "test" and not args.memory_report_only:
            # learning curves decide how long to train: validation mazes, never the test ones
            curve_episodes = load_episodes(
                args.maze_size, held_out_dataset("validation"), args.eval_episodes,
                args.env_steps, cache_dir=args.cache_dir, workers=args.workers,
            )  # fmt: skip
    assert curve_episodes is not None
    if args.memory_report_only:
        report = memory_report(Data(eval_episodes, args.stride, args.size, settings), settings)
        print(
            format_table(
                ["memory report (held-out revisit targets)", "value"], list(report.items())
            )
        )
        return {
            **report,
            **vars(settings),
            "split": args.split,
            "seconds": round(time.perf_counter() - start, 1),
        }
    data_seconds = time.perf_counter() - start
    eval_data = Data(eval_episodes, args.stride, args.size, settings)
    noisy_eval = noisy_data(eval_data, eval_pose_noise(args), args.pose_noise_seed, settings)
    curve_data = Data(curve_episodes, args.stride, args.size, settings)
    seeds = args.seeds or [args.seed]
    runs: list[dict[str, object]] = []
    for seed in seeds:
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None})
        episodes = train_episodes
        if episodes is None:
            loading = time.perf_counter()
            episodes = load_episodes(
                args.maze_size, seed, args.train_episodes, args.env_steps,
                cache_dir=args.cache_dir, workers=args.workers,
            )  # fmt: skip
            data_seconds += time.perf_counter() - loading
        if len(seeds) > 1:
            print(f"[seed {seed}] training seed {len(runs) + 1} of {len(seeds)}", flush=True)
        train_data = Data(episodes, args.stride, args.size, settings)
        runs.append(run_seed(seed_args, train_data, eval_data, settings, curve_data, noisy_eval))
    result = runs[0] if len(runs) == 1 else aggregate(runs, eval_data, settings)
    targets = cast(dict[str, object], result.pop("_targets"))
    result.update(intervals(targets, eval_data, args.bootstrap_draws))
    if "_outback" in result:
        outback = cast(dict[str, object], result.pop("_outback"))
        result.update(outback_intervals(outback, args.bootstrap_draws))
    figure = result.pop("_figure")
    result.update(
        pose_noise=_noise_label(eval_pose_noise(args)),
        pose_noise_seed=args.pose_noise_seed,
        train_pose_noise=_noise_label(train_pose_noise(args)),
    )
    print_tables(result)
    paths = []
    if args.out is not None:
        paths.append(Path(args.out) / "memory_maze_rollout.png")
    if args.figure is not None:
        paths.append(Path(args.figure))
    truth, gen_cdit, gen_hybrid, revisit = cast(tuple[Tensor, Tensor, Tensor, Tensor], figure)
    for path in paths:
        rollout_figure(truth, gen_cdit, gen_hybrid, revisit, path)
    summary: dict[str, object] = {key: result[key] for key in SUMMARY_KEYS if key in result}
    summary.update({k: v for k, v in result.items() if k not in summary})
    summary.update(
        maze_size=args.maze_size,
        seed=args.seed if len(seeds) == 1 else seeds,
        split=args.split,
        quick=args.quick,
        steps=args.steps,
        pretrain_steps=0 if args.init_from is not None else args.pretrain_steps,
        init_from=args.init_from,
        batch=args.batch,
        lr=args.lr,
        prediction=args.prediction,
        memory_lr=args.lr * args.memory_lr,
        withhold=args.withhold,
        tie_backbone=args.tie_backbone,
        hidden=args.hidden,
        depth=args.depth,
        patch_size=args.patch_size,
        memory_patch_size=args.memory_patch_size or args.patch_size,
        memory_time_embedding=args.memory_time_embedding,
        memory_pose_encoding=args.memory_pose_encoding,
        camera_fov=args.camera_fov,
        memory_ray_alignment=args.memory_ray_alignment,
        route_inactive=args.route_inactive,
        retrieval=settings.strategy,
        top_k=settings.top_k,
        threshold=settings.threshold,
        scale=settings.scale,
        capacity=settings.capacity,
        write_policy=settings.write_policy,
        memory_guidance=settings.guidance,
        threads=args.threads,
        data_seconds=round(data_seconds, 1),
        cpu_seconds=round(_cpu_seconds() - cpu_start, 1),
        seconds=round(time.perf_counter() - start, 1),
    )
    if args.out is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_seed(
    args: argparse.Namespace,
    train_data: Data,
    eval_data: Data,
    settings: MemorySettings,
    curve_data: Data | None = None,
    noisy_eval: Data | None = None,
) -> dict[str, object]:
    """One training seed: build, train and evaluate every model (one step also with
    ``noisy_eval``'s memory poses, if given); the evaluation's result plus ``memory_layers``,
    ``train_seconds``, ``curve``, ``params_{name}`` and ``flops_{name}``."""
    diff = Diffusion(prediction=args.prediction)
    cdit, hybrid = build_models(args)
    baselines = build_baselines(args, architecture(args)) if args.baselines else []
    print(
        f"{train_data.frames.shape[0]} training / {eval_data.frames.shape[0]} held-out episodes "
        f"of {train_data.length} frames ({args.size}x{args.size}, every {args.stride} steps); "
        f"CDiT {sum(p.numel() for p in cdit.parameters()):,} params, memory branch "
        f"{sum(p.numel() for p in hybrid.memory_parameters()):,} params in layers "
        f"{hybrid.memory_layers}, memory_patch_size {hybrid.memory_patch_size}, retrieval "
        f"{settings.strategy!r} k={settings.top_k} threshold {settings.threshold} scale "
        f"{settings.scale} capacity {settings.capacity} write policy {settings.write_policy!r}; "
        f"learned baselines {[b.name for b in baselines]}",
        flush=True,
    )
    curve = eval_data if curve_data is None else curve_data
    held_out = HeldOutBatch.draw(curve, args.curve_samples, diff, settings, seed=10_000)
    learners = [Learner("cdit", cdit, "recent"), Learner("hybrid", hybrid, "memory"), *baselines]
    if args.models_from is not None and not args.baselines_only:
        load_models(Path(args.models_from), args.seed, learners)
        info: dict[str, object] = {"train_seconds": 0.0, "curve": []}
    else:
        if args.init_from is not None:
            load_models(Path(args.init_from), args.seed, learners)
        info = train(
            args, train_data, cdit, hybrid, diff, settings, baselines, held_out,
            initialised=args.init_from is not None, train_core=not args.baselines_only,
        )  # fmt: skip
        if args.baselines_only:
            load_models(Path(args.models_from), args.seed, learners[:2])
        if args.out is not None:
            save_models(Path(args.out), args.seed, learners)
    result = evaluate(args, eval_data, cdit, hybrid, diff, settings, baselines, noisy_eval)
    params = {x.name: sum(p.numel() for p in x.model.parameters()) for x in learners}
    for learner in learners:
        result[f"params_{learner.name}"] = params[learner.name]
        result[f"flops_{learner.name}"] = forward_flops(learner, held_out.batch)
    if args.route_inactive:  # the routed hybrid holds both networks; one runs per sample
        result["params_hybrid_routed"] = params["hybrid"] + params["cdit"]
    result["memory_layers"] = list(hybrid.memory_layers)
    result["train_seconds"] = round(float(info["train_seconds"]), 1)  # type: ignore[arg-type]
    result["curve"] = info["curve"]
    return result


def weights_path(folder: Path, seed: int, name: str) -> Path:
    """Where a run folder keeps the weights of model ``name`` of training seed ``seed``:
    ``folder/models/seed{seed}/{name}.safetensors``."""
    return folder / "models" / f"seed{seed}" / f"{name}.safetensors"


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Write ``module``'s state dict to the safetensors file ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def save_models(out: Path, seed: int, learners: Sequence[Learner]) -> None:
    """Write each learner's weights to ``out/models/seed{seed}/{name}.safetensors``."""
    for learner in learners:
        save_weights(learner.model, weights_path(out, seed, learner.name))


def load_models(folder: Path, seed: int, learners: Sequence[Learner]) -> None:
    """Load what :func:`save_models` wrote for ``seed`` into ``learners`` (strict)."""
    for learner in learners:
        path = weights_path(folder, seed, learner.name)
        if not path.is_file():
            raise FileNotFoundError(f"--models-from: no weights for {learner.name!r} at {path}")
        learner.model.load_state_dict(load_file(str(path)), strict=True)


def intervals(targets: dict[str, object], data: Data, draws: int) -> dict[str, float]:
    """Bootstrap intervals over held-out episodes of the headline differences (one-step PSNR
    per target, ``targets`` from :func:`~benchmarks.maze.evaluation.evaluate`). With scores of
    corrupted memory poses, also ``revisit_gain_noisy_poses`` (hybrid minus CDiT on revisits)
    with ``_ci_low`` / ``_ci_high``, and ``gain_share_noisy_poses``, its ratio to the
    exact-pose gain."""
    episode = cast(Tensor, targets["episode"])
    target = cast(Tensor, targets["target"])
    psnr = cast(dict[str, Tensor], targets["psnr"])
    bands = {band: getattr(data, band)[episode, target] for band in BANDS}
    out = headline_intervals(
        psnr, episode, bands, band_weights(data), data.frames.shape[0], draws=draws, seed=0
    )
    noisy = "revisit_psnr_gain_hybrid_noisy_poses_vs_cdit"
    if noisy in out:
        out["revisit_gain_noisy_poses"] = out[noisy]
        out["revisit_gain_noisy_poses_ci_low"] = out[f"{noisy}_ci_low"]
        out["revisit_gain_noisy_poses_ci_high"] = out[f"{noisy}_ci_high"]
        exact = out["revisit_psnr_gain_hybrid_vs_cdit"]
        out["gain_share_noisy_poses"] = out[noisy] / exact if exact != 0 else float("nan")
    return out


def outback_intervals(outback: dict[str, object], draws: int) -> dict[str, float]:
    """The hybrid minus the CDiT on the out-and-back return frames, with 95% bootstrap
    intervals over windows (each window is a different held-out episode):
    ``outback_self_gain`` (self-consistency, against the model's own first visit) and
    ``outback_gain`` (against the truth), each with ``_ci_low`` / ``_ci_high``.

    Args:
        outback: ``_outback`` of :func:`~benchmarks.maze.evaluation.outback_rollouts` (or its
            seed average).
        draws: bootstrap draws.
    """
    window = cast(Tensor, outback["window"])
    windows = cast(int, outback["windows"])
    out: dict[str, float] = {}
    for key, against in (("outback_self_gain", "self"), ("outback_gain", "truth")):
        diff = cast(Tensor, outback[f"{against}_hybrid"]) - cast(Tensor, outback[f"{against}_cdit"])
        low, high = bootstrap_interval(diff, window, windows, draws=draws, seed=0)
        out[key] = float(diff.mean())
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
    return out


def held_out_episodes(args: argparse.Namespace) -> list[Episode]:
    """The held-out Memory Maze episodes of ``--split`` (loaded from the cache or generated)."""
    return load_episodes(
        args.maze_size, held_out_dataset(args.split), args.eval_episodes, args.env_steps,
        cache_dir=args.cache_dir, workers=args.workers,
    )  # fmt: skip


def eval_pose_noise(args: argparse.Namespace) -> PoseNoise | None:
    """The noise of ``--pose-jitter`` / ``--pose-drift`` (None without either)."""
    noise: PoseNoise | None = args.pose_jitter or args.pose_drift
    return noise


def noisy_data(
    data: Data, noise: PoseNoise | None, seed: int, settings: MemorySettings
) -> Data | None:
    """``data`` whose memory sees its poses corrupted by ``noise`` drawn from ``seed`` (None
    without noise)."""
    if noise is None:
        return None
    poses = corrupt(data.poses, noise, torch.Generator().manual_seed(seed))
    return data.with_memory_poses(poses, settings)


def _noise_label(noise: PoseNoise | None) -> str | None:
    return None if noise is None else noise.label()


def aggregate(
    runs: Sequence[dict[str, object]], data: Data, settings: MemorySettings
) -> dict[str, object]:
    """The summary of several training seeds on the same held-out targets: every number the
    mean over seeds (``{key}_seeds``: the per-seed values of the one-step band scores; the
    ``eps_mse`` table averaged cell by cell; ``informativeness``, which depends on the held-out
    data and retrieval only, the first seed's), the
    one-step band scores recomputed from the seed-averaged per-target scores (so intervals
    are over episodes of the seed-averaged models), the rollout figure of the first seed."""
    first = runs[0]
    out: dict[str, object] = {}
    for key, value in first.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [float(cast(float, r[key])) for r in runs if key in r]
            out[key] = sum(values) / len(values)
            if key.split("_")[0] in (*BANDS, "all"):
                out[f"{key}_seeds"] = values
        elif key not in ("_targets", "_outback"):
            out[key] = value
    if "_outback" in first:
        # the windows depend on the held-out data only: the same for every seed
        outback = [cast(dict[str, object], r["_outback"]) for r in runs]
        out["_outback"] = {
            key: torch.stack([cast(Tensor, o[key]) for o in outback]).mean(0)
            if key.startswith(("self_", "truth_")) else value
            for key, value in outback[0].items()
        }  # fmt: skip
    out["curve"] = [r["curve"] for r in runs]
    out["eps_mse"] = mean_tables([cast(dict[str, dict[str, float]], r["eps_mse"]) for r in runs])
    targets = [cast(dict[str, object], r["_targets"]) for r in runs]
    episode = cast(Tensor, targets[0]["episode"])
    target = cast(Tensor, targets[0]["target"])
    scores: dict[str, dict[str, Tensor]] = {}
    for metric in ("psnr", "ssim"):
        per = [cast(dict[str, Tensor], t[metric]) for t in targets]
        scores[metric] = {name: torch.stack([p[name] for p in per]).mean(0) for name in per[0]}
    out.update(band_scores(data, episode, target, scores, settings.context))
    out["_targets"] = {"episode": episode, "target": target, **scores}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the last line printed is the JSON summary."""
    summary = run(parse_args(argv))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
