"""Does the memory path learn to use memory? A revisit experiment that runs on a CPU.

    python benchmarks/revisit.py                          # library-default memory tokens
    python benchmarks/revisit.py --memory-patch-size 2    # full-resolution memory tokens
    python benchmarks/revisit.py --threads 1              # on a busy shared machine

``--threads`` defaults to 2. Where other processes compete for the cores, two OpenMP threads can
run several times slower than one (threads spin at barriers): use ``--threads 1`` there; the
summary reports ``cpu_seconds`` next to the wall time.

The world. Each trajectory lives in its own world: a ``grid x grid`` lattice of places, four
headings, and one fixed random latent ``(C, H, W)`` (unit Gaussian) per (place, heading) that the
agent sees whenever it stands there facing that way. A fresh world is drawn for every trajectory,
so what the agent sees at a (place, heading) is unpredictable from anything but having seen it
before in the same trajectory; nothing can be memorised across trajectories. Agents move one
place forward or turn by 90 degrees in place; actions are NWM's ``(dx, dy, dyaw)`` in the frame of
the current pose, and absolute poses come from the library's ``poses_from_actions``. Most
trajectories walk a short random prefix and then go round a rectangular loop several times (the
loop comes back to earlier places and headings long after the context window has moved on); the
rest are random walks (few revisits). No action undoes the previous one, so a target is never
identical to a context frame; targets equal to a context frame are still detected and left out of
both evaluation splits.

Training. A CDiT and a HybridCDiT with the same CDiT weights at initialisation (the hybrid loads
the CDiT's state dict; its memory branch starts function-preserving) are trained side by side on
the same batches, timesteps and noise with a minimal DDPM noise-prediction loss (cosine betas,
1000 steps, epsilon prediction, ``learn_sigma=False``). Every batch draws fresh worlds. The hybrid
gets a ``MemoryContext`` retrieved by the library (``select_memory``, strategy ``"pose"``, the
model's ``spatial_similarity_threshold``) from the sample's own history: the clean latents of the
trajectory before the context window, queried with the target's pose.

Evaluation. Held-out trajectories (other seed), every target frame, split into revisit frames
(the place and heading were observed in the history, before the context window) and novel frames.
The noise-prediction MSE at fixed timesteps (100, 300, 500, 700 by default) is reported for the
CDiT, the HybridCDiT with its memory and the HybridCDiT with ``memory=None`` (ablation), next to
the error of the best possible predictor without memory (``alpha_bar`` for unit-Gaussian latents).
The last printed line is one JSON object with the summary figures (means over the timesteps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from side_by_side import Diffusion, build_pair, format_table, set_warmup, train_step
from side_by_side import optimizer as make_optimizer
from side_by_side import predict as predict_eps
from torch import Tensor

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext
from hybrid_cdit.memory import gather_slots, poses_from_actions, select_memory

FORWARD, LEFT, RIGHT = 0, 1, 2
"""Action codes: one place forward, turn left (+90 degrees), turn right (-90 degrees)."""

HEADINGS = torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1]])
"""Grid step of heading ``h`` (yaw ``h * pi / 2``, counter-clockwise from +x)."""


# ------------------------------------------------------------------------------------ world


@dataclass(frozen=True)
class WorldConfig:
    """Shape of the synthetic navigation world and its trajectories.

    Attributes:
        grid: places per side.
        cell: distance between neighbouring places, in pose units. The library's ``"pose"``
            score at the default distance scale (10) is ``exp(-cell / 10)`` for a neighbour
            facing the same way; a cell above 3.57 puts neighbours under the 0.7 threshold.
        length: frames per trajectory ``T``.
        context: context frames of the model.
        channels: latent channels ``C``.
        size: latent side ``H = W``.
        loop_fraction: share of trajectories that go round a loop after their prefix.
        max_prefix: longest random-walk prefix before a loop.
        max_side: longest side of a loop, in places.
        p_forward: probability of a forward move in a random walk (when not blocked).
        obs_noise: standard deviation of fresh noise added to every observation (0: a revisit
            sees exactly the same latent as before).
    """

    grid: int = 6
    cell: float = 4.0
    length: int = 24
    context: int = 2
    channels: int = 4
    size: int = 8
    loop_fraction: float = 0.8
    max_prefix: int = 4
    max_side: int = 2
    p_forward: float = 0.6
    obs_noise: float = 0.0


@dataclass(frozen=True)
class Trajectories:
    """A pool of trajectory layouts (no latents: those are drawn per use, see :func:`render`).

    Attributes:
        actions: ``(N, T-1, 3)`` NWM actions ``(dx, dy, dyaw)``, action ``t`` leads from frame
            ``t`` to frame ``t+1``.
        poses: ``(N, T, 3)`` absolute poses ``(x, y, yaw)`` of the frames.
        keys: ``(N, T)`` id of the (place, heading) each frame sees.
        first: ``(N, T)`` index of the first frame of the trajectory with the same key.
        revisit: ``(N, T)`` the key was seen in the history (frames before the context window).
        in_context: ``(N, T)`` the key equals that of a context frame.
    """

    actions: Tensor
    poses: Tensor
    keys: Tensor
    first: Tensor
    revisit: Tensor
    in_context: Tensor

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def _room(pos: Tensor, grid: int) -> Tensor:
    """``(N, 2)`` grid positions -> ``(N, 4)`` places free ahead for each heading."""
    x, y = pos[:, 0], pos[:, 1]
    return torch.stack([grid - 1 - x, grid - 1 - y, x, y], dim=1)


def _choose_loops(
    pos: Tensor, head: Tensor, prev: Tensor, cfg: WorldConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pick a rectangular loop from the current state of every trajectory (vectorised).

    The loop starts where the agent stands: first side along heading ``h1`` for ``a`` places,
    then a turn in direction ``turn`` (+1 left, -1 right), ``b`` places, and so on round the
    rectangle. Before the first lap the agent turns in place to ``h1``.

    Returns:
        ``(a, b, turn, pre_count, pre_code)``: sides, turn direction, number of turns in place
        before the first lap and their action code.
    """
    n = pos.shape[0]
    room = _room(pos, cfg.grid)  # (N, 4)
    h1 = torch.arange(4).repeat_interleave(2)  # candidates (h1, turn): 8 of them
    turn = torch.tensor([1, -1]).repeat(4)
    ok = (room[:, h1] >= 1) & (room[:, (h1 + turn) % 4] >= 1)  # (N, 8)
    pick = torch.where(ok, torch.rand(n, 8, generator=gen), -1.0).argmax(1)
    h1, turn = h1[pick], turn[pick]
    rows = torch.arange(n)
    side_a = room[rows, h1].clamp(max=cfg.max_side)
    side_b = room[rows, (h1 + turn) % 4].clamp(max=cfg.max_side)
    a = 1 + (torch.rand(n, generator=gen) * side_a).long()
    b = 1 + (torch.rand(n, generator=gen) * side_b).long()
    delta = (h1 - head) % 4
    # Turn left `delta` times or right `4 - delta` times: the shorter, unless its first turn
    # would undo the previous action (a target equal to a context frame).
    left = (delta == 1) | ((delta == 2) & (prev != RIGHT))
    undo = (left & (prev == RIGHT)) | (~left & (prev == LEFT))
    left = torch.where(undo & ((delta == 1) | (delta == 3)), ~left, left)
    count = torch.where(left, delta, (4 - delta) % 4)
    code = torch.where(left, LEFT, RIGHT)
    return a, b, turn, count, code


def make_trajectories(n: int, cfg: WorldConfig, gen: torch.Generator) -> Trajectories:
    """Draw ``n`` trajectory layouts: random-walk prefix, then (mostly) laps of a loop.

    Vectorised over trajectories; the only Python loop runs over the ``T - 1`` steps.
    """
    steps = cfg.length - 1
    pos = torch.randint(0, cfg.grid, (n, 2), generator=gen)
    head = torch.randint(0, 4, (n,), generator=gen)
    start_pos, start_head = pos.clone(), head.clone()
    looping = torch.rand(n, generator=gen) < cfg.loop_fraction
    loop_start = torch.randint(0, cfg.max_prefix + 1, (n,), generator=gen)
    loop_start = torch.where(looping, loop_start, cfg.length)
    zeros = torch.zeros(n, dtype=torch.long)
    a, b, turn, pre_count, pre_code = zeros, zeros, zeros, zeros, zeros
    prev = torch.full((n,), -1)
    codes = torch.empty(n, steps, dtype=torch.long)
    positions = [pos]
    heads = [head]
    for t in range(steps):
        # random walk: forward unless blocked, else a turn that does not undo the previous one
        ahead = pos + HEADINGS[head]
        blocked = ((ahead < 0) | (ahead >= cfg.grid)).any(1)
        turn_code = torch.where(torch.rand(n, generator=gen) < 0.5, LEFT, RIGHT)
        turn_code = torch.where(prev == LEFT, LEFT, torch.where(prev == RIGHT, RIGHT, turn_code))
        go = ~blocked & (torch.rand(n, generator=gen) < cfg.p_forward)
        code = torch.where(go, FORWARD, turn_code)
        # loops: chosen when they start, then followed
        new = loop_start == t
        if bool(new.any()):
            chosen = _choose_loops(pos, head, prev, cfg, gen)
            a, b, turn, pre_count, pre_code = (
                torch.where(new, c, old)
                for c, old in zip(chosen, (a, b, turn, pre_count, pre_code), strict=True)
            )
        s = t - loop_start
        phase = (s - pre_count).clamp(min=0) % (a + b + 2).clamp(min=1)
        corner = (phase == a) | (phase == a + b + 1)
        loop_code = torch.where(corner, torch.where(turn > 0, LEFT, RIGHT), FORWARD)
        loop_code = torch.where(s < pre_count, pre_code, loop_code)
        code = torch.where(s >= 0, loop_code, code)
        codes[:, t] = code
        pos = pos + torch.where((code == FORWARD)[:, None], HEADINGS[head], 0)
        head = (head + (code == LEFT).long() - (code == RIGHT).long()) % 4
        if bool(((pos < 0) | (pos >= cfg.grid)).any()):
            raise RuntimeError("a trajectory left the grid (generator bug)")
        prev = code
        positions.append(pos)
        heads.append(head)
    grid_pos = torch.stack(positions, 1)  # (N, T, 2)
    grid_head = torch.stack(heads, 1)  # (N, T)

    table = torch.tensor([[cfg.cell, 0.0, 0.0], [0.0, 0.0, math.pi / 2], [0.0, 0.0, -math.pi / 2]])
    actions = table[codes]  # (N, T-1, 3)
    start = torch.cat(
        [start_pos.float() * cfg.cell, (start_head.float() * math.pi / 2)[:, None]], dim=1
    )
    start[:, 2] = torch.atan2(torch.sin(start[:, 2]), torch.cos(start[:, 2]))
    poses = torch.cat([start[:, None], poses_from_actions(actions, start)], dim=1)
    _check_poses(poses, grid_pos, grid_head, cfg.cell)

    keys = (grid_pos[..., 0] * cfg.grid + grid_pos[..., 1]) * 4 + grid_head
    same = keys[:, :, None] == keys[:, None, :]  # (N, T target, T source)
    first = same.float().argmax(2)
    src = torch.arange(cfg.length)
    tgt = src[:, None]
    history = src[None, :] < tgt - cfg.context  # source before the context window
    window = (src[None, :] >= tgt - cfg.context) & (src[None, :] < tgt)
    revisit = (same & history).any(2)
    in_context = (same & window).any(2)
    return Trajectories(actions, poses, keys, first, revisit, in_context)


def _check_poses(poses: Tensor, grid_pos: Tensor, grid_head: Tensor, cell: float) -> None:
    """The library's integrated poses must agree with the generator's grid states."""
    yaw = grid_head.float() * math.pi / 2
    close = torch.allclose(poses[..., :2], grid_pos.float() * cell, atol=1e-3) and torch.allclose(
        torch.stack([torch.cos(poses[..., 2]), torch.sin(poses[..., 2])], -1),
        torch.stack([torch.cos(yaw), torch.sin(yaw)], -1),
        atol=1e-4,
    )
    if not close:
        raise RuntimeError("poses_from_actions disagrees with the grid states")


def render(traj: Trajectories, index: Tensor, cfg: WorldConfig, gen: torch.Generator) -> Tensor:
    """Fresh worlds for the trajectories ``index (B,)``: latents ``(B, T, C, H, W)``.

    One unit-Gaussian latent per (place, heading) visited, shared by every visit (plus
    ``obs_noise`` fresh noise per observation).
    """
    b = index.shape[0]
    shape = (b, cfg.length, cfg.channels, cfg.size, cfg.size)
    raw = torch.randn(shape, generator=gen)
    frames = gather_slots(raw, traj.first[index])
    if cfg.obs_noise > 0:
        frames = frames + cfg.obs_noise * torch.randn(shape, generator=gen)
    return frames


# ------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """Model inputs for one target frame per sample, plus what evaluation needs.

    Attributes:
        x0: ``(B, C, H, W)`` clean target latents.
        x_cond: ``(B, context, C, H, W)`` context latents.
        y: ``(B, 3)`` action from the last context frame to the target (positions in cells).
        rel_t: ``(B,)`` relative time of the target (one step).
        memory: the hybrid's memory, retrieved from each sample's history.
        revisit: ``(B,)`` the target was seen in the history.
        in_context: ``(B,)`` the target equals a context frame.
        hit: ``(B,)`` an unmasked retrieved slot shows the target's (place, heading).
    """

    x0: Tensor
    x_cond: Tensor
    y: Tensor
    rel_t: Tensor
    memory: MemoryContext
    revisit: Tensor
    in_context: Tensor
    hit: Tensor


def make_batch(
    traj: Trajectories,
    index: Tensor,
    target: Tensor,
    frames: Tensor,
    cfg: WorldConfig,
    *,
    top_k: int,
    threshold: float,
) -> Batch:
    """Assemble samples ``(index[i], target[i])`` from rendered ``frames (B, T, C, H, W)``.

    Memory: the library's ``"pose"`` retrieval over the sample's history (frames before the
    context window), queried with the target pose, batched over samples.
    """
    b = index.shape[0]
    rows = torch.arange(b)
    offsets = torch.arange(-cfg.context, 0)
    x_cond = frames[rows[:, None], target[:, None] + offsets]
    action = traj.actions[index, target - 1]
    y = action / torch.tensor([cfg.cell, cfg.cell, 1.0])
    poses = traj.poses[index]  # (B, T, 3)
    query = poses[rows, target]
    steps = torch.arange(cfg.length).expand(b, -1)
    valid = steps < (target - cfg.context)[:, None]
    chosen = select_memory(
        poses, query, top_k, valid=valid, steps=steps, strategy="pose", threshold=threshold
    )
    memory = MemoryContext(
        frames=gather_slots(frames, chosen.indices),
        poses=gather_slots(poses, chosen.indices),
        scores=chosen.scores,
        mask=chosen.mask,
        query_pose=query,
    )
    keys = traj.keys[index]
    slot_keys = gather_slots(keys, chosen.indices)
    hit = ((slot_keys == keys[rows, target][:, None]) & chosen.mask).any(1)
    return Batch(
        x0=frames[rows, target],
        x_cond=x_cond,
        y=y,
        rel_t=torch.ones(b),
        memory=memory,
        revisit=traj.revisit[index, target],
        in_context=traj.in_context[index, target],
        hit=hit,
    )


# ------------------------------------------------------------------------------------- models


def build_models(args: argparse.Namespace, cfg: WorldConfig) -> tuple[CDiT, HybridCDiT]:
    """A CDiT drawn with ``args.seed`` and a HybridCDiT holding the same CDiT weights."""
    arch = {
        "input_size": cfg.size,
        "context_size": cfg.context,
        "patch_size": args.patch_size,
        "in_channels": cfg.channels,
        "hidden_size": args.hidden,
        "depth": args.depth,
        "num_heads": args.heads,
        "mlp_ratio": 4.0,
        "learn_sigma": False,
    }
    memory_kwargs: dict[str, object] = {"memory_top_k": args.top_k, "retrieval": "pose"}
    if args.memory_layers is not None:
        memory_kwargs["memory_layers"] = args.memory_layers
    if args.memory_patch_size is not None:
        memory_kwargs["memory_patch_size"] = args.memory_patch_size
    if args.similarity_threshold is not None:
        memory_kwargs["spatial_similarity_threshold"] = args.similarity_threshold
    if args.activation_threshold is not None:
        memory_kwargs["memory_activation_threshold"] = args.activation_threshold
    if args.memory_pose_encoding is not None:
        memory_kwargs["memory_pose_encoding"] = args.memory_pose_encoding
    if args.memory_ray_alignment is not None:
        memory_kwargs["memory_ray_alignment"] = args.memory_ray_alignment
    return build_pair(arch, memory_kwargs, args.seed)


def predict(
    model: CDiT, batch: Batch, x_t: Tensor, t: Tensor, memory: MemoryContext | None
) -> Tensor:
    """Epsilon prediction of ``model`` (the first ``C`` output channels)."""
    return predict_eps(model, x_t, t, batch.y, batch.x_cond, batch.rel_t, memory)


# ----------------------------------------------------------------------------------- training


def train(
    args: argparse.Namespace, cfg: WorldConfig, cdit: CDiT, hybrid: HybridCDiT, diff: Diffusion
) -> dict[str, float]:
    """Train both models on the same batches, timesteps and noise; print progress."""
    gen = torch.Generator().manual_seed(args.seed + 100)
    pool = make_trajectories(args.pool, cfg, gen)
    opts = [
        make_optimizer(cdit, args.lr, args.lr),
        make_optimizer(hybrid, args.lr, args.lr * args.memory_lr),
    ]
    window: dict[str, list[float]] = {"cdit": [], "hybrid": [], "cdit_rev": [], "hybrid_rev": []}
    start = time.perf_counter()
    cdit.train()
    hybrid.train()
    for step in range(1, args.steps + 1):
        set_warmup(opts, step, args.warmup)
        index = torch.randint(0, len(pool), (args.batch,), generator=gen)
        target = torch.randint(cfg.context, cfg.length, (args.batch,), generator=gen)
        frames = render(pool, index, cfg, gen)
        batch = make_batch(
            pool, index, target, frames, cfg, top_k=args.top_k, threshold=_threshold(hybrid)
        )
        x_t, t, loss_target = diff.training_sample(batch.x0, gen)
        losses = train_step(
            list(zip((cdit, hybrid), opts, strict=True)),
            x_t,
            t,
            loss_target,
            batch.y,
            batch.x_cond,
            batch.rel_t,
            batch.memory,
            clip=args.clip,
        )
        for name, per_sample in zip(("cdit", "hybrid"), losses, strict=True):
            window[name].append(float(per_sample.mean()))
            if bool(batch.revisit.any()):
                window[name + "_rev"].append(float(per_sample[batch.revisit].mean()))
        if step % args.log_every == 0 or step == args.steps:
            means = {k: sum(v) / max(1, len(v)) for k, v in window.items()}
            print(
                f"step {step:5d}/{args.steps}  loss cdit {means['cdit']:.4f}  "
                f"hybrid {means['hybrid']:.4f}  | revisit cdit {means['cdit_rev']:.4f}  "
                f"hybrid {means['hybrid_rev']:.4f}  | {time.perf_counter() - start:6.1f}s",
                flush=True,
            )
            window = {k: [] for k in window}
    return {"train_seconds": time.perf_counter() - start}


def _threshold(hybrid: HybridCDiT) -> float:
    return float(hybrid.spatial_similarity_threshold)


# --------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    args: argparse.Namespace, cfg: WorldConfig, cdit: CDiT, hybrid: HybridCDiT, diff: Diffusion
) -> dict[str, object]:
    """Noise-prediction MSE per timestep on held-out trajectories, revisit vs novel frames."""
    cdit.eval()
    hybrid.eval()
    gen = torch.Generator().manual_seed(args.seed + 10_000)
    pool = make_trajectories(args.eval_trajectories, cfg, gen)
    frames_all = render(pool, torch.arange(len(pool)), cfg, gen)
    targets = torch.arange(cfg.context, cfg.length)
    index = torch.arange(len(pool)).repeat_interleave(len(targets))
    target = targets.repeat(len(pool))
    levels = torch.tensor(args.eval_t)
    eps_all = torch.randn(
        (len(levels), len(index), cfg.channels, cfg.size, cfg.size), generator=gen
    )
    names = ("cdit", "hybrid", "hybrid_no_memory")
    errors = {name: torch.empty(len(levels), len(index)) for name in names}
    revisit = torch.empty(len(index), dtype=torch.bool)
    in_context = torch.empty(len(index), dtype=torch.bool)
    hit = torch.empty(len(index), dtype=torch.bool)
    active = torch.empty(len(index), dtype=torch.bool)
    for lo in range(0, len(index), args.eval_batch):
        sl = slice(lo, lo + args.eval_batch)
        batch = make_batch(
            pool,
            index[sl],
            target[sl],
            frames_all[index[sl]],
            cfg,
            top_k=args.top_k,
            threshold=_threshold(hybrid),
        )
        revisit[sl], in_context[sl], hit[sl] = batch.revisit, batch.in_context, batch.hit
        active[sl] = hybrid.active_samples(batch.memory)
        for j, level in enumerate(levels.tolist()):
            t = torch.full((batch.x0.shape[0],), level, dtype=torch.long)
            eps = eps_all[j, sl]
            x_t = diff.noise(batch.x0, t, eps)
            runs = (
                ("cdit", cdit, None),
                ("hybrid", hybrid, batch.memory),
                ("hybrid_no_memory", hybrid, None),
            )
            for name, model, memory in runs:
                err = (predict(model, batch, x_t, t, memory) - eps).square().flatten(1).mean(1)
                errors[name][j, sl] = err
    splits = {"revisit": revisit & ~in_context, "novel": ~revisit & ~in_context}
    result: dict[str, object] = {}
    per_level: dict[str, dict[str, list[float]]] = {}
    for split, sel in splits.items():
        for name in names:
            values = errors[name][:, sel].mean(1)
            per_level[f"{split}_{name}"] = {"t": levels.tolist(), "mse": values.tolist()}
            result[f"{split}_mse_{name}"] = float(values.mean())
    ab = diff.alpha_bar[levels]
    var = 1.0 + cfg.obs_noise**2
    bayes = ab * var / (ab * var + 1 - ab)  # Var(eps | x_t) for Gaussian x0 of variance `var`
    result["mse_best_without_memory"] = float(bayes.mean())
    result["per_level"] = {**per_level, "best_without_memory": bayes.tolist()}
    result["eval_frames"] = {
        "revisit": int(splits["revisit"].sum()),
        "novel": int(splits["novel"].sum()),
        "target_in_context_excluded": int(in_context.sum()),
    }
    novel, rev = splits["novel"], splits["revisit"]
    result["retrieval"] = {
        "revisit_hit_rate": float(hit[rev].float().mean()),
        "revisit_active_rate": float(active[rev].float().mean()),
        "novel_active_rate": float(active[novel].float().mean()),
    }
    return result


def print_table(result: dict[str, object]) -> None:
    """Per-timestep noise-prediction MSE, and ratios to the CDiT."""
    per_level = result["per_level"]
    assert isinstance(per_level, dict)
    levels = per_level["revisit_cdit"]["t"]
    header = ["split", "model", *(f"t={t}" for t in levels), "mean", "/cdit"]
    rows: list[list[object]] = []
    for split in ("revisit", "novel"):
        base = float(result[f"{split}_mse_cdit"])  # type: ignore[arg-type]
        for name in ("cdit", "hybrid", "hybrid_no_memory"):
            values = per_level[f"{split}_{name}"]["mse"]
            mean = float(result[f"{split}_mse_{name}"])  # type: ignore[arg-type]
            rows.append([split, name, *values, mean, f"{mean / base:.3f}"])
    best = per_level["best_without_memory"]
    rows.append(["any", "best w/o memory", *best, sum(best) / len(best), ""])
    print(format_table(header, rows))


# ---------------------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the run reported in the benchmark's documentation)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=800, help="training steps (both models)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--memory-lr", type=float, default=1.0, help="memory lr / --lr (hybrid)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument(
        "--memory-patch-size", type=int, default=None, help="None: the library's default"
    )
    p.add_argument(
        "--memory-layers", type=_ints, default=None, help="e.g. 2,3; None: library default"
    )
    p.add_argument("--top-k", type=int, default=4, help="memory slots per sample")
    p.add_argument("--similarity-threshold", type=float, default=None, help="None: library's")
    p.add_argument("--activation-threshold", type=float, default=None, help="None: library's")
    p.add_argument(
        "--memory-pose-encoding", choices=("frame", "rays"), default=None, help="None: library's"
    )
    p.add_argument(
        "--memory-ray-alignment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="None: library's",
    )
    p.add_argument("--grid", type=int, default=6)
    p.add_argument("--cell", type=float, default=4.0, help="place spacing in pose units")
    p.add_argument("--length", type=int, default=24, help="frames per trajectory")
    p.add_argument("--loop-fraction", type=float, default=0.8)
    p.add_argument("--obs-noise", type=float, default=0.0)
    p.add_argument("--pool", type=int, default=8192, help="training trajectory layouts")
    p.add_argument("--eval-trajectories", type=int, default=128)
    p.add_argument("--eval-t", type=_ints, default=[100, 300, 500, 700])
    p.add_argument("--eval-batch", type=int, default=512)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return p.parse_args(argv)


def world_config(args: argparse.Namespace) -> WorldConfig:
    """The world described by the command line."""
    return WorldConfig(
        grid=args.grid,
        cell=args.cell,
        length=args.length,
        loop_fraction=args.loop_fraction,
        obs_noise=args.obs_noise,
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    """Train, evaluate, print the table; return the summary (the JSON line's content)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = world_config(args)
    diff = Diffusion()
    cdit, hybrid = build_models(args, cfg)
    print(
        f"CDiT {sum(p.numel() for p in cdit.parameters()):,} params; HybridCDiT memory branch "
        f"{sum(p.numel() for p in hybrid.memory_parameters()):,} params, layers "
        f"{hybrid.memory_layers}, memory_patch_size {hybrid.memory_patch_size}, "
        f"retrieval 'pose' threshold {hybrid.spatial_similarity_threshold}, "
        f"activation {hybrid.memory_activation_threshold}",
        flush=True,
    )
    info = train(args, cfg, cdit, hybrid, diff)
    result = evaluate(args, cfg, cdit, hybrid, diff)
    print_table(result)
    summary: dict[str, object] = {
        key: result[key]
        for key in (
            "revisit_mse_cdit",
            "revisit_mse_hybrid",
            "revisit_mse_hybrid_no_memory",
            "novel_mse_cdit",
            "novel_mse_hybrid",
            "novel_mse_hybrid_no_memory",
            "mse_best_without_memory",
        )
    }
    summary["revisit_ratio"] = float(result["revisit_mse_hybrid"]) / float(  # type: ignore[arg-type]
        result["revisit_mse_cdit"]  # type: ignore[arg-type]
    )
    summary["novel_ratio"] = float(result["novel_mse_hybrid"]) / float(  # type: ignore[arg-type]
        result["novel_mse_cdit"]  # type: ignore[arg-type]
    )
    summary.update(
        per_level=result["per_level"],
        eval_frames=result["eval_frames"],
        retrieval=result["retrieval"],
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        memory_lr=args.lr * args.memory_lr,
        hidden=args.hidden,
        depth=args.depth,
        patch_size=args.patch_size,
        memory_patch_size=hybrid.memory_patch_size,
        memory_layers=list(hybrid.memory_layers),
        top_k=args.top_k,
        seed=args.seed,
        threads=args.threads,
        train_seconds=round(info["train_seconds"], 1),
        seconds=round(time.perf_counter() - start, 1),
        cpu_seconds=round(time.process_time() - cpu_start, 1),
    )
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the last line printed is the JSON summary."""
    summary = run(parse_args(argv))
    print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
