"""What ``refine_headings``, ``refine_poses`` and ``close_loops`` add to a denoising loop: time
ratios of medians, interleaved runs.

    python -m benchmarks.refine_headings_cost      # B/2, 28x28 latents, batch 2, k=8, CPU

Prints, for a trained-like HybridCDiT with the library's memory defaults, the time of
``refine_headings`` on one memory context (against the last context frame) over one hybrid
forward, and that of a loop of ``--loop`` forwards sharing the context with the refinement
before it over the same loop without it; then the same for ``refine_poses`` with a
``SlotPoseRefiner`` of the default width on the latents' channels; then one ``close_loops``
(4 passes) over a history of ``--trajectory`` frames with ``k`` candidate pairs a frame, over
one hybrid forward. Absolute times on shared machines mean little: compare ratios measured side
by side.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from benchmarks.hybrid_overhead import (
    add_workload_args,
    median_ratio,
    memory_context,
    model_inputs,
    trained_like_hybrid,
)
from hybrid_cdit import MemoryContext, create_model
from hybrid_cdit.memory import SlotPoseRefiner, close_loops, refine_headings, refine_poses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_workload_args(parser, repeats=9)
    parser.add_argument(
        "--trajectory", type=int, default=250, help="frames of close_loops' history"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cdit = create_model(f"CDiT-{args.variant}", input_size=args.input_size).to(device).eval()
    hybrid = trained_like_hybrid(cdit)
    x, t, y, x_cond, rel_t = model_inputs(cdit, args.batch, device, torch.float32)
    fov = hybrid.camera_fov
    reference_pose = torch.zeros(args.batch, 3, device=device)

    refiner = SlotPoseRefiner(in_channels=x.shape[1]).to(device).eval()

    def headings(memory: MemoryContext) -> MemoryContext:
        return refine_headings(memory, x_cond[:, -1], reference_pose, fov)[0]

    def poses(memory: MemoryContext) -> MemoryContext:
        return refine_poses(memory, x_cond[:, -1], reference_pose, refiner)

    def forward() -> object:
        return hybrid(x, t, y, x_cond, rel_t, memory=memory_context(x, args.k, active=True))

    def loop(refine: Callable[[MemoryContext], MemoryContext] | None) -> object:
        memory = memory_context(x, args.k, active=True)
        if refine is not None:
            memory = refine(memory)
        for _ in range(args.loop):
            hybrid(x, t, y, x_cond, rel_t, memory=memory)
        return memory

    def measure(refine: Callable[[MemoryContext], MemoryContext]) -> tuple[float, float]:
        """(one refinement / one forward, the loop with it / without it)."""
        refine(memory_context(x, args.k, active=True))  # warm-up
        *_, one = median_ratio(
            lambda: refine(memory_context(x, args.k, active=True)), forward, args.repeats, device
        )
        *_, many = median_ratio(lambda: loop(refine), lambda: loop(None), args.repeats, device)
        return one, many

    t_len = args.trajectory
    history = torch.randn(args.batch, t_len, *x.shape[1:], device=device)
    steps = torch.zeros(args.batch, t_len - 1, 3, device=device)
    steps[..., 0] = 0.7
    loop_from = torch.arange(t_len, device=device).repeat_interleave(args.k)
    loop_to = loop_from - 1 - 7 * torch.arange(args.k, device=device).repeat(t_len)
    pairs = (
        loop_from[None].expand(args.batch, -1),
        loop_to.clamp(min=0)[None].expand(args.batch, -1),
    )

    def loops() -> object:
        return close_loops(
            torch.zeros(args.batch, 3, device=device), steps, history, *pairs, refiner,
            step_position_std=0.035, step_heading_std=math.radians(1),
            loop_mask=(loop_to >= 0)[None].expand(args.batch, -1),
        )  # fmt: skip

    with torch.no_grad():
        forward()
        ratios = {"refine_headings": measure(headings), "refine_poses": measure(poses)}
        loops()
        *_, closing = median_ratio(loops, forward, args.repeats, device)
    print(
        f"HybridCDiT-{args.variant}, {args.input_size}x{args.input_size} latents, batch "
        f"{args.batch}, k={args.k}, fov {math.degrees(fov):.0f} deg, {device}"
    )
    for name, (one, many) in ratios.items():
        print(f"{name} / one hybrid forward:".ljust(50) + f"{one:.3f}")
        print(f"{args.loop} forwards with {name} / without:".ljust(50) + f"{many:.3f}")
    print(
        f"close_loops ({t_len} frames, {args.k} pairs a frame, 4 passes) / one hybrid forward: "
        f"{closing:.3f}"
    )


if __name__ == "__main__":
    main()
