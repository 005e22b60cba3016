"""Training stage of the Memory Maze benchmark: the models, CDiT pretraining, and side-by-side
training of every learned model on the same batches, timesteps and noise
(:func:`benchmarks.side_by_side.train_step`).

The hybrid's memory for each sample is what its buffer holds at that point of the episode under
the protocol of :mod:`benchmarks.maze.protocol`; for ``--withhold`` of the samples it is withheld
(all slots masked), so the hybrid stays a good model without memory. With ``--tie-backbone`` the
hybrid's CDiT weights are the CDiT's throughout (:func:`follow_cdit`), so without memory it is
exactly the CDiT, and only its memory branch learns from its own loss.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from statistics import mean

import torch
from torch import Tensor

from benchmarks.maze.baselines import Learner, load_wider_context
from benchmarks.maze.noise import PoseNoise, corrupt
from benchmarks.maze.protocol import (
    Batch,
    Data,
    MemorySchedule,
    MemorySettings,
    batch_for,
    model_inputs,
    replay_memory,
)
from benchmarks.side_by_side import (
    Diffusion,
    build_pair,
    load_cdit_weights,
    optimizer,
    set_warmup,
    train_step,
    train_step_each,
)
from hybrid_cdit import CDiT, HybridCDiT

__all__ = [
    "HeldOutBatch",
    "NoisyMemory",
    "architecture",
    "build_models",
    "duration",
    "follow_cdit",
    "pretrain",
    "train",
    "train_pose_noise",
]


def architecture(args: argparse.Namespace) -> dict[str, object]:
    """The CDiT constructor arguments of the flags."""
    return {
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


def build_models(args: argparse.Namespace) -> tuple[CDiT, HybridCDiT]:
    """The CDiT and the HybridCDiT of the flags, with the same CDiT weights."""
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
    return build_pair(architecture(args), memory_kwargs, args.seed)


def duration(seconds: float) -> str:
    """``seconds`` as ``MmSSs``."""
    return f"{int(seconds // 60):d}m{int(seconds % 60):02d}s"


@dataclass(frozen=True)
class HeldOutBatch:
    """A fixed held-out batch for learning curves: samples, timesteps, noise and loss target."""

    batch: Batch
    x_t: Tensor
    t: Tensor
    target: Tensor

    @classmethod
    def draw(
        cls, data: Data, size: int, diff: Diffusion, settings: MemorySettings, seed: int
    ) -> HeldOutBatch:
        """``size`` random ``(episode, target)`` samples of ``data`` with fixed noise."""
        gen = torch.Generator().manual_seed(seed)
        n, t_len = data.frames.shape[:2]
        episode = torch.randint(0, n, (size,), generator=gen)
        target = torch.randint(settings.context, t_len, (size,), generator=gen)
        batch = batch_for(
            data.frames, data.poses, data.schedule, episode, target, settings.context,
            memory_poses=data.memory_poses,
        )  # fmt: skip
        x_t, t, loss_target = diff.training_sample(batch.x0, gen)
        return cls(batch=batch, x_t=x_t, t=t, target=loss_target)

    @torch.no_grad()
    def losses(self, learners: Sequence[Learner]) -> dict[str, float]:
        """Each learner's mean DDPM loss on the batch (in eval mode; modes restored)."""
        out = {}
        for learner in learners:
            mode = learner.model.training
            learner.model.eval()
            pred = learner.output(self.x_t, self.t, self.batch)
            out[learner.name] = float((pred - self.target).square().mean())
            learner.model.train(mode)
        return out


def follow_cdit(hybrid: HybridCDiT, cdit: CDiT) -> None:
    """Copy ``cdit``'s weights into ``hybrid``'s CDiT parameters in place (memory parameters and
    optimiser state untouched); a CDiT parameter the hybrid lacks raises ``RuntimeError``."""
    source = dict(cdit.named_parameters())
    target = dict(hybrid.named_parameters())
    missing = [name for name in source if name not in target]
    if missing:
        raise RuntimeError(f"CDiT parameters the hybrid lacks: {missing}")
    with torch.no_grad():
        for name, value in source.items():
            target[name].copy_(value)


def train_pose_noise(args: argparse.Namespace) -> PoseNoise | None:
    """The noise of ``--train-pose-jitter`` / ``--train-pose-drift`` (None without either)."""
    noise: PoseNoise | None = getattr(args, "train_pose_jitter", None) or getattr(
        args, "train_pose_drift", None
    )
    return noise


class NoisyMemory:
    """The memory poses and schedule of training batches under ``noise``: the training poses
    corrupted afresh every ``every`` batches (an epoch), from a generator of its own seeded by
    ``seed``; without noise, the exact ones of ``data``."""

    def __init__(
        self,
        data: Data,
        settings: MemorySettings,
        noise: PoseNoise | None,
        seed: int,
        every: int,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.data, self.settings, self.noise, self.every = data, settings, noise, every
        self.gen = torch.Generator().manual_seed(seed)
        self.poses: Tensor = data.memory_poses
        self.schedule: MemorySchedule = data.schedule
        self._epoch = -1

    def at(self, step: int) -> tuple[Tensor, MemorySchedule]:
        """The memory poses ``(N, T, 3)`` and schedule for the batch of ``step`` (from 1; a
        new draw whenever ``step`` enters an epoch not drawn yet)."""
        epoch = (step - 1) // self.every
        if self.noise is not None and epoch != self._epoch:
            self.poses = corrupt(self.data.poses, self.noise, self.gen)
            self.schedule = replay_memory(self.poses, self.settings)
            self._epoch = epoch
        return self.poses, self.schedule


def train(
    args: argparse.Namespace,
    data: Data,
    cdit: CDiT,
    hybrid: HybridCDiT,
    diff: Diffusion,
    settings: MemorySettings,
    baselines: Sequence[Learner] = (),
    held_out: HeldOutBatch | None = None,
    *,
    initialised: bool = False,
    train_core: bool = True,
) -> dict[str, object]:
    """Side-by-side training of the CDiT, the hybrid and the learned ``baselines`` on the same
    batches, timesteps and noise (after ``--pretrain-steps`` of the CDiT alone, whose weights
    every model then starts from); prints progress with the revisit losses and an ETA.
    ``initialised`` models (``--init-from``: weights of an earlier run) skip pretraining and
    keep their own weights; their optimisers start afresh, with the warm-up. Without
    ``train_core`` (``--baselines-only``) the CDiT is pretrained and then only the ``baselines``
    train, on the batches, timesteps and noise they get beside the CDiT and the hybrid (no
    model's forward draws random numbers, so each learner's updates do not depend on the
    others).

    With ``--train-pose-jitter`` / ``--train-pose-drift``, the memory of the training batches
    (retrieval, memory and query poses, the retrieved-context poses) sees the training poses
    corrupted afresh every epoch (every ``ceil(N (T - context) / batch)`` batches, from a
    generator seeded by ``--seed``); actions and context keep the true poses.

    Returns:
        ``train_seconds``, and with ``held_out`` the learning curves ``curve``: rows of the
        step and each learner's held-out loss, every ``--curve-every`` steps (and at 0).
    """
    if not initialised:
        if args.pretrain_steps:
            pretrain(args, data, cdit, diff, settings)
            torch.manual_seed(args.seed + 2)  # the memory branch's fresh initial state
            load_cdit_weights(hybrid, cdit)
        for baseline in baselines:
            load_wider_context(baseline.model, cdit)
    tied = args.tie_backbone and train_core
    if tied:
        hybrid.freeze_cdit()
        follow_cdit(hybrid, cdit)
    core = [Learner("cdit", cdit, "recent"), Learner("hybrid", hybrid, "memory")]
    learners = [*(core if train_core else []), *baselines]
    gen = torch.Generator().manual_seed(args.seed + 100)
    core_opts = [
        optimizer(cdit, args.lr, args.lr),
        optimizer(hybrid, args.lr, args.lr * args.memory_lr),
    ]
    opts = [
        *(core_opts if train_core else []),
        *(optimizer(b.model, args.lr, args.lr) for b in baselines),
    ]
    n, t_len = data.frames.shape[:2]
    epoch = math.ceil(n * (t_len - settings.context) / args.batch)
    memory = NoisyMemory(data, settings, train_pose_noise(args), args.seed + 400, epoch)
    names = ("cdit", "hybrid", "cdit_rev", "hybrid_rev", "hybrid_rev_withheld")
    window: dict[str, list[float]] = {k: [] for k in names}
    curve: list[dict[str, float]] = []
    if held_out is not None:
        curve.append({"step": 0, **held_out.losses(learners)})
    start = time.perf_counter()
    for learner in learners:
        learner.model.train()
    for step in range(1, args.steps + 1):
        set_warmup(opts, step, args.warmup)
        episode = torch.randint(0, n, (args.batch,), generator=gen)
        target = torch.randint(settings.context, t_len, (args.batch,), generator=gen)
        withheld = torch.rand(args.batch, generator=gen) < args.withhold
        memory_poses, schedule = memory.at(step)
        batch = batch_for(
            data.frames, data.poses, schedule, episode, target, settings.context, withheld,
            memory_poses=memory_poses,
        )  # fmt: skip
        x_t, t, loss_target = diff.training_sample(batch.x0, gen)
        losses = train_step_each(
            [
                (partial(learner.output, x_t, t, batch), learner.model, opt)
                for learner, opt in zip(learners, opts, strict=True)
            ],
            loss_target,
            clip=args.clip,
        )
        if tied:
            follow_cdit(hybrid, cdit)
        if held_out is not None and (step % args.curve_every == 0 or step == args.steps):
            curve.append({"step": step, **held_out.losses(learners)})
        if not train_core:
            for learner, per_sample in zip(learners, losses, strict=True):
                window.setdefault(learner.name, []).append(float(per_sample.mean()))
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - start
                means = " ".join(f"{b.name} {mean(window.pop(b.name)):.4f}" for b in learners)
                print(
                    f"[train {step:5d}/{args.steps} {100 * step / args.steps:3.0f}%] loss "
                    f"{means} | {duration(elapsed)} eta "
                    f"{duration(elapsed / step * (args.steps - step))}",
                    flush=True,
                )
            continue
        rev = data.revisit[episode, target]
        for name, per_sample in zip(("cdit", "hybrid"), losses, strict=False):
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
                f"{m['hybrid_rev_withheld']:.4f} | {duration(elapsed)} eta {duration(eta)}",
                flush=True,
            )
            window = {k: [] for k in names}
    info: dict[str, object] = {"train_seconds": time.perf_counter() - start}
    if held_out is not None:
        info["curve"] = curve
    return info


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
                f" | {duration(elapsed)} eta {duration(eta)}",
                flush=True,
            )
