"""An autoregressive rollout with memory: retrieve by pose, denoise, write the finished frame.

Each generated frame:

1. its pose comes from the NWM actions (``poses_from_actions``);
2. memory is retrieved for that pose once (``MemoryBuffer.retrieve`` -> ``MemoryContext``);
3. a short DDIM loop calls the model once per denoising step with ``memory=`` that context;
   memory keys/values do not depend on the diffusion step, so each memory layer computes them
   once per context and reuses them in the other steps (``SelectiveMemoryAttention``'s
   ``kv_computations`` counts the computations);
4. the finished, clean frame is written to the buffer at its pose (never a noised latent) and
   becomes the newest context frame.

``--own-buffer`` does the same with the model's own buffer: ``model.update_memory(frame, pose)``
and ``current_pose=`` in the forward.

Two rollouts run side by side, each with its own memory: sample 0 drives square loops and
revisits places, sample 1 drives straight on and never does.

Run: ``python examples/rollout_with_memory.py`` (a second or two after imports on a CPU).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hybrid_cdit import CDiT, HybridCDiT
from hybrid_cdit.memory import MemoryBuffer, poses_from_actions

TINY: dict[str, Any] = {
    "input_size": 8,
    "context_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "depth": 6,
}
HEADS = 4
STEP_LENGTH = 4.0  # metres an action moves forward; the distance score of the previous frame,
# exp(-4 / 10) = 0.67, is under the 0.7 threshold: only revisited places are retrieved
SIDE = 3  # actions per side of the square loop (a lap is 12 steps)


def ddim_sample(
    model: Callable[..., Tensor], noise: Tensor, steps: int, model_kwargs: dict[str, Any]
) -> Tensor:
    """Deterministic DDIM over NWM's 1000-step linear schedule, called like NWM's
    ``p_sample_loop``: ``model(x, t, **model_kwargs)``, whose first ``C`` output channels
    predict the noise."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = torch.cumprod(1.0 - betas, dim=0).tolist()
    times = torch.linspace(999, 0, steps).round().long().tolist()
    x = noise
    for i, step in enumerate(times):
        a, a_prev = alphas[step], alphas[times[i + 1]] if i + 1 < len(times) else 1.0
        t = torch.full((x.shape[0],), step, device=x.device)
        eps = model(x, t, **model_kwargs)[:, : x.shape[1]]
        x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-3.0, 3.0)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def make_model(seed: int, retrieval: str) -> HybridCDiT:
    """A HybridCDiT loaded from a random CDiT state dict (what a real checkpoint gives)."""
    torch.manual_seed(seed)
    cdit = CDiT(**TINY, num_heads=HEADS)
    with torch.no_grad():
        for param in cdit.parameters():
            param.normal_(0.0, 0.05)
    return HybridCDiT.from_cdit_checkpoint(cdit.state_dict(), num_heads=HEADS, retrieval=retrieval)


def trajectory_actions(steps: int) -> Tensor:
    """``(2, steps, 3)`` NWM actions ``(dx, dy, dyaw)``: square loops, and a straight line."""
    actions = torch.zeros(2, steps, 3)
    actions[..., 0] = STEP_LENGTH
    actions[0, SIDE - 1 :: SIDE, 2] = math.pi / 2
    return actions


def kv_computations(model: HybridCDiT) -> int:
    """Memory key/value computations so far, summed over the memory layers."""
    return sum(b.memory_attn.kv_computations for b in model.hybrid_blocks() if b.enable_memory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="frames to generate (16)")
    parser.add_argument("--denoise-steps", type=int, default=8, help="DDIM steps a frame (8)")
    parser.add_argument("--strategy", choices=("distance", "pose", "fov"), default="distance")
    parser.add_argument(
        "--own-buffer",
        action="store_true",
        help="use model.update_memory and current_pose= instead of memory=",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: fastest for the tiny model)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = make_model(args.seed, args.strategy).eval()
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(args.seed)
    b, c, s = 2, model.in_channels, model.input_size
    actions = trajectory_actions(args.steps)
    start = torch.zeros(b, 3)  # (x, y, yaw) of the last observed frame
    poses = poses_from_actions(actions, start)  # (B, steps, 3): the pose after each action
    # Observed context frames (NWM: VAE latents of the camera images), clean: they go in memory.
    frames = [torch.randn(b, c, s, s, generator=g) for _ in range(model.context_size)]
    rel_t = torch.ones(b)

    forwards = attended = 0

    def count_forward(*_: object) -> None:
        nonlocal forwards
        forwards += 1

    def count_attention(*_: object) -> None:
        nonlocal attended
        attended += 1

    model.register_forward_hook(count_forward)
    for block in model.hybrid_blocks():
        if block.enable_memory:
            block.memory_attn.register_forward_hook(count_attention)

    buffer = MemoryBuffer(b, model.memory_buffer_size, frame_shape=(c, s, s), pose_dim=3)
    if args.own_buffer:
        model.reset_memory()
        model.update_memory(frames[-1], start)
    else:
        buffer.add(frames[-1], start)

    model_kwargs: dict[str, Any]  # what NWM's p_sample_loop passes to the model
    print("frame  pose of sample 0 (x, y, yaw)  retrieved per sample  memory attended")
    for i in range(args.steps):
        pose, y = poses[:, i], actions[:, i]
        x_cond = torch.stack(frames[-model.context_size :], dim=1)
        noise = torch.randn(b, c, s, s, generator=g)
        attended_before = attended
        retrieved = "-"
        if args.own_buffer:
            # [docs:own_buffer]
            model_kwargs = dict(y=y, x_cond=x_cond, rel_t=rel_t, current_pose=pose)
            with torch.inference_mode():
                frame = ddim_sample(model, noise, args.denoise_steps, model_kwargs)
            model.update_memory(frame, pose)  # the finished, clean frame at its pose
            # [/docs:own_buffer]
        else:
            # [docs:rollout]
            memory = buffer.retrieve(
                pose,
                k=model.memory_top_k,
                strategy=model.retrieval,
                threshold=model.spatial_similarity_threshold,
                scale=model.memory_retrieval_scale,
                device=device,
            )
            model_kwargs = dict(y=y, x_cond=x_cond, rel_t=rel_t, memory=memory)
            with torch.inference_mode():
                frame = ddim_sample(model, noise, args.denoise_steps, model_kwargs)
            buffer.add(frame, pose)  # the finished, clean frame at its pose
            # [/docs:rollout]
            retrieved = str(memory.mask.sum(1).tolist())
        frames.append(frame)
        x, y0, yaw = (round(v, 3) + 0.0 for v in pose[0].tolist())  # + 0.0: no "-0.0"
        used = "yes" if attended > attended_before else "no"
        print(
            f"{i + 1:5d}  ({x:5.1f}, {y0:5.1f}, {math.degrees(yaw):6.1f} deg)"
            f"{retrieved:>22}  {used}"
        )

    layers = len(model.memory_layers)
    computed = kv_computations(model)
    print(
        f"{forwards} forwards: {args.steps} frames x {args.denoise_steps} denoising steps; "
        f"{layers} memory layers"
    )
    print(
        f"memory attention ran {attended} times (forwards with memory x layers); memory "
        f"keys/values were computed {computed} times ({attended - computed} reuses)"
    )
    if computed * args.denoise_steps != attended:
        raise SystemExit("memory keys/values were not computed once per frame and layer")
    print(
        f"keys/values: once per frame and memory layer, reused by the other "
        f"{args.denoise_steps - 1} denoising steps of the frame"
    )


if __name__ == "__main__":
    main()
