"""``python -m benchmarks.maze.robustness``: what the hybrid's memory gain is worth when the poses
the memory sees are corrupted, on models a run saved.

    python -m benchmarks.maze --seeds 0,1,2 --out runs/mm3              # trains, saves models
    python -m benchmarks.maze.robustness --models-from runs/mm3 --seeds 0,1,2

The saved models (``DIR/models/seed{N}/{name}.safetensors``, written by ``--out``) were trained
with exact poses unless their run said otherwise (``--train-pose-jitter`` /
``--train-pose-drift``). At evaluation only what the memory sees is corrupted (the buffer's writes
and queries, the memory's and the query's poses; ``benchmarks/maze/noise.py``); actions and
context keep the true poses, so the CDiT's figures do not change and are computed once per seed.
Rows: exact poses, then each of ``--settings`` (default: jitter 0.1 cell / 3 deg, 0.25 / 7.5,
0.5 / 15; drift 2% / 0.5 deg, 5% / 1, 10% / 2), every row on the same held-out targets and the
same DDIM noise as the run's one-step evaluation (so the exact row repeats its
``revisit_psnr_hybrid``), the pose noise drawn from ``--pose-noise-seed``, the same for every
training seed and model. Per row: the median position error (cells) and heading error (degrees)
of the memory's poses over every held-out frame; on revisit targets, the median error of each
retrieved slot's heading (what ray alignment reads) and position relative to the query, and the
share of slots whose pose ``--refine-headings`` or ``--refine-poses`` changed; the hybrid's
revisit gain over the CDiT (dB, seed-averaged per-target PSNR, 95% bootstrap interval over
held-out episodes); its share of the exact-pose gain; the retrieval hit rate (held-out revisit
frames whose retrieval holds a frame truly within 1 cell and 45 degrees); revisit and novel PSNR
of the hybrid and of ``copy_top`` (and of the retrieved-context baselines with ``--baselines``).
The last line printed is one JSON object.

``--pose-uncertainty`` gives the hybrid, in the noisy rows, each slot's nominal relative-pose
standard deviation (:func:`~benchmarks.maze.noise.nominal_std`) as ``MemoryContext.ray_std``
(:func:`hybrid_cdit.memory.ray_angle_std` with ``--view-depth`` cells), which softens ray
alignment per slot.

``--fuse-odometry F,DEG`` gives the memory, in the jitter rows, the jittered poses fused with
odometry (:func:`hybrid_cdit.memory.fuse_odometry`): the true steps between frames with
drift-model noise ``F,DEG`` (``0,0``: exact odometry), each source weighed by its nominal
standard deviation. The fusion is causal: for the target frame ``t``, retrieval, the slots' and
the query's poses come from the poses observed up to frame ``t - 1`` and the odometry
(:func:`~benchmarks.maze.noise.causal_fused`, :func:`per_frame_poses`). A user with a localiser
and wheel odometry has both; the model's actions stay exact either way.

``--refine-headings CONFIDENCE`` fits each slot's yaw to its frame against the sample's last
context frame (:func:`hybrid_cdit.memory.refine_headings`, the reference pose the memory's query
pose composed with the inverse of the true action) where the fit's confidence is at least
``CONFIDENCE``, in every row, the exact one included. ``--true-slot-poses heading`` instead
gives every retrieved slot its true heading relative to the query (positions as the memory sees
them), ``--true-slot-poses pose`` its whole true relative pose: with retrieval still on the noisy
poses, what a perfect heading fit, or a perfect pose fit, would leave of the gain.

``--refine-poses`` corrects each slot's whole pose against the sample's last context frame (the
same reference) with the seed's learned :class:`hybrid_cdit.memory.SlotPoseRefiner`
(:func:`hybrid_cdit.memory.refine_poses`), in every row, the exact one included, before any
``--refine-headings``; ``python -m benchmarks.maze.pose_refiner`` trains it on the seed's own
training episodes and saves it beside the models. ``--min-correction XY,DEG`` applies a slot's
correction only where it moves the slot by at least ``XY`` cells or turns it by at least ``DEG``
degrees (``refine_poses``' ``min_shift`` and ``min_turn``).

``--close-loops PASSES`` closes loops in the drift rows (:mod:`benchmarks.maze.loops`): the
seed's refiner measures every retrieved pair of frames, and a pose graph
(:func:`hybrid_cdit.memory.pose_graph`) solves the odometry with those loops at each frame,
causally as ``--fuse-odometry``; ``--loop-std XY,DEG`` is a loop's standard deviation (default
0.1 cell, 2 degrees). With ``--refine-poses`` each slot is then refined as above.

Every other flag is ``python -m benchmarks.maze``'s: the architecture, data and memory flags must
be those of the run that saved the models (the defaults for the documented run); ``--split``
(test by default), ``--seeds``, ``--max-revisit-targets``, ``--ddim-steps`` and
``--bootstrap-draws`` apply as there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.maze.baselines import Learner, build_baselines
from benchmarks.maze.evaluation import (
    MEMORY_KINDS,
    NOISY_POSES,
    MemoryTransform,
    eval_targets,
    noisy_pose_scores,
    one_step_noise,
    one_step_samples,
    pose_noise_figures,
)
from benchmarks.maze.loops import loop_closed
from benchmarks.maze.noise import PoseNoise, causal_fused, noise_flag, nominal_std, with_ray_std
from benchmarks.maze.pipeline import held_out_episodes, load_models, noisy_data
from benchmarks.maze.pipeline import parse_args as pipeline_args
from benchmarks.maze.pose_refiner import load_refiner
from benchmarks.maze.protocol import (
    Data,
    MemorySchedule,
    MemorySettings,
    batch_for,
    replay_memory,
    settings_from,
)
from benchmarks.maze.stats import bootstrap_interval
from benchmarks.maze.training import architecture, build_models
from benchmarks.maze.worlds import Episode
from benchmarks.side_by_side import Diffusion, format_table
from hybrid_cdit import MemoryContext
from hybrid_cdit.memory import (
    SlotPoseRefiner,
    compose_pose,
    refine_headings,
    refine_poses,
    relative_pose,
    wrap_angle,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "add_settings_flag",
    "heading_refinement",
    "heading_transform",
    "last_context_frame",
    "main",
    "parse_args",
    "parse_setting",
    "per_frame_poses",
    "pose_refinement",
    "run",
    "settings_rows",
    "shrink_offsets",
    "slot_pose_errors",
    "true_slot_poses",
    "uncertainty",
]

Row = tuple[str, PoseNoise | None, Data, MemoryTransform | None]
"""A table row: its label, its noise model (None: exact), the data whose memory it scores, and
a memory transform that gives each sample's slots their poses (None: the data's)."""

DEFAULT_SETTINGS = (
    PoseNoise("jitter", 0.1, 3.0),
    PoseNoise("jitter", 0.25, 7.5),
    PoseNoise("jitter", 0.5, 15.0),
    PoseNoise("drift", 0.02, 0.5),
    PoseNoise("drift", 0.05, 1.0),
    PoseNoise("drift", 0.1, 2.0),
)
"""The rows of the robustness table after the exact one."""


def parse_setting(text: str) -> PoseNoise:
    """``jitter:XY,DEG`` or ``drift:F,DEG`` (an ``argparse`` type of ``--settings``)."""
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("jitter", "drift"):
        raise argparse.ArgumentTypeError(
            f"--settings expects jitter:XY,DEG or drift:F,DEG, got {text!r}"
        )
    try:
        return PoseNoise.parse(value, kind, f"--settings {kind}:")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_settings_flag(parser: argparse.ArgumentParser) -> None:
    """``--settings``: the noise rows of a command that evaluates several pose corruptions."""
    parser.add_argument(
        "--settings",
        nargs="+",
        type=parse_setting,
        default=None,
        metavar="KIND:A,DEG",
        help="noise rows, e.g. jitter:0.25,7.5 drift:0.05,1 (default: the six of the table)",
    )


def settings_rows(
    parser: argparse.ArgumentParser, own: argparse.Namespace, args: argparse.Namespace
) -> list[PoseNoise]:
    """The rows of ``--settings`` (``own``; :data:`DEFAULT_SETTINGS` without it); exits through
    ``parser`` when the benchmark's own flags (``args``) ask for a single noise instead."""
    if args.pose_jitter is not None or args.pose_drift is not None:
        parser.error("use --settings for the noise rows, not --pose-jitter / --pose-drift")
    return list(DEFAULT_SETTINGS) if own.settings is None else list(own.settings)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """This command's flags, on top of ``python -m benchmarks.maze``'s (``--baselines`` off
    unless given)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.maze.robustness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # abbreviations of the benchmark's flags stay the benchmark's
    )
    p.add_argument("--models-from", required=True, help="the --out folder of a benchmark run")
    add_settings_flag(p)
    p.add_argument(
        "--pose-uncertainty",
        action="store_true",
        help="give the hybrid each slot's nominal pose std (MemoryContext.ray_std)",
    )
    p.add_argument(
        "--fuse-odometry",
        type=noise_flag("drift", "--fuse-odometry"),
        default=None,
        metavar="F,DEG",
        help="in the jitter rows, fuse the memory's poses with odometry of drift-model noise "
        "F,DEG (hybrid_cdit.memory.fuse_odometry)",
    )
    p.add_argument(
        "--close-loops",
        type=int,
        default=None,
        metavar="PASSES",
        help="in the drift rows, close loops: the seed's learned refiner measures every "
        "retrieved pair, and a pose graph (hybrid_cdit.memory.pose_graph) solves the odometry "
        "with them at each frame, PASSES rounds (benchmarks.maze.loops)",
    )
    p.add_argument(
        "--loop-std",
        type=noise_flag("jitter", "--loop-std"),
        default=None,
        metavar="XY,DEG",
        help="with --close-loops, the standard deviation of a measured loop (default 0.1,2)",
    )
    p.add_argument(
        "--refine-headings",
        type=float,
        default=None,
        metavar="CONFIDENCE",
        help="fit each slot's yaw to its frame against the last context frame "
        "(hybrid_cdit.memory.refine_headings) where the fit's confidence is at least CONFIDENCE",
    )
    p.add_argument(
        "--refine-poses",
        action="store_true",
        help="correct each slot's pose against the last context frame with the seed's learned "
        "refiner (hybrid_cdit.memory.refine_poses; trained by python -m "
        "benchmarks.maze.pose_refiner)",
    )
    p.add_argument(
        "--min-correction",
        type=noise_flag("jitter", "--min-correction"),
        default=None,
        metavar="XY,DEG",
        help="with --refine-poses, apply a slot's correction only where it moves the slot by at "
        "least XY cells or turns it by at least DEG degrees",
    )
    p.add_argument(
        "--shrink-offsets",
        type=float,
        default=None,
        metavar="F",
        help="move each slot's position towards the query's: offset times F, in [0, 1]",
    )
    p.add_argument(
        "--true-slot-poses",
        choices=("heading", "pose"),
        default=None,
        help="give every retrieved slot its true heading (or whole pose) relative to the query: "
        "what a perfect fit would leave of the gain",
    )
    p.add_argument(
        "--view-depth",
        type=float,
        default=1.0,
        help="typical distance to what the camera sees, cells (ray_angle_std's depth)",
    )
    own, rest = p.parse_known_args(argv)
    args = pipeline_args(["--no-baselines", *rest, "--models-from", own.models_from])
    args.settings = settings_rows(p, own, args)
    if own.fuse_odometry is not None and any(s.kind != "jitter" for s in args.settings):
        p.error("--fuse-odometry applies to jitter rows only (drift poses are odometry already)")
    args.fuse_odometry = own.fuse_odometry
    if own.close_loops is not None:
        if own.close_loops < 1:
            p.error(f"--close-loops must be >= 1, got {own.close_loops}")
        if any(s.kind != "drift" for s in args.settings):
            p.error("--close-loops applies to drift rows only (loops correct odometry)")
    elif own.loop_std is not None:
        p.error("--loop-std needs --close-loops")
    args.close_loops = own.close_loops
    args.loop_std = own.loop_std or PoseNoise("jitter", 0.1, 2.0)
    args.pose_uncertainty = own.pose_uncertainty
    if own.refine_headings is not None and not 1 <= own.refine_headings < float("inf"):
        p.error(f"--refine-headings must be a finite number >= 1, got {own.refine_headings}")
    args.refine_headings = own.refine_headings
    if own.true_slot_poses is not None and own.refine_headings is not None:
        p.error("--true-slot-poses and --refine-headings exclude each other")
    args.true_slot_poses = own.true_slot_poses
    if own.true_slot_poses is not None and own.refine_poses:
        p.error("--true-slot-poses and --refine-poses exclude each other")
    args.refine_poses = own.refine_poses
    if own.min_correction is not None and not own.refine_poses:
        p.error("--min-correction needs --refine-poses")
    args.min_correction = own.min_correction
    if own.shrink_offsets is not None and not 0 <= own.shrink_offsets <= 1:
        p.error(f"--shrink-offsets must be in [0, 1], got {own.shrink_offsets}")
    args.shrink_offsets = own.shrink_offsets
    if not own.view_depth > 0 or own.view_depth == float("inf"):
        p.error(f"--view-depth must be a finite number > 0, got {own.view_depth}")
    args.view_depth = own.view_depth
    return args


def uncertainty(noise: PoseNoise, memory_poses: Tensor, depth: float) -> MemoryTransform:
    """A memory transform that sets each slot's nominal pose std under ``noise``
    (:func:`~benchmarks.maze.noise.nominal_std` from the poses the memory sees,
    ``(N, T, 3)``)."""

    def transform(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        if memory.steps is None:
            raise ValueError("memory.steps must be given to compute the slots' pose std, got None")
        position, heading = nominal_std(noise, memory_poses, episode, memory.steps, target)
        return with_ray_std(memory, position, heading, depth)

    return transform


def per_frame_poses(
    data: Data, per_time: Tensor, settings: MemorySettings
) -> tuple[Data, MemoryTransform]:
    """``data`` whose memory, at each frame ``t``, sees the poses ``per_time[:, t]`` (``(N, T,
    T, 3)``, row ``t`` a whole trajectory as known at frame ``t``): the retrieval of frame ``t``
    replayed on row ``t``, the query pose row ``t``'s frame ``t`` (also the copy's
    ``memory_poses``), and a memory transform that gives each slot its pose in the target's
    row."""
    n, t_len = data.poses.shape[:2]
    if per_time.shape != (n, t_len, t_len, 3):
        raise ValueError(
            f"per_time must have shape {(n, t_len, t_len, 3)}, got {tuple(per_time.shape)}"
        )
    frames = torch.arange(t_len)
    rows = [replay_memory(per_time[:, t, : t + 1], settings) for t in range(t_len)]
    schedule = MemorySchedule(
        indices=torch.stack([r.indices[:, t] for t, r in enumerate(rows)], 1),
        scores=torch.stack([r.scores[:, t] for t, r in enumerate(rows)], 1),
        mask=torch.stack([r.mask[:, t] for t, r in enumerate(rows)], 1),
    )
    noisy = data.with_memory_poses(per_time[:, frames, frames], settings, schedule=schedule)

    def transform(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        if memory.steps is None:
            raise ValueError("memory.steps must be given to look up the slots' poses, got None")
        known = per_time[episode[:, None], target[:, None], memory.steps]  # (B, k, 3)
        poses = torch.where(memory.mask[..., None], known.to(memory.poses.dtype), memory.poses)
        return dataclasses.replace(memory, poses=poses)

    return noisy, transform


def chain(*steps: MemoryTransform | None) -> MemoryTransform | None:
    """The memory transforms of ``steps`` (Nones skipped) applied in order; None for none."""
    chosen = [s for s in steps if s is not None]
    if not chosen:
        return None

    def chained(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        for step in chosen:
            memory = step(memory, episode, target)
        return memory

    return chained


def last_context_frame(
    data: Data, memory: MemoryContext, episode: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """The samples' last context frames ``(B, C, H, W)`` and their poses ``(B, 3)`` as the
    memory places them: the memory's query pose composed with the inverse of the true action."""
    poses = data.poses
    action = relative_pose(poses[episode, target], poses[episode, target - 1])
    back = relative_pose(torch.zeros_like(action), action)  # the context frame from the target
    reference_pose = compose_pose(memory.query_pose, back.to(memory.query_pose.dtype))
    return data.frames[episode, target - 1].to(memory.frames.dtype), reference_pose


def heading_refinement(data: Data, min_confidence: float, fov_degrees: float) -> MemoryTransform:
    """A memory transform that fits each slot's yaw against the sample's last context frame
    (:func:`hybrid_cdit.memory.refine_headings`, reference from :func:`last_context_frame`), so
    the fit replaces the error of both absolute poses."""

    def transform(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        reference, reference_pose = last_context_frame(data, memory, episode, target)
        refined, _ = refine_headings(
            memory, reference, reference_pose, math.radians(fov_degrees),
            min_confidence=min_confidence,
        )  # fmt: skip
        return refined

    return transform


def pose_refinement(
    data: Data, refiner: SlotPoseRefiner, min_correction: PoseNoise | None = None
) -> MemoryTransform:
    """A memory transform that corrects each slot's pose against the sample's last context frame
    with a learned refiner (:func:`hybrid_cdit.memory.refine_poses`, reference from
    :func:`last_context_frame`); ``min_correction``'s position (cells) and degrees are its
    ``min_shift`` and ``min_turn`` (None: every correction is applied)."""
    shift = 0.0 if min_correction is None else min_correction.position
    turn = 0.0 if min_correction is None else min_correction.radians

    def transform(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        reference, reference_pose = last_context_frame(data, memory, episode, target)
        return refine_poses(
            memory, reference, reference_pose, refiner, min_shift=shift, min_turn=turn
        )

    return transform


def true_slot_poses(data: Data, part: str) -> MemoryTransform:
    """A memory transform that gives every valid slot its true pose relative to the query, as
    seen from the query pose the memory sees: ``part`` ``"heading"`` replaces the yaw only
    (positions stay as seen), ``"pose"`` the whole pose. Retrieval is left as it was."""
    if part not in ("heading", "pose"):
        raise ValueError(f"part must be 'heading' or 'pose', got {part!r}")

    def transform(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        if memory.steps is None:
            raise ValueError("memory.steps must be given to look up the slots' poses, got None")
        slots = data.poses[episode[:, None], memory.steps]
        true = relative_pose(slots, data.poses[episode, target][:, None]).to(memory.poses.dtype)
        placed = compose_pose(memory.query_pose[:, None], true)
        if part == "heading":
            placed = torch.cat([memory.poses[..., :2], placed[..., 2:]], dim=-1)
        poses = torch.where(memory.mask[..., None], placed, memory.poses)
        return dataclasses.replace(memory, poses=poses)

    return transform


def shrink_offsets(factor: float) -> MemoryTransform:
    """A memory transform that moves each valid slot's position towards the query's, its offset
    times ``factor`` (headings kept)."""

    def transform(memory: MemoryContext, episode: Tensor, target: Tensor) -> MemoryContext:
        query = memory.query_pose[:, None, :2]
        xy = query + factor * (memory.poses[..., :2] - query)
        placed = torch.cat([xy, memory.poses[..., 2:]], dim=-1)
        poses = torch.where(memory.mask[..., None], placed, memory.poses)
        return dataclasses.replace(memory, poses=poses)

    return transform


def heading_transform(
    args: argparse.Namespace,
    data: Data,
    then: MemoryTransform | None = None,
    refiner: SlotPoseRefiner | None = None,
) -> MemoryTransform | None:
    """The slot-pose transform of ``refiner`` (``--refine-poses``), then that of
    ``--refine-headings`` or ``--true-slot-poses``, then that of ``--shrink-offsets``, then
    ``then`` (None when there is none of them)."""
    steps: list[MemoryTransform] = []
    if refiner is not None:
        steps.append(pose_refinement(data, refiner, args.min_correction))
    if args.true_slot_poses is not None:
        steps.append(true_slot_poses(data, args.true_slot_poses))
    elif args.refine_headings is not None:
        steps.append(heading_refinement(data, args.refine_headings, args.camera_fov))
    if args.shrink_offsets is not None:
        steps.append(shrink_offsets(args.shrink_offsets))
    return chain(*steps, then)


def slot_pose_errors(
    data: Data,
    noisy: Data,
    episode: Tensor,
    target: Tensor,
    context: int,
    transform: MemoryTransform | None = None,
    poses: MemoryTransform | None = None,
) -> tuple[float, float, float]:
    """The pose of each valid memory slot relative to the query (what memory reading sees)
    that the memory of ``noisy`` gives samples ``(episode[i], target[i])``, after ``poses``
    (the row's own slot poses, see :data:`Row`) and then ``transform``: the median absolute
    error of its heading in degrees and of its position in cells against the true relative
    pose, and the share of valid slots whose pose ``transform`` changed."""
    batch = batch_for(
        noisy.frames, data.poses, noisy.schedule, episode, target, context,
        memory_poses=noisy.memory_poses,
    )  # fmt: skip
    seen_memory = batch.memory if poses is None else poses(batch.memory, episode, target)
    memory = seen_memory if transform is None else transform(seen_memory, episode, target)
    if memory.steps is None or not bool(memory.mask.any()):
        return float("nan"), float("nan"), float("nan")
    seen = relative_pose(memory.poses.double(), memory.query_pose[:, None].double())
    slots = data.poses[episode[:, None], memory.steps].double()
    true = relative_pose(slots, data.poses[episode, target][:, None].double())
    heading = wrap_angle(seen[..., 2] - true[..., 2]).abs()[memory.mask]
    position = (seen[..., :2] - true[..., :2]).norm(dim=-1)[memory.mask]
    changed = (memory.poses != seen_memory.poses).any(-1)[memory.mask]
    return (
        math.degrees(float(heading.median())),
        float(position.median()),
        float(changed.double().mean()),
    )


def _learners(args: argparse.Namespace) -> list[Learner]:
    """The CDiT, the hybrid and (with ``--baselines``) the baselines that read the memory's
    retrieval, with the saved weights of ``args.seed``, in eval mode."""
    cdit, hybrid = build_models(args)
    learners = [Learner("cdit", cdit, "recent"), Learner("hybrid", hybrid, "memory")]
    if args.baselines:
        chosen = build_baselines(args, architecture(args))
        learners += [b for b in chosen if b.kind in MEMORY_KINDS]
    load_models(Path(args.models_from), args.seed, learners)
    for learner in learners:
        learner.model.eval()
    return learners


def noisy_rows(
    args: argparse.Namespace,
    data: Data,
    settings: MemorySettings,
    refiner: SlotPoseRefiner | None = None,
) -> list[Row]:
    """The exact row and one row per ``--settings`` noise model: the poses as seen, fused with
    odometry (``--fuse-odometry``), or with loops closed by ``refiner`` (``--close-loops``)."""
    rows: list[Row] = [("exact", None, data, None)]
    for noise in args.settings:
        generator = torch.Generator().manual_seed(args.pose_noise_seed)
        if args.close_loops:
            assert refiner is not None
            per_time = loop_closed(
                data.poses, data.frames, noise, generator, refiner, settings,
                passes=args.close_loops, loop_std=args.loop_std,
            )  # fmt: skip
            noisy, closed_slots = per_frame_poses(data, per_time, settings)
            label = f"{noise.label()}, {args.close_loops} passes of loops closed"
            rows.append((label, noise, noisy, closed_slots))
        elif args.fuse_odometry is None:
            seen = noisy_data(data, noise, args.pose_noise_seed, settings)
            assert seen is not None
            rows.append((noise.label(), noise, seen, None))
        else:
            per_time = causal_fused(data.poses, noise, args.fuse_odometry, generator)
            noisy, fused_slots = per_frame_poses(data, per_time, settings)
            odometry = args.fuse_odometry.label().replace("drift", "odometry")
            rows.append((f"{noise.label()} + {odometry}, fused", noise, noisy, fused_slots))
    return rows


def run(
    args: argparse.Namespace, eval_episodes: Sequence[Episode] | None = None
) -> dict[str, object]:
    """Evaluate the saved models of every seed under every row; print the table; return the
    summary (the JSON :func:`main` prints). ``eval_episodes``: held-out episodes of any world
    (None: Memory Maze's of ``--split``)."""
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    if eval_episodes is None:
        eval_episodes = held_out_episodes(args)
    data = Data(eval_episodes, args.stride, args.size, settings)
    all_episode, all_target = eval_targets(
        data, args.max_revisit_targets, torch.Generator().manual_seed(20_000)
    )  # the run's one-step targets; the middle band is left out here
    keep = data.revisit[all_episode, all_target] | data.novel[all_episode, all_target]
    episode, target = all_episode[keep], all_target[keep]
    diff = Diffusion(prediction=args.prediction)
    seeds = args.seeds or [args.seed]
    per_seed: list[dict[str, Tensor]] = []
    first_refiner: SlotPoseRefiner | None = None
    first_rows: list[Row] | None = None
    for seed in seeds:
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None})
        learners = _learners(seed_args)
        noise = one_step_noise(all_episode.shape[0], data.frames.shape[2:], seed + 40_000)[keep]
        common = {"ddim_steps": args.ddim_steps, "seed": seed + 40_000, "noise": noise}
        refiner = None
        if args.refine_poses or args.close_loops:
            refiner = load_refiner(Path(args.models_from), seed, data.frames.shape[2])
        if args.refine_poses and first_refiner is None:
            first_refiner = refiner
        if first_rows is None or args.close_loops:  # loops are measured by the seed's refiner
            rows = noisy_rows(args, data, settings, refiner)
            first_rows = first_rows or rows
        print(f"[robustness] seed {seed}: exact poses, {len(episode)} targets", flush=True)
        refiner = refiner if args.refine_poses else None
        exact_transform = heading_transform(args, data, refiner=refiner)
        psnr = one_step_samples(
            learners, data.frames, data.poses, data.schedule, episode, target, diff, settings,
            copy_names=("copy_top",), memory_transform=exact_transform, **common,
        )["psnr"]  # fmt: skip
        for i, (label, noise_model, noisy, slot_poses) in enumerate(rows[1:], start=1):
            print(f"[robustness] seed {seed}: {label}", flush=True)
            transform: MemoryTransform | None = None
            if args.pose_uncertainty:
                assert noise_model is not None
                transform = uncertainty(noise_model, noisy.memory_poses, args.view_depth)
            transform = chain(
                slot_poses, heading_transform(args, data, then=transform, refiner=refiner)
            )
            scores = noisy_pose_scores(
                learners, noisy, episode, target, diff, settings,
                memory_transform=transform, **common,
            )["psnr"]  # fmt: skip
            psnr.update({f"{name}@{i}": value for name, value in scores.items()})
        per_seed.append(psnr)
    mean = {name: torch.stack([p[name] for p in per_seed]).mean(0) for name in per_seed[0]}
    assert first_rows is not None
    summary = _summary(args, data, first_rows, mean, episode, target, first_refiner)
    summary.update(
        revisit_targets=int(data.revisit[episode, target].sum()),
        novel_targets=int(data.novel[episode, target].sum()),
        seeds=seeds,
        split=args.split,
        models_from=str(args.models_from),
        pose_noise_seed=args.pose_noise_seed,
        pose_uncertainty=args.pose_uncertainty,
        fuse_odometry=None if args.fuse_odometry is None else args.fuse_odometry.label(),
        refine_headings=args.refine_headings,
        true_slot_poses=args.true_slot_poses,
        shrink_offsets=args.shrink_offsets,
        view_depth=args.view_depth,
        seconds=round(time.perf_counter() - start, 1),
    )
    print(robustness_table(summary))
    return summary


def _summary(
    args: argparse.Namespace,
    data: Data,
    rows: Sequence[Row],
    psnr: dict[str, Tensor],
    episode: Tensor,
    target: Tensor,
    refiner: SlotPoseRefiner | None = None,
) -> dict[str, object]:
    """The rows' figures from the seed-averaged per-target PSNR (``{name}@{row}`` for the
    noisy rows); the slot pose errors after ``refiner`` (the first seed's, with
    ``--refine-poses``)."""
    rev = data.revisit[episode, target]
    nov = data.novel[episode, target]
    n_episodes = data.frames.shape[0]
    names = [n for n in psnr if "@" not in n and n != "cdit"]
    out: dict[str, object] = {
        "revisit_psnr_cdit": float(psnr["cdit"][rev].mean()),
        "novel_psnr_cdit": float(psnr["cdit"][nov].mean()),
    }
    table: list[dict[str, object]] = []
    exact_gain = 0.0
    for i, (label, noise, noisy, slot_poses) in enumerate(rows):
        row: dict[str, object] = {"setting": label}
        if noise is not None:
            row.update(kind=noise.kind, position=noise.position, degrees=noise.degrees)
            row.update(pose_noise_figures(data, noisy))
            row["hit_rate"] = row.pop("hit_rate_noisy_poses")
        else:
            figures = pose_noise_figures(data, data)
            row.update(pose_error_median=0.0, heading_error_median_deg=0.0)
            row["hit_rate"] = figures["hit_rate"]
        heading, position, changed = slot_pose_errors(
            data, noisy, episode[rev], target[rev], args.context,
            heading_transform(args, data, refiner=refiner), poses=slot_poses,
        )  # fmt: skip
        row["slot_heading_error_median_deg"] = heading
        row["slot_position_error_median"] = position
        row["slots_refined"] = changed
        scores = {n: psnr[n if i == 0 else f"{n}{NOISY_POSES}@{i}"] for n in names}
        gain = scores["hybrid"] - psnr["cdit"]
        row["revisit_gain"] = float(gain[rev].mean())
        low, high = bootstrap_interval(
            gain[rev], episode[rev], n_episodes, draws=args.bootstrap_draws, seed=0
        )
        row["revisit_gain_ci_low"], row["revisit_gain_ci_high"] = low, high
        if i == 0:
            exact_gain = float(row["revisit_gain"])  # type: ignore[arg-type]
        row["gain_share"] = float(row["revisit_gain"]) / exact_gain if exact_gain else None  # type: ignore[arg-type]
        row["novel_gain"] = float(gain[nov].mean())
        for name, values in scores.items():
            row[f"revisit_psnr_{name}"] = float(values[rev].mean())
            row[f"novel_psnr_{name}"] = float(values[nov].mean())
        table.append(row)
    out["rows"] = table
    return out


def robustness_table(summary: dict[str, object]) -> str:
    """The printed table of a :func:`run` summary."""
    rows = summary["rows"]
    assert isinstance(rows, list)
    header = [
        "memory poses",
        "pos. err. (cells)",
        "heading err. (deg)",
        "slot heading err. (deg)",
        "slot pos. err. (cells)",
        "slots refined",
        "revisit gain (dB)",
        "95% interval",
        "share of exact gain",
        "hit rate",
        "novel gain (dB)",
        "copy_top revisit",
    ]
    lines = []
    for row in rows:
        share = row["gain_share"]
        lines.append(
            [
                row["setting"],
                row["pose_error_median"],
                row["heading_error_median_deg"],
                row["slot_heading_error_median_deg"],
                row["slot_position_error_median"],
                row["slots_refined"],
                row["revisit_gain"],
                f"[{row['revisit_gain_ci_low']:.2f}, {row['revisit_gain_ci_high']:.2f}]",
                "-" if share is None else f"{100 * share:.0f}%",
                row["hit_rate"],
                row["novel_gain"],
                row["revisit_psnr_copy_top"],
            ]
        )
    return format_table(header, lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the last line printed is the JSON summary."""
    summary = run(parse_args(argv))
    print(json.dumps(summary, default=float))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
