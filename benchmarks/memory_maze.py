"""HybridCDiT against CDiT on DeepMind's Memory Maze: revisits seen from new viewpoints.

    pip install -e ".[bench]"        # memory-maze, mujoco<4, gym==0.26.2; MUJOCO_GL=egl
    python benchmarks/memory_maze.py --quick                 # about 10 minutes on 2 cores
    python benchmarks/memory_maze.py                         # 9x9 mazes, the documented run
    python benchmarks/memory_maze.py --maze-size 11 --seed 1 --out runs/mm11
    python benchmarks/memory_maze.py --quick --memory-pose-encoding rays --memory-time-embedding

Data. A scripted explorer (``maze_trajectories.py``) walks breadth-first paths between cell
centres to the cells it has not seen for the longest time, so episodes cover the maze and come
back to places after long absences, often from another direction. Training episodes and held-out
evaluation episodes live in different mazes (other maze seeds). Episodes are generated in
parallel processes once and cached (``~/.cache/hybrid-cdit/memory_maze``, ``$HYBRID_CDIT_CACHE``
overrides the root). Every ``--stride``-th camera frame is used, at ``--size`` pixels square,
in pixel space (RGB scaled to ``[-1, 1]``); poses are ``(x, y, yaw)`` in cells and radians.

Models. A CDiT and a HybridCDiT with the same CDiT weights at initialisation are trained side by
side on the same batches, timesteps and noise (``side_by_side.py``: the DDPM loss with a v
target by default, ``--prediction eps`` for the epsilon target; cosine schedule). The hybrid's
memory for each sample is what its :class:`~hybrid_cdit.MemoryBuffer` holds at that point of the
episode under the protocol of ``maze_memory.py`` (a frame enters memory as it leaves the context
window; retrieval with the library's strategy), the same in training, one-step evaluation and
rollouts. By default the buffer holds a whole episode (capacity 250, as WorldMem keeps the whole
history) and ``pose`` retrieval uses a 2-cell distance scale and threshold 0.5:
``--memory-report-only`` measured that these find a frame of the target's place and heading for
99.9% of held-out revisit targets and activate memory for no novel target (capacity 50 with LRU:
37%; a 10-cell scale: 63% of novel targets active). For ``--withhold`` of the training samples
the hybrid's memory is withheld (all slots masked), so the hybrid stays a good model without
memory.

Evaluation, on the held-out episodes. Labels: a target is a *revisit* when a frame before the
context window lies within 1 cell and 45 degrees of it (not the identical pose), *novel* when no
frame before the context window lies within 2 cells. Figures: one-step DDIM PSNR (fixed noise)
for CDiT, HybridCDiT and HybridCDiT with memory withheld; the noise-prediction MSE ratio
hybrid/CDiT on revisit targets at fixed noise levels (plus two diagnostics: memory withheld and
an oracle memory holding the pixel-closest history frame); memory informativeness (pixel MSE of
the best retrieved frame, the last context frame and the closest history frame); autoregressive
rollouts of ``--rollout-length`` frames, generated frames becoming context and entering the
hybrid's memory (also run by the hybrid with its memory withheld, the rollouts' control); and the
figure of one rollout. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from maze_eval import (
    eps_errors,
    one_step_samples,
    rollout,
    rollout_figure,
    rollout_starts,
    to_unit,
)
from maze_memory import (
    MemorySchedule,
    MemorySettings,
    episode_tensors,
    informativeness,
    memory_for,
    model_inputs,
    pairwise_mse,
    replay_memory,
    retrieval_hits,
    slots_near,
)
from maze_trajectories import Episode, load_episodes, long_return_labels, revisit_labels
from side_by_side import (
    Diffusion,
    build_pair,
    format_table,
    load_cdit_weights,
    optimizer,
    psnr,
    set_warmup,
    train_step,
)
from torch import Tensor

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext
from hybrid_cdit.memory import wrap_angle

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
)
"""Keys the last printed JSON line always has."""


class Data:
    """Frames (model scale), poses, labels and memory schedule of a set of episodes."""

    def __init__(
        self, episodes: Sequence[Episode], args: argparse.Namespace, settings: MemorySettings
    ) -> None:
        frames, self.poses = episode_tensors(episodes, args.stride, args.size)
        self.frames = frames * 2 - 1
        labels = [revisit_labels(p.numpy(), settings.context) for p in self.poses]
        self.revisit = torch.stack([torch.from_numpy(r) for r, _ in labels])
        self.novel = torch.stack([torch.from_numpy(n) for _, n in labels])
        self.revisit[:, : settings.context] = False
        self.novel[:, : settings.context] = False
        self.schedule: MemorySchedule = replay_memory(self.poses, settings)
        self._pair_mse: Tensor | None = None

    @property
    def pair_mse(self) -> Tensor:
        """``(N, T, T)`` pixel MSE between frames of each episode (model scale), computed once."""
        if self._pair_mse is None:
            self._pair_mse = pairwise_mse(self.frames)
        return self._pair_mse

    @property
    def length(self) -> int:
        return int(self.frames.shape[1])


def settings_from(args: argparse.Namespace) -> MemorySettings:
    return MemorySettings(
        context=args.context,
        capacity=args.capacity,
        top_k=args.top_k,
        strategy=args.retrieval,
        threshold=args.threshold,
        scale=args.scale,
        write_policy=args.write_policy,
    )


def build_models(args: argparse.Namespace) -> tuple[CDiT, HybridCDiT]:
    arch = {
        "input_size": args.size,
        "context_size": args.context,
        "patch_size": args.patch_size,
        "in_channels": 3,
        "hidden_size": args.hidden,
        "depth": args.depth,
        "num_heads": args.heads,
        "mlp_ratio": 4.0,
        "learn_sigma": False,
    }
    memory_kwargs: dict[str, object] = {
        "memory_top_k": args.top_k,
        "memory_buffer_size": args.capacity,
        "retrieval": args.retrieval,
        "memory_retrieval_scale": args.scale,
        "spatial_similarity_threshold": args.threshold,
        "memory_activation_threshold": args.threshold,
        "memory_patch_size": args.memory_patch_size or args.patch_size,
        "memory_time_embedding": args.memory_time_embedding,
        "memory_pose_encoding": args.memory_pose_encoding,
        "camera_fov": math.radians(args.camera_fov),
        "memory_ray_alignment": args.memory_ray_alignment,
    }
    layers = args.memory_layers
    memory_kwargs["memory_layers"] = layers if layers else list(range(args.depth // 2, args.depth))
    return build_pair(arch, memory_kwargs, args.seed)


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60):d}m{int(seconds % 60):02d}s"


def train(
    args: argparse.Namespace,
    data: Data,
    cdit: CDiT,
    hybrid: HybridCDiT,
    diff: Diffusion,
    settings: MemorySettings,
) -> dict[str, float]:
    """Side-by-side training (after ``--pretrain-steps`` of the CDiT alone, whose weights both
    models then start from); prints progress with the revisit losses and an ETA."""
    if args.pretrain_steps:
        pretrain(args, data, cdit, diff, settings)
        torch.manual_seed(args.seed + 2)  # the memory branch's fresh initial state
        load_cdit_weights(hybrid, cdit)
    gen = torch.Generator().manual_seed(args.seed + 100)
    opts = [
        optimizer(cdit, args.lr, args.lr),
        optimizer(hybrid, args.lr, args.lr * args.memory_lr),
    ]
    n, t_len = data.frames.shape[:2]
    names = ("cdit", "hybrid", "cdit_rev", "hybrid_rev", "hybrid_rev_withheld")
    window: dict[str, list[float]] = {k: [] for k in names}
    start = time.perf_counter()
    cdit.train()
    hybrid.train()
    for step in range(1, args.steps + 1):
        set_warmup(opts, step, args.warmup)
        episode = torch.randint(0, n, (args.batch,), generator=gen)
        target = torch.randint(settings.context, t_len, (args.batch,), generator=gen)
        withheld = torch.rand(args.batch, generator=gen) < args.withhold
        inputs = model_inputs(data.frames, data.poses, episode, target, settings.context)
        memory = memory_for(data.frames, data.poses, data.schedule, episode, target, withheld)
        x_t, t, loss_target = diff.training_sample(inputs.x0, gen)
        losses = train_step(
            [(cdit, opts[0]), (hybrid, opts[1])],
            x_t,
            t,
            loss_target,
            inputs.y,
            inputs.x_cond,
            inputs.rel_t,
            memory,
            clip=args.clip,
        )
        rev = data.revisit[episode, target]
        for name, per_sample in zip(("cdit", "hybrid"), losses, strict=True):
            window[name].append(float(per_sample.mean()))
            if bool((rev & ~withheld).any()):
                window[name + "_rev"].append(float(per_sample[rev & ~withheld].mean()))
        if bool((rev & withheld).any()):
            window["hybrid_rev_withheld"].append(float(losses[1][rev & withheld].mean()))
        if step % args.log_every == 0 or step == args.steps:
            m = {k: sum(v) / max(1, len(v)) for k, v in window.items()}
            elapsed = time.perf_counter() - start
            eta = elapsed / step * (args.steps - step)
            ratio = m["hybrid_rev"] / max(m["cdit_rev"], 1e-12)
            print(
                f"[train {step:5d}/{args.steps} {100 * step / args.steps:3.0f}%] loss cdit "
                f"{m['cdit']:.4f} hybrid {m['hybrid']:.4f} | revisit cdit {m['cdit_rev']:.4f} "
                f"hybrid {m['hybrid_rev']:.4f} (x{ratio:.3f}) withheld "
                f"{m['hybrid_rev_withheld']:.4f} | {_duration(elapsed)} eta {_duration(eta)}",
                flush=True,
            )
            window = {k: [] for k in names}
    return {"train_seconds": time.perf_counter() - start}


def pretrain(
    args: argparse.Namespace, data: Data, cdit: CDiT, diff: Diffusion, settings: MemorySettings
) -> None:
    """``--pretrain-steps`` of the CDiT alone (the same loss, its own batches): the initial
    weights both models start from, as a user's trained CDiT is for fine-tuning a hybrid."""
    gen = torch.Generator().manual_seed(args.seed + 300)
    opt = optimizer(cdit, args.lr, args.lr)
    n, t_len = data.frames.shape[:2]
    start = time.perf_counter()
    cdit.train()
    for step in range(1, args.pretrain_steps + 1):
        set_warmup([opt], step, args.warmup)
        episode = torch.randint(0, n, (args.batch,), generator=gen)
        target = torch.randint(settings.context, t_len, (args.batch,), generator=gen)
        inputs = model_inputs(data.frames, data.poses, episode, target, settings.context)
        x_t, t, loss_target = diff.training_sample(inputs.x0, gen)
        (loss,) = train_step(
            [(cdit, opt)], x_t, t, loss_target, inputs.y, inputs.x_cond, inputs.rel_t, None,
            clip=args.clip,
        )  # fmt: skip
        if step % args.log_every == 0 or step == args.pretrain_steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / step * (args.pretrain_steps - step)
            print(
                f"[pretrain {step:5d}/{args.pretrain_steps}] loss cdit {float(loss.mean()):.4f}"
                f" | {_duration(elapsed)} eta {_duration(eta)}",
                flush=True,
            )


def _eval_targets(data: Data, limit: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """All novel targets and up to ``limit`` revisit targets (evenly drawn), as ``(episode,
    target)`` long tensors."""
    rev = data.revisit.nonzero()
    nov = data.novel.nonzero()
    if rev.shape[0] > limit:
        rev = rev[torch.randperm(rev.shape[0], generator=gen)[:limit].sort().values]
    both = torch.cat([rev, nov])
    return both[:, 0], both[:, 1]


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


def evaluate(
    args: argparse.Namespace,
    data: Data,
    cdit: CDiT,
    hybrid: HybridCDiT,
    diff: Diffusion,
    settings: MemorySettings,
) -> dict[str, object]:
    """Every figure of the summary but ``seconds``, plus the rollouts for the figure."""
    cdit.eval()
    hybrid.eval()
    gen = torch.Generator().manual_seed(args.seed + 20_000)
    episode, target = _eval_targets(data, args.max_revisit_targets, gen)
    is_rev = data.revisit[episode, target]
    is_nov = data.novel[episode, target]
    result: dict[str, object] = {
        "revisit_targets": int(is_rev.sum()),
        "novel_targets": int(is_nov.sum()),
        "revisit_targets_all": int(data.revisit.sum()),
        "eval_frames": int(data.revisit.shape[0] * (data.length - settings.context)),
    }

    result["informativeness"] = memory_report(data, settings)

    # noise-prediction error at fixed levels
    print(f"[eval] noise-prediction error at t={args.eval_t} on {len(episode)} targets", flush=True)
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
        episode,
        target,
        diff,
        args.eval_t,
        settings,
        seed=args.seed + 30_000,
    )
    eps_table: dict[str, dict[str, float]] = {}
    for split, sel in (("revisit", is_rev), ("novel", is_nov)):
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
    psnrs = one_step_samples(
        {"cdit": (cdit, False), "hybrid": (hybrid, True), "hybrid_no_memory": (hybrid, False)},
        data.frames,
        data.poses,
        data.schedule,
        episode,
        target,
        diff,
        settings,
        ddim_steps=args.ddim_steps,
        seed=args.seed + 40_000,
    )
    for split, sel in (("revisit", is_rev), ("novel", is_nov)):
        for name, values in psnrs.items():
            result[f"{split}_psnr_{name}"] = float(values[sel].mean())
    rev_active = data.schedule.mask[episode, target].any(1) & is_rev
    result["revisit_active_psnr_cdit"] = float(psnrs["cdit"][rev_active].mean())
    result["revisit_active_psnr_hybrid"] = float(psnrs["hybrid"][rev_active].mean())

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
        use_memory=True, **common,
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
            use_memory=True, on_memory=record, **common,
        )  # fmt: skip
        out[f"long_rollout_hit_rate_{name}"] = float(hits[marked].float().mean())
    for name, frames in generated.items():
        p = psnr(to_unit(frames).flatten(0, 1), to_unit(truth).flatten(0, 1)).view_as(marked)
        out[f"long_rollout_revisit_psnr_{name}"] = float(p[marked].mean())
    return out


def print_tables(result: dict[str, object]) -> None:
    rows = []
    for split in ("revisit", "novel"):
        for name in ("cdit", "hybrid", "hybrid_no_memory"):
            rows.append([split, name, float(result[f"{split}_psnr_{name}"])])  # type: ignore[arg-type]
    rows.append(["rollout revisit", "cdit", float(result["rollout_revisit_psnr_cdit"])])  # type: ignore[arg-type]
    rows.append(["rollout revisit", "hybrid", float(result["rollout_revisit_psnr_hybrid"])])  # type: ignore[arg-type]
    rows.append(
        [
            "rollout revisit",
            "hybrid_no_memory",
            float(result["rollout_revisit_psnr_hybrid_no_memory"]),  # type: ignore[arg-type]
        ]
    )
    for name in ("cdit", "lru", "coverage", "coverage_route", "whole_episode"):
        key = f"long_rollout_revisit_psnr_{name}"
        if key in result:
            hit = result.get(f"long_rollout_hit_rate_{name}")
            label = name if hit is None else f"{name} (memory hit rate {float(hit):.2f})"  # type: ignore[arg-type]
            rows.append(["long-return rollout", label, float(result[key])])  # type: ignore[arg-type]
    print(format_table(["PSNR (dB)", "model", "value"], rows))
    eps = result["eps_mse"]
    assert isinstance(eps, dict)
    levels = [k for k in eps["revisit_cdit"] if k != "mean"]
    rows = []
    for key, values in eps.items():
        split, name = key.split("_", 1)
        base = eps[f"{split}_cdit"]["mean"]
        rows.append(
            [split, name, *(values[lv] for lv in levels), values["mean"], values["mean"] / base]
        )
    print(format_table(["eps MSE", "model", *levels, "mean", "/cdit"], rows))
    info = result["informativeness"]
    assert isinstance(info, dict)
    print(format_table(["memory informativeness (revisit targets)", "value"], list(info.items())))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--maze-size", type=int, choices=(9, 11, 13, 15), default=9)
    p.add_argument("--seed", type=int, default=0, help="training mazes, model init, noise")
    p.add_argument("--quick", action="store_true", help="a smaller run (about 10 minutes)")
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
    p.add_argument("--steps", type=int, default=None, help="default 2000 (quick 400)")
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="CDiT-only steps before side-by-side training; default 1000 (quick 300)",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--memory-lr", type=float, default=10.0, help="memory lr / --lr")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--withhold", type=float, default=0.3, help="share of samples without memory")
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
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument(
        "--memory-report-only",
        action="store_true",
        help="only the retrieval and informativeness report on the held-out episodes (no training)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "train_episodes": 8 if quick else 16,
        "eval_episodes": 3 if quick else 6,
        "steps": 400 if quick else 2000,
        "pretrain_steps": 300 if quick else 1000,
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
    """Generate or load episodes (unless given), train, evaluate, print the tables and write
    the figure; return the summary."""
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    if eval_episodes is None:
        eval_episodes = load_episodes(
            args.maze_size, 1000 + args.seed, args.eval_episodes, args.env_steps,
            cache_dir=args.cache_dir, workers=args.workers,
        )  # fmt: skip
    if train_episodes is None and not args.memory_report_only:
        train_episodes = load_episodes(
            args.maze_size, args.seed, args.train_episodes, args.env_steps,
            cache_dir=args.cache_dir, workers=args.workers,
        )  # fmt: skip
    data_seconds = time.perf_counter() - start
    if args.memory_report_only:
        report = memory_report(Data(eval_episodes, args, settings), settings)
        print(
            format_table(
                ["memory report (held-out revisit targets)", "value"], list(report.items())
            )
        )
        return {**report, **vars(settings), "seconds": round(time.perf_counter() - start, 1)}
    assert train_episodes is not None
    train_data = Data(train_episodes, args, settings)
    eval_data = Data(eval_episodes, args, settings)
    diff = Diffusion(prediction=args.prediction)
    cdit, hybrid = build_models(args)
    print(
        f"{len(train_episodes)} training / {len(eval_episodes)} held-out episodes of "
        f"{train_data.length} frames ({args.size}x{args.size}, every {args.stride} steps); "
        f"CDiT {sum(p.numel() for p in cdit.parameters()):,} params, memory branch "
        f"{sum(p.numel() for p in hybrid.memory_parameters()):,} params in layers "
        f"{hybrid.memory_layers}, memory_patch_size {hybrid.memory_patch_size}, retrieval "
        f"{settings.strategy!r} k={settings.top_k} threshold {settings.threshold} scale "
        f"{settings.scale} capacity {settings.capacity} write policy {settings.write_policy!r}",
        flush=True,
    )
    info = train(args, train_data, cdit, hybrid, diff, settings)
    result = evaluate(args, eval_data, cdit, hybrid, diff, settings)
    figure = result.pop("_figure")
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
        seed=args.seed,
        quick=args.quick,
        steps=args.steps,
        pretrain_steps=args.pretrain_steps,
        batch=args.batch,
        lr=args.lr,
        prediction=args.prediction,
        memory_lr=args.lr * args.memory_lr,
        withhold=args.withhold,
        hidden=args.hidden,
        depth=args.depth,
        patch_size=args.patch_size,
        memory_patch_size=hybrid.memory_patch_size,
        memory_time_embedding=hybrid.memory_time_embedding,
        memory_pose_encoding=hybrid.memory_pose_encoding,
        camera_fov=round(math.degrees(hybrid.camera_fov), 3),
        memory_ray_alignment=hybrid.memory_ray_alignment,
        memory_layers=list(hybrid.memory_layers),
        retrieval=settings.strategy,
        top_k=settings.top_k,
        threshold=settings.threshold,
        scale=settings.scale,
        capacity=settings.capacity,
        write_policy=settings.write_policy,
        threads=args.threads,
        data_seconds=round(data_seconds, 1),
        train_seconds=round(info["train_seconds"], 1),
        cpu_seconds=round(_cpu_seconds() - cpu_start, 1),
        seconds=round(time.perf_counter() - start, 1),
    )
    if args.out is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the last line printed is the JSON summary."""
    summary = run(parse_args(argv))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
