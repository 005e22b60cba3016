"""Evaluation stage of the Memory Maze benchmark, on the held-out episodes: one-step DDIM,
noise-prediction error at fixed levels, memory informativeness, autoregressive rollouts (and
rollouts through long returns under each write policy), and the rollout figure.

Labels: a target is a *revisit* when a frame before the context window lies within 1 cell and 45
degrees of it (not the identical pose), *novel* when no frame before the context window lies
within 2 cells. The hybrid's memory follows the protocol of :mod:`benchmarks.maze.protocol`.

Frames are model-scaled (``[-1, 1]``) everywhere here; PSNR is computed on RGB in ``[0, 1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from benchmarks.maze.baselines import Learner
from benchmarks.maze.noise import pose_errors
from benchmarks.maze.protocol import (
    Batch,
    Data,
    MemorySchedule,
    MemorySettings,
    ModelInputs,
    batch_for,
    informativeness,
    memory_for,
    model_inputs,
    new_buffer,
    retrieval_hits,
    slots_near,
    step_memory,
    subset_memory,
)
from benchmarks.maze.worlds import GAP_BINS, gap_bin_name, long_return_labels
from benchmarks.side_by_side import Diffusion, predict, psnr, ssim
from hybrid_cdit import CDiT, HybridCDiT, MemoryContext
from hybrid_cdit.memory import wrap_angle

__all__ = [
    "BANDS",
    "COPIES",
    "MEMORY_KINDS",
    "NOISY_POSES",
    "MemoryTransform",
    "band_scores",
    "band_weights",
    "copies",
    "eps_errors",
    "eps_function",
    "eval_targets",
    "evaluate",
    "long_rollouts",
    "memory_report",
    "noisy_pose_scores",
    "one_step_noise",
    "one_step_samples",
    "oracle_memory",
    "outback_rollouts",
    "outback_windows",
    "pose_noise_figures",
    "rollout",
    "rollout_starts",
    "routing_fallback",
    "to_unit",
]


def to_unit(x: Tensor) -> Tensor:
    """Model frames in ``[-1, 1]`` -> RGB in ``[0, 1]`` (clamped)."""
    return ((x + 1) * 0.5).clamp(0, 1)


def eps_function(
    model: CDiT,
    inputs: ModelInputs,
    memory: MemoryContext | None,
    diff: Diffusion,
    guidance: float = 1.0,
    fallback: CDiT | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x_t, t) -> eps`` of ``model`` for fixed conditioning (what a sampler calls), with
    memory guidance ``guidance`` (1: none) or routed to ``fallback`` where memory is inactive."""

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        out = predict(
            model, x_t, t, inputs.y, inputs.x_cond, inputs.rel_t, memory, guidance, fallback
        )
        return diff.eps_from(out, x_t, t)

    return eps_fn


def oracle_memory(
    frames: Tensor,
    poses: Tensor,
    pair_mse: Tensor,
    episode: Tensor,
    target: Tensor,
    context: int,
) -> MemoryContext:
    """Diagnostic only: a one-slot memory holding the frame before the context window that is
    closest in pixels to the target (it looks at the target; never used for the headline
    figures). Tells whether the trained memory branch could use a perfectly informative frame.

    Args:
        pair_mse: ``(N, T, T)`` pixel MSE between frames of each episode.
    """
    per_frame = pair_mse[episode, target]
    steps = torch.arange(frames.shape[1])[None]
    per_frame = torch.where(steps < (target - context)[:, None], per_frame, torch.inf)
    best = per_frame.argmin(1)
    b = episode.shape[0]
    return MemoryContext(
        frames=frames[episode, best][:, None],
        poses=poses[episode, best][:, None],
        scores=torch.ones(b, 1),
        mask=torch.isfinite(per_frame.amin(1))[:, None],
        query_pose=poses[episode, target],
        steps=best[:, None],
        query_step=target,
    )


@torch.no_grad()
def eps_errors(
    models: dict[str, tuple[CDiT, str]],
    frames: Tensor,
    poses: Tensor,
    schedule: MemorySchedule,
    pair_mse: Tensor,
    episode: Tensor,
    target: Tensor,
    diff: Diffusion,
    levels: Sequence[int],
    settings: MemorySettings,
    *,
    seed: int,
    batch: int = 256,
    memory_poses: Tensor | None = None,
    fallback: CDiT | None = None,
) -> dict[str, Tensor]:
    """Noise-prediction MSE ``(len(levels), B)`` per model variant at fixed timesteps, with
    fixed noise (seeded).

    Args:
        models: name -> ``(model, memory)``, memory one of ``"none"``, ``"retrieved"``,
            ``"oracle"``.
        memory_poses: the poses the memory sees (``schedule``'s; default ``poses``).
        fallback: the CDiT that answers for ``"retrieved"`` models where memory is inactive.
    """
    if memory_poses is None:
        memory_poses = poses
    gen = torch.Generator().manual_seed(seed)
    shape = (len(levels), episode.shape[0], *frames.shape[2:])
    eps_all = torch.randn(shape, generator=gen)
    out = {name: torch.empty(len(levels), episode.shape[0]) for name in models}
    for lo in range(0, episode.shape[0], batch):
        sl = slice(lo, lo + batch)
        e, t = episode[sl], target[sl]
        inputs = model_inputs(frames, poses, e, t, settings.context)
        memories = {
            "none": None,
            "retrieved": memory_for(frames, memory_poses, schedule, e, t),
            "oracle": oracle_memory(frames, memory_poses, pair_mse, e, t, settings.context),
        }
        for j, level in enumerate(levels):
            tt = torch.full((e.shape[0],), level, dtype=torch.long)
            eps = eps_all[j, sl]
            x_t = diff.noise(inputs.x0, tt, eps)
            for name, (model, kind) in models.items():
                raw = predict(
                    model, x_t, tt, inputs.y, inputs.x_cond, inputs.rel_t, memories[kind],
                    fallback=fallback if kind == "retrieved" else None,
                )  # fmt: skip
                pred = diff.eps_from(raw, x_t, tt)
                out[name][j, sl] = (pred - eps).square().flatten(1).mean(1)
    return out


COPIES = ("copy_last", "copy_top")
"""The copy baselines: the last context frame, and the hybrid's top retrieved frame (the last
context frame when no slot is usable)."""


def copies(batch: Batch) -> dict[str, Tensor]:
    """The copy baselines' predictions ``(B, C, H, W)`` of a batch (model scale)."""
    last = batch.x_cond[:, -1]
    top_usable = batch.memory.mask[:, 0, None, None, None]
    return {"copy_last": last, "copy_top": torch.where(top_usable, batch.memory.frames[:, 0], last)}


def one_step_noise(count: int, frame_shape: Sequence[int], seed: int) -> Tensor:
    """The starting noise ``(count, *frame_shape)`` of :func:`one_step_samples` for ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((count, *frame_shape), generator=gen)


MemoryTransform = Callable[[MemoryContext, Tensor, Tensor], MemoryContext]
"""``(memory, episode, target) -> memory``: a change to each batch's memory context."""


@torch.no_grad()
def one_step_samples(
    learners: Sequence[Learner],
    frames: Tensor,
    poses: Tensor,
    schedule: MemorySchedule,
    episode: Tensor,
    target: Tensor,
    diff: Diffusion,
    settings: MemorySettings,
    *,
    ddim_steps: int,
    seed: int,
    batch: int = 256,
    memory_poses: Tensor | None = None,
    noise: Tensor | None = None,
    memory_transform: MemoryTransform | None = None,
    copy_names: Sequence[str] = COPIES,
) -> dict[str, dict[str, Tensor]]:
    """DDIM samples of the target frames from each learner's conditioning on the true history
    (the same starting noise for every learner), and the copy baselines (:data:`COPIES`).

    Args:
        memory_poses: the poses the memory sees, those ``schedule`` was replayed on (default
            ``poses``; see :func:`~benchmarks.maze.protocol.batch_for`).
        noise: ``(B, C, H, W)`` starting noise (default :func:`one_step_noise` of ``seed``).
        memory_transform: applied to each batch's memory context before any learner sees it.
        copy_names: the copy baselines to score (a subset of :data:`COPIES`).

    Returns:
        ``{"psnr": name -> (B,) dB, "ssim": name -> (B,)}`` against the true frames, for every
        learner and copy baseline.
    """
    if noise is None:
        noise = one_step_noise(episode.shape[0], frames.shape[2:], seed)
    names = [learner.name for learner in learners] + list(copy_names)
    out = {m: {name: torch.empty(episode.shape[0]) for name in names} for m in ("psnr", "ssim")}
    for lo in range(0, episode.shape[0], batch):
        sl = slice(lo, lo + batch)
        b = batch_for(
            frames, poses, schedule, episode[sl], target[sl], settings.context,
            memory_poses=memory_poses,
        )  # fmt: skip
        if memory_transform is not None:
            b = dataclasses.replace(b, memory=memory_transform(b.memory, episode[sl], target[sl]))
        predictions = {k: v for k, v in copies(b).items() if k in copy_names}
        for learner in learners:
            fn = partial(_eps_of, learner, b, diff, settings.guidance)
            predictions[learner.name] = diff.ddim_sample(fn, noise[sl], ddim_steps)
        truth = to_unit(b.x0)
        for name, pred in predictions.items():
            out["psnr"][name][sl] = psnr(to_unit(pred), truth)
            out["ssim"][name][sl] = ssim(to_unit(pred), truth)
    return out


def _eps_of(
    learner: Learner, batch: Batch, diff: Diffusion, guidance: float, x_t: Tensor, t: Tensor
) -> Tensor:
    return diff.eps_from(learner.output(x_t, t, batch, guidance), x_t, t)


MEMORY_KINDS = ("memory", "retrieved", "retrieved_pose")
"""Learner kinds (:class:`~benchmarks.maze.baselines.Learner`) whose inputs depend on the poses
the memory sees: through the memory's poses, or through what the retrieval returns."""

NOISY_POSES = "_noisy_poses"
"""Suffix of the names scored with corrupted memory poses."""


def noisy_pose_scores(
    learners: Sequence[Learner],
    noisy: Data,
    episode: Tensor,
    target: Tensor,
    diff: Diffusion,
    settings: MemorySettings,
    *,
    ddim_steps: int,
    seed: int,
    noise: Tensor | None = None,
    memory_transform: MemoryTransform | None = None,
) -> dict[str, dict[str, Tensor]]:
    """:func:`one_step_samples` with the memory seeing ``noisy.memory_poses`` (retrieval,
    memory poses, query pose), for the learners of :data:`MEMORY_KINDS` and ``copy_top``; the
    actions, context and targets are the true ones, the starting noise ``noise`` or that of
    ``seed``, so the scores compare target by target with an exact-pose pass of the same noise.
    Names get the suffix :data:`NOISY_POSES`."""
    chosen = [learner for learner in learners if learner.kind in MEMORY_KINDS]
    scores = one_step_samples(
        chosen, noisy.frames, noisy.poses, noisy.schedule, episode, target, diff, settings,
        ddim_steps=ddim_steps, seed=seed, memory_poses=noisy.memory_poses, noise=noise,
        memory_transform=memory_transform, copy_names=("copy_top",),
    )  # fmt: skip
    return {m: {f"{n}{NOISY_POSES}": v for n, v in per.items()} for m, per in scores.items()}


def pose_noise_figures(data: Data, noisy: Data) -> dict[str, float]:
    """How far the memory's poses in ``noisy`` are from the truth of ``data`` (the same
    episodes): ``pose_error_median`` (cells) and ``heading_error_median_deg`` over every
    held-out frame, and the share of all held-out revisit frames whose retrieval returns a
    slot truly within 1 cell and 45 degrees of the target, with the exact poses (``hit_rate``)
    and with the noisy ones (``hit_rate_noisy_poses``)."""
    position, heading = pose_errors(noisy.memory_poses, data.poses)
    r_ep, r_t = data.revisit.nonzero(as_tuple=True)
    exact_hits = retrieval_hits(data.poses, data.schedule, r_ep, r_t)
    noisy_hits = retrieval_hits(data.poses, noisy.schedule, r_ep, r_t)
    return {
        "pose_error_median": float(position.median()),
        "heading_error_median_deg": float(heading.median().rad2deg()),
        "hit_rate": float(exact_hits.float().mean()),
        "hit_rate_noisy_poses": float(noisy_hits.float().mean()),
    }


def rollout_starts(
    revisit: Tensor, length: int, *, min_start: int, per_episode: int = 1
) -> tuple[Tensor, Tensor]:
    """Rollout windows rich in revisits: per episode, the ``per_episode`` non-overlapping
    starts ``s >= min_start`` whose window ``[s, s + length)`` holds the most revisit frames.

    Args:
        revisit: ``(N, T)`` bool labels.

    Returns:
        ``(episode, start)``, both ``(N * per_episode,)`` long.
    """
    n, t_len = revisit.shape
    if min_start + length > t_len:
        raise ValueError(
            f"episodes of {t_len} frames are too short for rollouts of {length} frames from "
            f"frame {min_start}"
        )
    windows = revisit.float().unfold(1, length, 1).sum(-1)  # (N, T - length + 1)
    windows[:, :min_start] = -1
    episodes, starts = [], []
    for i in range(n):
        counts = windows[i].clone()
        for _ in range(per_episode):
            s = int(counts.argmax())
            episodes.append(i)
            starts.append(s)
            counts[max(0, s - length + 1) : s + length] = -2  # no overlap with this window
    return torch.tensor(episodes), torch.tensor(starts)


@torch.no_grad()
def rollout(
    model: CDiT,
    frames: Tensor,
    poses: Tensor,
    episode: Tensor,
    start: Tensor,
    length: int,
    diff: Diffusion,
    settings: MemorySettings,
    *,
    ddim_steps: int,
    seed: int,
    use_memory: bool,
    on_memory: Callable[[int, MemoryContext], None] | None = None,
    generated_only: bool = False,
    fallback: CDiT | None = None,
) -> Tensor:
    """Autoregressive rollouts along the true poses: frames ``start .. start + length - 1`` of
    each episode are generated one after the other, each generated frame becoming context.

    With ``use_memory`` (a :class:`HybridCDiT`), one memory buffer per rollout follows the
    memory protocol from frame 0: true frames before ``start``, then generated frames as
    they leave the context window; its retrievals drive the model. With ``settings.route``,
    each write is told the next ``route`` poses the rollout will generate (its window).
    ``on_memory(t, context)``, if given, sees every retrieval (for tests and diagnostics).
    With ``generated_only``, the buffer holds only what the rollout generated: no frame before
    ``start`` is written (out-and-back rollouts). With ``fallback``, frames whose memory is
    inactive are generated by that CDiT (:func:`hybrid_cdit.routed_forward`).

    Returns:
        ``(B, length, C, H, W)`` generated frames (model scale).
    """
    if use_memory and not isinstance(model, HybridCDiT):
        raise ValueError("use_memory=True needs a HybridCDiT")
    b = episode.shape[0]
    seq = frames[episode].clone()  # (B, T, C, H, W): true frames, overwritten as generated
    pose = poses[episode]
    c, h, w = frames.shape[2:]
    buffer = new_buffer(b, (c, h, w), settings) if use_memory else None
    end = int((start + length).max())
    rows = torch.arange(b)
    for t in range(settings.context, end):
        memory = None
        if buffer is not None:
            # the steps before `context` retrieve from an empty buffer: nothing to replay
            if t == settings.context:
                for s in range(settings.context):
                    step_memory(buffer, s, None, None, pose[:, s], settings)
            src = t - settings.context - 1
            upcoming = None
            if settings.route and src >= 0:  # the rollout's own poses from t on
                ahead = torch.arange(t, min(t + settings.route, end))
                counted = (ahead >= start[:, None]) & (ahead < (start + length)[:, None])
                upcoming = (pose[:, ahead], counted)
            memory = step_memory(
                buffer,
                t,
                seq[:, src] if src >= 0 else None,
                pose[:, src] if src >= 0 else None,
                pose[:, t],
                settings,
                upcoming,
                where=src >= start if generated_only else None,
            )
            if on_memory is not None:
                on_memory(t, memory)
        active = (start <= t) & (t < start + length)
        if not bool(active.any()):
            continue
        sel = rows[active]
        tt = torch.full((sel.shape[0],), t, dtype=torch.long)
        inputs = model_inputs(seq, pose, sel, tt, settings.context)
        mem = None if memory is None else subset_memory(memory, sel)
        gen = torch.Generator().manual_seed(seed * 100_003 + t)
        noise = torch.randn((b, *frames.shape[2:]), generator=gen)[sel]
        fn = eps_function(model, inputs, mem, diff, settings.guidance, fallback)
        seq[sel, t] = diff.ddim_sample(fn, noise, ddim_steps)
    index = start[:, None] + torch.arange(length)
    return seq[rows[:, None], index]


def eval_targets(data: Data, limit: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Up to ``limit`` revisit targets, all novel targets and up to ``limit`` middle-band
    targets (each drawn uniformly without replacement), in that order, as ``(episode, target)``
    long tensors."""
    picked = []
    for labels, cap in ((data.revisit, limit), (data.novel, None), (data.middle, limit)):
        rows = labels.nonzero()
        if cap is not None and rows.shape[0] > cap:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)[:cap].sort().values]
        picked.append(rows)
    both = torch.cat(picked)
    return both[:, 0], both[:, 1]


BANDS = ("revisit", "novel", "middle")
"""Target bands: revisit, novel and the partly seen middle (neither); together every frame from
``context`` on."""


def band_weights(data: Data) -> dict[str, float]:
    """Each band's share of the held-out frames from ``context`` on."""
    counts = {band: float(getattr(data, band).sum()) for band in BANDS}
    total = sum(counts.values())
    return {band: c / total for band, c in counts.items()}


def band_scores(
    data: Data,
    episode: Tensor,
    target: Tensor,
    scores: dict[str, dict[str, Tensor]],
    context: int,
) -> dict[str, float]:
    """Mean scores per band, over all frames, and revisit PSNR by gap bin.

    ``{band}_{metric}_{name}`` for ``band`` in :data:`BANDS`; ``all_{metric}_{name}``: the
    band means weighted by each band's share of all held-out frames (:func:`band_weights`; the
    targets are drawn per band); ``revisit_psnr_{name}_gap_{lo}_{hi}`` over the revisit
    targets last seen ``[lo, hi)`` frames earlier (:data:`~benchmarks.maze.worlds.GAP_BINS`),
    with ``revisit_targets_gap_{lo}_{hi}`` their count. Bands or bins without targets are left
    out.
    """
    out: dict[str, float] = {}
    weights = band_weights(data)
    gap = data.gap[episode, target]
    rev = data.revisit[episode, target]
    for metric, per_name in scores.items():
        for name, values in per_name.items():
            total, present = 0.0, True
            for band in BANDS:
                sel = getattr(data, band)[episode, target]
                if bool(sel.any()):
                    out[f"{band}_{metric}_{name}"] = float(values[sel].mean())
                    total += weights[band] * float(values[sel].mean())
                elif weights[band] > 0:
                    present = False
            if present:
                out[f"all_{metric}_{name}"] = total
            if metric != "psnr":
                continue
            for lo, hi in GAP_BINS:
                below = gap < hi if hi is not None else torch.ones_like(rev)
                sel = rev & (gap >= lo) & below
                if bool(sel.any()):
                    key = gap_bin_name(lo, hi)
                    out[f"revisit_psnr_{name}_gap_{key}"] = float(values[sel].mean())
                    out[f"revisit_targets_gap_{key}"] = int(sel.sum())
    return out


def memory_report(data: Data, settings: MemorySettings) -> dict[str, float]:
    """Retrieval and memory informativeness over every revisit target (pixel MSE on RGB in
    ``[0, 1]``), and how often novel targets activate memory."""
    r_ep, r_t = data.revisit.nonzero(as_tuple=True)
    info = informativeness(data.pair_mse, data.schedule, r_ep, r_t, settings.context)
    active = info["active"]
    scale = 0.25  # model frames are in [-1, 1]: MSE on [0, 1] RGB is a quarter of it
    n_ep, n_t = data.novel.nonzero(as_tuple=True)
    offset = data.poses[r_ep, info["history_index"]] - data.poses[r_ep, r_t]
    offset[:, 2] = wrap_angle(offset[:, 2])
    return {
        "revisit_active_rate": float(active.float().mean()),
        "revisit_hit_rate": float(
            retrieval_hits(data.poses, data.schedule, r_ep, r_t).float().mean()
        ),
        "mse_best_retrieved": float(info["retrieved"][active].mean() * scale),
        "mse_last_context": float(info["last_context"].mean() * scale),
        "mse_last_context_active": float(info["last_context"][active].mean() * scale),
        "mse_closest_in_history": float(info["history"].mean() * scale),
        "retrieved_beats_context_rate": float(
            (info["retrieved"] < info["last_context"])[active].float().mean()
        ),
        "mse_top_retrieved": float(info["top"][active].mean() * scale),
        # where the pixel-closest history frame was taken, relative to the target
        "closest_history_distance_median": float(offset[:, :2].norm(dim=1).median()),
        "closest_history_turn_median_deg": float(offset[:, 2].abs().median().rad2deg()),
        "novel_active_rate": float(data.schedule.mask[n_ep, n_t].any(1).float().mean()),
    }


def routing_fallback(args: argparse.Namespace, cdit: CDiT) -> CDiT | None:
    """The network that answers for the hybrid where its memory is inactive: ``cdit`` with
    ``--route-inactive`` (:func:`hybrid_cdit.routed_forward`), else None (the hybrid itself)."""
    return cdit if args.route_inactive else None


def evaluate(
    args: argparse.Namespace,
    data: Data,
    cdit: CDiT,
    hybrid: HybridCDiT,
    diff: Diffusion,
    settings: MemorySettings,
    baselines: Sequence[Learner] = (),
    noisy: Data | None = None,
) -> dict[str, object]:
    """Every figure of the summary but ``seconds``, plus the rollouts for the figure
    (``_figure``) and the per-target one-step scores (``_targets``, for intervals).

    The targets are the same for every training seed (drawn with a fixed generator). With
    ``noisy`` (``data`` whose memory sees corrupted poses), the one-step figures are also
    scored with them (:func:`noisy_pose_scores`: ``{band}_psnr_{name}_noisy_poses``) and
    :func:`pose_noise_figures` is added; everything else uses the exact poses."""
    cdit.eval()
    hybrid.eval()
    fallback = routing_fallback(args, cdit)
    for baseline in baselines:
        baseline.model.eval()
    gen = torch.Generator().manual_seed(20_000)
    episode, target = eval_targets(data, args.max_revisit_targets, gen)
    is_rev = data.revisit[episode, target]
    is_nov = data.novel[episode, target]
    is_mid = data.middle[episode, target]
    core = is_rev | is_nov
    result: dict[str, object] = {
        "revisit_targets": int(is_rev.sum()),
        "novel_targets": int(is_nov.sum()),
        "middle_targets": int(is_mid.sum()),
        "revisit_targets_all": int(data.revisit.sum()),
        "novel_targets_all": int(data.novel.sum()),
        "middle_targets_all": int(data.middle.sum()),
        "eval_frames": int(data.revisit.shape[0] * (data.length - settings.context)),
    }

    result["informativeness"] = memory_report(data, settings)

    # noise-prediction error at fixed levels
    print(
        f"[eval] noise-prediction error at t={args.eval_t} on {int(core.sum())} targets",
        flush=True,
    )
    errors = eps_errors(
        {
            "cdit": (cdit, "none"),
            "hybrid": (hybrid, "retrieved"),
            "hybrid_no_memory": (hybrid, "none"),
            "hybrid_oracle_memory": (hybrid, "oracle"),
        },
        data.frames,
        data.poses,
        data.schedule,
        data.pair_mse,
        episode[core],
        target[core],
        diff,
        args.eval_t,
        settings,
        seed=args.seed + 30_000,
        memory_poses=data.memory_poses,
        fallback=fallback,
    )
    eps_table: dict[str, dict[str, float]] = {}
    for split, sel in (("revisit", is_rev[core]), ("novel", is_nov[core])):
        for name, err in errors.items():
            eps_table[f"{split}_{name}"] = {
                f"t={lv}": float(err[j, sel].mean()) for j, lv in enumerate(args.eval_t)
            } | {"mean": float(err[:, sel].mean())}
    result["eps_mse"] = eps_table
    base = eps_table["revisit_cdit"]["mean"]
    result["revisit_eps_mse_ratio"] = eps_table["revisit_hybrid"]["mean"] / base
    result["revisit_eps_mse_ratio_no_memory"] = eps_table["revisit_hybrid_no_memory"]["mean"] / base
    result["revisit_eps_mse_ratio_oracle_memory"] = (
        eps_table["revisit_hybrid_oracle_memory"]["mean"] / base
    )
    result["novel_eps_mse_ratio"] = (
        eps_table["novel_hybrid"]["mean"] / eps_table["novel_cdit"]["mean"]
    )

    # one-step DDIM generation
    print(f"[eval] one-step DDIM ({args.ddim_steps} steps) on {len(episode)} targets", flush=True)
    learners = [
        Learner("cdit", cdit, "recent"),
        Learner("hybrid", hybrid, "memory", fallback),
        Learner("hybrid_no_memory", hybrid, "recent"),
        *baselines,
    ]
    scores = one_step_samples(
        learners,
        data.frames,
        data.poses,
        data.schedule,
        episode,
        target,
        diff,
        settings,
        ddim_steps=args.ddim_steps,
        seed=args.seed + 40_000,
        memory_poses=data.memory_poses,
    )
    if noisy is not None:
        print("[eval] one-step DDIM again with the memory's poses corrupted", flush=True)
        extra = noisy_pose_scores(
            learners, noisy, episode, target, diff, settings,
            ddim_steps=args.ddim_steps, seed=args.seed + 40_000,
        )  # fmt: skip
        for metric, per_name in extra.items():
            scores[metric].update(per_name)
        result.update(pose_noise_figures(data, noisy))
    result.update(band_scores(data, episode, target, scores, settings.context))
    psnrs = scores["psnr"]
    rev_active = data.schedule.mask[episode, target].any(1) & is_rev
    result["revisit_active_psnr_cdit"] = float(psnrs["cdit"][rev_active].mean())
    result["revisit_active_psnr_hybrid"] = float(psnrs["hybrid"][rev_active].mean())
    result["_targets"] = {"episode": episode, "target": target, **scores}

    # autoregressive rollouts
    r_episode, r_start = rollout_starts(
        data.revisit,
        args.rollout_length,
        min_start=min(args.rollout_min_start, data.length - args.rollout_length),
        per_episode=args.rollouts_per_episode,
    )
    print(
        f"[eval] {len(r_episode)} rollouts of {args.rollout_length} frames "
        f"(DDIM {args.ddim_steps} steps a frame)",
        flush=True,
    )
    common = {
        "ddim_steps": args.ddim_steps,
        "seed": args.seed + 50_000,
    }
    gen_c = rollout(
        cdit, data.frames, data.poses, r_episode, r_start, args.rollout_length, diff, settings,
        use_memory=False, **common,
    )  # fmt: skip
    gen_h = rollout(
        hybrid, data.frames, data.poses, r_episode, r_start, args.rollout_length, diff, settings,
        use_memory=True, fallback=fallback, **common,
    )  # fmt: skip
    gen_w = rollout(
        hybrid, data.frames, data.poses, r_episode, r_start, args.rollout_length, diff, settings,
        use_memory=False, **common,
    )  # fmt: skip
    index = r_start[:, None] + torch.arange(args.rollout_length)
    truth = data.frames[r_episode[:, None], index]
    rev = data.revisit[r_episode[:, None], index]
    for name, generated in (("cdit", gen_c), ("hybrid", gen_h), ("hybrid_no_memory", gen_w)):
        p = psnr(to_unit(generated).flatten(0, 1), to_unit(truth).flatten(0, 1)).view_as(rev)
        result[f"rollout_revisit_psnr_{name}"] = float(p[rev].mean())
        result[f"rollout_psnr_{name}"] = float(p.mean())
    result["rollout_revisit_frames"] = int(rev.sum())
    result["rollout_frames"] = int(rev.numel())
    best = int(rev.sum(1).argmax())
    result["_figure"] = (truth[best], gen_c[best], gen_h[best], rev[best])
    if args.long_rollouts:
        result.update(long_rollouts(args, data, cdit, hybrid, diff, settings))
    if args.outback:
        result.update(outback_rollouts(args, data, cdit, hybrid, diff, settings))
    return result


def long_rollouts(
    args: argparse.Namespace,
    data: Data,
    cdit: CDiT,
    hybrid: HybridCDiT,
    diff: Diffusion,
    settings: MemorySettings,
) -> dict[str, object]:
    """Rollouts through returns after long absences, the hybrid's buffer under each policy.

    Windows of ``--rollout-length`` frames from frame ``--long-min-start`` on, chosen for their
    *long returns* (frames whose view was last seen ``--long-gap`` or more frames earlier,
    :func:`long_return_labels`); the hybrid rolls out with a buffer of ``--long-capacity``
    frames under the ``lru`` and the ``coverage`` write policy, under ``coverage`` told the
    rollout's poses (``coverage_route``: a rollout along a given route), and with the whole
    episode (the training buffer) as the upper bound. PSNR on the long-return frames, and how often
    the buffer's retrieval holds a frame within 1 cell and 45 degrees of them (hit rate).
    """
    labels = torch.stack(
        [
            torch.from_numpy(long_return_labels(p.numpy(), settings.context, args.long_gap))
            for p in data.poses
        ]
    )
    length = args.rollout_length
    episode, start = rollout_starts(
        labels,
        length,
        min_start=min(args.long_min_start, data.length - length),
        per_episode=args.rollouts_per_episode,
    )
    index = start[:, None] + torch.arange(length)
    truth = data.frames[episode[:, None], index]
    marked = labels[episode[:, None], index]
    policies = {
        "lru": dataclasses.replace(settings, capacity=args.long_capacity, write_policy="lru"),
        "coverage": dataclasses.replace(
            settings, capacity=args.long_capacity, write_policy="coverage"
        ),
        "coverage_route": dataclasses.replace(
            settings, capacity=args.long_capacity, write_policy="coverage", route=data.length
        ),
        "whole_episode": settings,
    }
    print(
        f"[eval] long returns: {len(episode)} rollouts of {length} frames from frame "
        f">= {args.long_min_start}, {int(marked.sum())} frames last seen >= {args.long_gap} "
        f"frames earlier; buffers of {args.long_capacity} frames (lru, coverage, coverage told "
        f"the route) and of the whole episode",
        flush=True,
    )
    common = {"ddim_steps": args.ddim_steps, "seed": args.seed + 60_000}
    out: dict[str, object] = {
        "long_rollout_frames": int(marked.sum()),
        "long_gap": args.long_gap,
        "long_capacity": args.long_capacity,
    }
    baseline = rollout(
        cdit, data.frames, data.poses, episode, start, length, diff, settings,
        use_memory=False, **common,
    )  # fmt: skip
    generated = {"cdit": baseline}
    for name, policy in policies.items():
        hits = torch.zeros(len(episode), length, dtype=torch.bool)

        def record(t: int, memory: MemoryContext, hits: Tensor = hits) -> None:
            inside = (t >= start) & (t < start + length)
            if bool(inside.any()):
                rows = inside.nonzero().squeeze(1)
                near = slots_near(memory.poses[rows], memory.query_pose[rows], memory.mask[rows])
                hits[rows, t - start[rows]] = near

        generated[name] = rollout(
            hybrid, data.frames, data.poses, episode, start, length, diff, policy,
            use_memory=True, on_memory=record, fallback=routing_fallback(args, cdit), **common,
        )  # fmt: skip
        out[f"long_rollout_hit_rate_{name}"] = float(hits[marked].float().mean())
    for name, frames in generated.items():
        p = psnr(to_unit(frames).flatten(0, 1), to_unit(truth).flatten(0, 1)).view_as(marked)
        out[f"long_rollout_revisit_psnr_{name}"] = float(p[marked].mean())
    return out


def outback_windows(
    gap: Tensor, length: int, context: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Out-and-back rollout windows: per episode, the start ``s >= context`` whose window
    ``[s, s + length)`` holds the most *returns*, frames ``r`` whose view was last seen at a
    frame ``f = r - gap[r]`` inside the same window (``s <= f``), so a rollout from ``s``
    generates the place before it comes back to it. Episodes without any are left out.

    Args:
        gap: ``(N, T)`` long, frames since each view was last seen before the context window
            (:func:`~benchmarks.maze.worlds.last_seen_gap`, -1 when never).

    Returns:
        ``episode (B,)`` and ``start (B,)`` long, ``returns (B, length)`` bool, and
        ``first (B, length)`` long: the window index of each return's first visit (0 where
        not a return).
    """
    t_len = gap.shape[1]
    if context + length > t_len:
        raise ValueError(
            f"episodes of {t_len} frames are too short for out-and-back windows of {length}"
        )
    s = torch.arange(t_len)[:, None]  # (S, 1) candidate starts
    r = torch.arange(t_len)[None, :]  # (1, R) frames
    seen = gap >= 0  # (N, R)
    first = r - gap  # (N, R)
    inside = (s <= first[:, None]) & (r < s + length) & seen[:, None]  # (N, S, R)
    counts = inside.sum(-1)
    counts[:, :context] = -1
    counts[:, t_len - length + 1 :] = -1
    best, start = counts.max(1)
    episode = (best > 0).nonzero().squeeze(1)
    start = start[episode]
    index = start[:, None] + torch.arange(length)  # (B, L)
    returns = inside[episode[:, None], start[:, None], index]
    first_in_window = torch.where(returns, first[episode[:, None], index] - start[:, None], 0)
    return episode, start, returns, first_in_window


def outback_rollouts(
    args: argparse.Namespace,
    data: Data,
    cdit: CDiT,
    hybrid: HybridCDiT,
    diff: Diffusion,
    settings: MemorySettings,
) -> dict[str, object]:
    """Out-and-back rollouts (LoopNav's A -> B -> A) of ``--outback-length`` frames: the
    hybrid's memory holds only what the rollout generated since its start (no true frame before
    it). On the return frames: PSNR against the truth (``outback_psnr_{model}``) and against
    the model's own first-visit frame (``outback_self_psnr_{model}``, self-consistency), and
    the truth's own first-visit PSNR (``outback_self_psnr_truth``: how alike the two views
    really are). ``_outback`` holds the per-frame scores for intervals over windows: ``window
    (F,)`` long, each return frame's window in ``[0, windows)``, and ``{truth,self}_{model}
    (F,)`` PSNR against the truth and against the model's own first visit."""
    length = args.outback_length
    episode, start, returns, first = outback_windows(data.gap, length, settings.context)
    out: dict[str, object] = {"outback_rollouts": int(episode.numel())}
    if episode.numel() == 0:
        return out
    print(
        f"[eval] out and back: {len(episode)} rollouts of {length} frames, "
        f"{int(returns.sum())} return frames; memory holds only generated frames",
        flush=True,
    )
    common = {"ddim_steps": args.ddim_steps, "seed": args.seed + 70_000}
    index = start[:, None] + torch.arange(length)
    generated = {
        "truth": data.frames[episode[:, None], index],
        "cdit": rollout(
            cdit, data.frames, data.poses, episode, start, length, diff, settings,
            use_memory=False, **common,
        ),
        "hybrid": rollout(
            hybrid, data.frames, data.poses, episode, start, length, diff, settings,
            use_memory=True, generated_only=True, fallback=routing_fallback(args, cdit),
            **common,
        ),
    }  # fmt: skip
    rows = torch.arange(len(episode))[:, None].expand_as(first)
    truth = to_unit(generated["truth"][returns])
    out["outback_frames"] = int(returns.sum())
    per_frame: dict[str, Tensor] = {}
    for name, frames in generated.items():
        at_return = to_unit(frames[returns])
        at_first = to_unit(frames[rows[returns], first[returns]])
        if name != "truth":
            per_frame[f"truth_{name}"] = psnr(at_return, truth)
            out[f"outback_psnr_{name}"] = float(per_frame[f"truth_{name}"].mean())
        per_frame[f"self_{name}"] = psnr(at_return, at_first)
        out[f"outback_self_psnr_{name}"] = float(per_frame[f"self_{name}"].mean())
    out["_outback"] = {"window": rows[returns], "windows": len(episode), **per_frame}
    return out
