"""One optimiser step of a user-owned diffusion loss with memory from trajectory history.

The library ships no training loop. This script owns a minimal DDPM noise-prediction loss
(what NWM's ``GaussianDiffusion.training_losses`` computes as its MSE term) and shows where
memory enters a training step:

- a dataset of trajectories (latent frames and the NWM actions ``(dx, dy, dyaw)`` between them);
- a ``collate_fn`` that integrates each sample's actions into absolute poses
  (``poses_from_actions``), scores the frames seen before the target against the target's pose
  (``select_memory``, the pure retrieval function) and gathers only the selected frames;
- the training step encodes them (NWM: the VAE; here the dataset already stores latents), wraps
  them into a ``MemoryContext`` (``build_context``) and passes it as ``memory=`` to the model;
- separate learning rates for the memory branch and the CDiT weights
  (``memory_parameters()`` / ``cdit_parameters()``).

Run: ``python examples/training_step.py`` (a second or two after imports on a CPU).
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext
from hybrid_cdit.memory import (
    Selection,
    build_context,
    gather_slots,
    poses_from_actions,
    select_memory,
)

TINY: dict[str, Any] = {
    "input_size": 8,
    "context_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "depth": 6,
}
HEADS = 4
STEP_LENGTH = 4.0  # metres an action moves forward
SIDE = 3  # actions per side of the square loops (a lap is 4 * SIDE steps)


class Window(NamedTuple):
    """One training sample: the start of a trajectory up to the target frame ``t``.

    Attributes:
        frames: ``(t + 1, C, H, W)`` clean latents of frames ``0..t`` (the target last).
        actions: ``(t, 3)`` NWM actions; ``actions[i]`` moves from frame ``i`` to ``i + 1``,
            ``(dx, dy, dyaw)`` in the frame of the pose it starts from (metres, radians).
    """

    frames: Tensor
    actions: Tensor


class LoopTrajectories(Dataset[Window]):
    """Trajectories driving square loops, so later frames revisit earlier places.

    Random latents stand in for VAE-encoded camera frames; every ``(trajectory, t)`` with
    ``t >= context_size`` is one sample.
    """

    def __init__(self, count: int, length: int, frame_shape: tuple[int, int, int], seed: int):
        g = torch.Generator().manual_seed(seed)
        self.frames = torch.randn(count, length, *frame_shape, generator=g)
        self.actions = torch.zeros(count, length - 1, 3)
        self.actions[..., 0] = STEP_LENGTH * (
            1 + 0.05 * torch.randn(count, length - 1, generator=g)
        )
        self.actions[:, SIDE - 1 :: SIDE, 2] = math.pi / 2  # turn left at each corner
        first = TINY["context_size"]
        self.index = [(i, t) for i in range(count) for t in range(first, length)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> Window:
        i, t = self.index[item]
        return Window(self.frames[i, : t + 1], self.actions[i, :t])


# [docs:collate]
class Batch(NamedTuple):
    """A training batch: NWM's inputs plus the memory selected for each sample."""

    x_start: Tensor  # (B, C, H, W) clean target latents
    x_cond: Tensor  # (B, context_size, C, H, W) context latents
    y: Tensor  # (B, 3) action (dx, dy, dyaw) from the last context frame to the target
    rel_t: Tensor  # (B,) relative time of the target
    memory_frames: Tensor  # (B, k, C, H, W) the selected history frames (NWM: images)
    memory_poses: Tensor  # (B, k, 3) their absolute poses (x, y, yaw)
    selection: Selection  # (B, k) slot indices, retrieval scores, mask
    query_pose: Tensor  # (B, 3) the target frame's pose


def collate_with_memory(
    windows: list[Window],
    *,
    context_size: int,
    k: int = 8,
    strategy: str = "distance",
    threshold: float = 0.7,
    scale: float = 10.0,
    capacity: int = 50,
) -> Batch:
    """Batch ``windows`` and select each sample's memory among the frames before its target.

    A sample's memory holds what a rollout's buffer would hold when the target is generated:
    up to ``capacity`` frames before the target (the context frames included), never the
    target itself. Retrieval runs on poses only; only the ``k`` selected frames are gathered.
    """
    b = len(windows)
    poses = []  # (t + 1, 3) absolute poses of frames 0..t; frame 0 at the origin facing +x
    for w in windows:
        start = torch.zeros(3)
        poses.append(torch.cat([start[None], poses_from_actions(w.actions, start)]))
    sizes = [min(len(p) - 1, capacity) for p in poses]  # history frames per sample
    m = max(sizes)
    history_poses = torch.zeros(b, m, 3)
    valid = torch.zeros(b, m, dtype=torch.bool)
    steps = torch.zeros(b, m, dtype=torch.long)
    for i, (p, n) in enumerate(zip(poses, sizes, strict=True)):
        t = len(p) - 1  # the target's index
        history_poses[i, :n] = p[t - n : t]
        valid[i, :n] = True
        steps[i, :n] = torch.arange(t - n, t)
    query_pose = torch.stack([p[-1] for p in poses])
    selection = select_memory(
        history_poses,
        query_pose,
        k,
        valid=valid,
        steps=steps,
        strategy=strategy,
        threshold=threshold,
        scale=scale,
    )
    memory_frames = torch.stack(
        [  # slot j of sample i is frame steps[i, j]
            w.frames[steps[i, selection.indices[i]]] for i, w in enumerate(windows)
        ]
    )
    return Batch(
        x_start=torch.stack([w.frames[-1] for w in windows]),
        x_cond=torch.stack([w.frames[-1 - context_size : -1] for w in windows]),
        y=torch.stack([w.actions[-1] for w in windows]),
        rel_t=torch.ones(b),
        memory_frames=memory_frames,
        memory_poses=gather_slots(history_poses, selection.indices),
        selection=selection,
        query_pose=query_pose,
    )


# [/docs:collate]


def encode(frames: Tensor) -> Tensor:
    """Stand-in for NWM's VAE encoding (``vae.encode(x).latent_dist.sample() * 0.18215``):
    this dataset already stores latents."""
    return frames


# [docs:memory]
def batch_memory(batch: Batch, device: torch.device) -> MemoryContext:
    """The ``MemoryContext`` of a batch: encode the selected frames, wrap them with their poses."""
    frames = batch.memory_frames.to(device)  # (B, k, ...)
    b, k = frames.shape[:2]
    with torch.no_grad():  # the memory frames are clean inputs, like x_cond
        latents = encode(frames.flatten(0, 1))  # (B * k, C, H, W)
    latents = latents.view(b, k, *latents.shape[1:])
    return build_context(latents, batch.memory_poses, batch.selection, batch.query_pose)


# [/docs:memory]


def linear_alphas_cumprod(steps: int = 1000) -> Tensor:
    """``alpha_bar_t`` of the linear beta schedule of DDPM / DiT / NWM (1e-4 to 0.02)."""
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


# [docs:loss]
def diffusion_loss(model: HybridCDiT, batch: Batch, alphas_cumprod: Tensor) -> Tensor:
    """DDPM noise-prediction MSE, with the batch's memory passed to the model."""
    x_start = batch.x_start
    device = x_start.device
    memory = batch_memory(batch, device)
    t = torch.randint(0, len(alphas_cumprod), (x_start.shape[0],), device=device)
    noise = torch.randn_like(x_start)
    a = alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x_start + (1 - a).sqrt() * noise
    out = model(x_t, t, batch.y, batch.x_cond, batch.rel_t, memory=memory)
    eps = out[:, : x_start.shape[1]]  # learn_sigma: the first C channels predict the noise
    return F.mse_loss(eps, noise)


# [/docs:loss]


def make_model(seed: int) -> HybridCDiT:
    """A HybridCDiT loaded from a random CDiT state dict (what a real checkpoint gives)."""
    torch.manual_seed(seed)
    cdit = CDiT(**TINY, num_heads=HEADS)
    with torch.no_grad():
        for param in cdit.parameters():
            param.normal_(0.0, 0.05)
    return HybridCDiT.from_cdit_checkpoint(cdit.state_dict(), num_heads=HEADS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="samples a batch (8)")
    parser.add_argument("--strategy", choices=("distance", "pose", "fov"), default="distance")
    parser.add_argument("--lr", type=float, default=1e-4, help="CDiT learning rate (1e-4)")
    parser.add_argument("--memory-lr", type=float, default=1e-3, help="memory lr (1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: fastest for the tiny model)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = make_model(args.seed).train()
    frame_shape = (model.in_channels, model.input_size, model.input_size)
    dataset = LoopTrajectories(
        count=4, length=4 * SIDE + 4, frame_shape=frame_shape, seed=args.seed
    )
    collate = partial(
        collate_with_memory,
        context_size=model.context_size,
        k=model.memory_top_k,
        strategy=args.strategy,
        threshold=model.spatial_similarity_threshold,
        scale=model.memory_retrieval_scale,
        capacity=model.memory_buffer_size,
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )

    # [docs:optimizer]
    opt = torch.optim.AdamW(
        [
            {"params": list(model.cdit_parameters()), "lr": args.lr},
            {"params": list(model.memory_parameters()), "lr": args.memory_lr},
        ],
        weight_decay=0,
    )
    # [/docs:optimizer]

    batch = next(iter(loader))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = diffusion_loss(model, batch, linear_alphas_cumprod())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

    mask = batch.selection.mask
    print(
        f"batch of {len(mask)}: retrieved frames per sample {mask.sum(1).tolist()} "
        f"(strategy {args.strategy!r}, threshold {model.spatial_similarity_threshold})"
    )
    memory = batch_memory(batch, torch.device("cpu"))
    print(f"memory active for {int(model.active_samples(memory).sum())}/{len(mask)} samples")
    print(f"loss {loss.item():.4f}")
    moved = {
        group: max(
            (p - before[name]).abs().max().item()
            for name, p in model.named_parameters()
            if ("memory" in name) == (group == "memory")
        )
        for group in ("memory", "cdit")
    }
    print(f"largest parameter update: memory {moved['memory']:.2e}, CDiT {moved['cdit']:.2e}")
    gates = {
        name.split(".memory")[0]: p.abs().max().item()
        for name, p in model.named_parameters()
        if "memory_adaLN_modulation" in name and name.endswith("weight")
    }
    print(
        "memory adaLN modulation (output gate) weights, zero before the step: "
        + ", ".join(f"{name} max {value:.2e}" for name, value in gates.items())
    )


if __name__ == "__main__":
    main()
