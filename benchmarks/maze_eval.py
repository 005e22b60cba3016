"""Evaluation of the Memory Maze benchmark: one-step DDIM, noise-prediction error at fixed
levels, memory informativeness, autoregressive rollouts and the rollout figure.

Frames are model-scaled (``[-1, 1]``) everywhere here; PSNR is computed on RGB in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from maze_memory import (
    MemorySchedule,
    MemorySettings,
    ModelInputs,
    memory_for,
    model_inputs,
    new_buffer,
    step_memory,
)
from side_by_side import Diffusion, predict, psnr
from torch import Tensor

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext

__all__ = [
    "eps_errors",
    "eps_function",
    "one_step_samples",
    "oracle_memory",
    "rollout",
    "rollout_figure",
    "rollout_starts",
    "subset_memory",
    "to_unit",
]


def to_unit(x: Tensor) -> Tensor:
    """Model frames in ``[-1, 1]`` -> RGB in ``[0, 1]`` (clamped)."""
    return ((x + 1) * 0.5).clamp(0, 1)


def eps_function(
    model: CDiT, inputs: ModelInputs, memory: MemoryContext | None, diff: Diffusion
) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x_t, t) -> eps`` of ``model`` for fixed conditioning (what a sampler calls)."""

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        out = predict(model, x_t, t, inputs.y, inputs.x_cond, inputs.rel_t, memory)
        return diff.eps_from(out, x_t, t)

    return eps_fn


def subset_memory(memory: MemoryContext, rows: Tensor) -> MemoryContext:
    """Rows ``rows`` of a :class:`MemoryContext`."""
    return MemoryContext(
        frames=memory.frames[rows],
        poses=memory.poses[rows],
        scores=memory.scores[rows],
        mask=memory.mask[rows],
        query_pose=memory.query_pose[rows],
        steps=None if memory.steps is None else memory.steps[rows],
        query_step=None if memory.query_step is None else memory.query_step[rows],
    )


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
) -> dict[str, Tensor]:
    """Noise-prediction MSE ``(len(levels), B)`` per model variant at fixed timesteps, with
    fixed noise (seeded).

    Args:
        models: name -> ``(model, memory)``, memory one of ``"none"``, ``"retrieved"``,
            ``"oracle"``.
    """
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
            "retrieved": memory_for(frames, poses, schedule, e, t),
            "oracle": oracle_memory(frames, poses, pair_mse, e, t, settings.context),
        }
        for j, level in enumerate(levels):
            tt = torch.full((e.shape[0],), level, dtype=torch.long)
            eps = eps_all[j, sl]
            x_t = diff.noise(inputs.x0, tt, eps)
            for name, (model, kind) in models.items():
                raw = predict(model, x_t, tt, inputs.y, inputs.x_cond, inputs.rel_t, memories[kind])
                pred = diff.eps_from(raw, x_t, tt)
                out[name][j, sl] = (pred - eps).square().flatten(1).mean(1)
    return out


@torch.no_grad()
def one_step_samples(
    models: dict[str, tuple[CDiT, bool]],
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
) -> dict[str, Tensor]:
    """DDIM samples of the target frames from the true context (and the true memory where the
    variant uses memory); the same starting noise for every variant.

    Returns:
        name -> ``(B,)`` PSNR in dB against the true frames.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((episode.shape[0], *frames.shape[2:]), generator=gen)
    out = {name: torch.empty(episode.shape[0]) for name in models}
    for lo in range(0, episode.shape[0], batch):
        sl = slice(lo, lo + batch)
        e, t = episode[sl], target[sl]
        inputs = model_inputs(frames, poses, e, t, settings.context)
        memory = memory_for(frames, poses, schedule, e, t)
        for name, (model, use_memory) in models.items():
            fn = eps_function(model, inputs, memory if use_memory else None, diff)
            sample = diff.ddim_sample(fn, noise[sl], ddim_steps)
            out[name][sl] = psnr(to_unit(sample), to_unit(inputs.x0))
    return out


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
) -> Tensor:
    """Autoregressive rollouts along the true poses: frames ``start .. start + length - 1`` of
    each episode are generated one after the other, each generated frame becoming context.

    With ``use_memory`` (a :class:`HybridCDiT`), one memory buffer per rollout follows the
    memory protocol from frame 0: true frames before ``start``, then generated frames as
    they leave the context window; its retrievals drive the model. With ``settings.route``,
    each write is told the next ``route`` poses the rollout will generate (its window).
    ``on_memory(t, context)``, if given, sees every retrieval (for tests and diagnostics).

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
        seq[sel, t] = diff.ddim_sample(eps_function(model, inputs, mem, diff), noise, ddim_steps)
    index = start[:, None] + torch.arange(length)
    return seq[rows[:, None], index]


def rollout_figure(
    truth: Tensor, cdit: Tensor, hybrid: Tensor, revisit: Tensor, path: Path, *, scale: int = 2
) -> None:
    """Rows ground truth / CDiT / HybridCDiT of one rollout ``(L, C, H, W)`` (model scale);
    revisit frames ``revisit (L,)`` get a green border in every row. Written with
    ``torchvision.utils.save_image``."""
    from torchvision.utils import save_image

    rows = torch.stack([truth, cdit, hybrid]).clone()  # (3, L, C, H, W)
    images = to_unit(rows)
    if scale > 1:
        images = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    border = max(1, images.shape[-1] // 32)
    green = torch.tensor([0.1, 0.9, 0.2])[:, None, None]
    for i in torch.nonzero(revisit).flatten().tolist():
        img = images[:, i]
        img[..., :border, :] = green
        img[..., -border:, :] = green
        img[..., :, :border] = green
        img[..., :, -border:] = green
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.flatten(0, 1), path, nrow=rows.shape[1], padding=2, pad_value=1.0)
