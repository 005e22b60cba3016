"""Can the memory branch learn to use what it is given? Fine-tuning on Memory Maze, memory kind
by memory kind.

    python benchmarks/memory_learnability.py --memory oracle            # pixel-closest frame
    python benchmarks/memory_learnability.py --memory retrieved --capacity 250 --scale 2 \\
        --threshold 0.5                                                  # the library's retrieval

A CDiT is trained alone for ``--pretrain-steps`` (the v target of ``benchmarks.maze``), then
a HybridCDiT built from its weights is fine-tuned for ``--finetune-steps`` while the CDiT stays
fixed. Each training sample's memory is either the library's retrieval from the replayed buffer
(``retrieved``, the protocol of ``benchmarks.maze``) or a diagnostic one-slot memory holding
the frame before the context window that is closest in pixels to the target (``oracle``: it looks
at the target, so it shows what a perfectly informative memory frame allows, never a headline
figure). Every ``--eval-every`` steps the held-out noise-prediction error at ``--eval-t`` is
printed as a ratio to the fixed CDiT, with the same memory kind and with memory withheld: the
gap between the two is what memory contributes. Every other flag is ``benchmarks.maze``'s
(``--quick`` data sizes). The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch import Tensor

from benchmarks.maze import pipeline as mm
from benchmarks.maze.evaluation import oracle_memory
from benchmarks.maze.protocol import Data, memory_for, model_inputs, settings_from
from benchmarks.maze.training import build_models, pretrain
from benchmarks.maze.worlds import Episode, held_out_dataset, load_episodes
from benchmarks.side_by_side import (
    Diffusion,
    load_cdit_weights,
    optimizer,
    predict,
    set_warmup,
    train_step,
)
from hybrid_cdit import CDiT, HybridCDiT, MemoryContext


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This script's flags and ``benchmarks.maze``'s (``--quick`` sizes; 600 pretraining
    steps unless given)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--memory", choices=("oracle", "retrieved"), default="retrieved")
    p.add_argument("--finetune-steps", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=128)
    p.add_argument("--min-target", type=int, default=30, help="earliest target frame")
    own, rest = p.parse_known_args(argv)
    # a later --pretrain-steps in ``rest`` overrides this default (argparse keeps the last)
    return own, mm.parse_args(["--quick", "--pretrain-steps", "600", *rest])


class Batches:
    """Random ``(episode, target)`` batches of one dataset with the chosen memory kind."""

    def __init__(self, data: Data, kind: str, context: int, min_target: int) -> None:
        self.data, self.kind, self.context, self.min_target = data, kind, context, min_target

    def draw(self, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n, t_len = self.data.frames.shape[:2]
        episode = torch.randint(0, n, (size,), generator=gen)
        target = torch.randint(self.min_target, t_len, (size,), generator=gen)
        return episode, target

    def memory(self, episode: Tensor, target: Tensor) -> MemoryContext:
        d = self.data
        if self.kind == "oracle":
            return oracle_memory(d.frames, d.poses, d.pair_mse, episode, target, self.context)
        return memory_for(d.frames, d.poses, d.schedule, episode, target)


def _loss(
    model: CDiT,
    batches: Batches,
    diff: Diffusion,
    episode: Tensor,
    target: Tensor,
    t: Tensor,
    eps: Tensor,
    memory: MemoryContext | None,
) -> Tensor:
    """Per-sample DDPM loss ``(B,)`` (the ``diff.prediction`` target)."""
    d = batches.data
    inputs = model_inputs(d.frames, d.poses, episode, target, batches.context)
    x_t = diff.noise(inputs.x0, t, eps)
    out = predict(model, x_t, t, inputs.y, inputs.x_cond, inputs.rel_t, memory)
    return (out - diff.target(inputs.x0, eps, t)).square().flatten(1).mean(1)


@torch.no_grad()
def held_out_ratios(
    cdit: CDiT,
    hybrid: HybridCDiT,
    batches: Batches,
    diff: Diffusion,
    samples: tuple[Tensor, Tensor],
    level: int,
) -> dict[str, float]:
    """Held-out loss ratios to the CDiT at timestep ``level``: with memory and withheld."""
    episode, target = samples
    gen = torch.Generator().manual_seed(3)
    eps = torch.randn((episode.shape[0], *batches.data.frames.shape[2:]), generator=gen)
    t = torch.full((episode.shape[0],), level)
    memory = batches.memory(episode, target)
    hybrid.eval()
    base = _loss(cdit, batches, diff, episode, target, t, eps, None).mean()
    with_memory = _loss(hybrid, batches, diff, episode, target, t, eps, memory).mean()
    withheld = _loss(hybrid, batches, diff, episode, target, t, eps, None).mean()
    hybrid.train()
    return {"memory": float(with_memory / base), "withheld": float(withheld / base)}


def run(
    own: argparse.Namespace,
    args: argparse.Namespace,
    train_eps: Sequence[Episode],
    eval_eps: Sequence[Episode],
) -> dict[str, object]:
    """Pretrain, fine-tune and evaluate; returns the summary (``curve``: the ratios over steps).

    Args:
        own: this script's flags; args: ``benchmarks.maze``'s.
    """
    start = time.perf_counter()
    settings = settings_from(args)
    seed = args.seed
    train = Batches(
        Data(train_eps, args.stride, args.size, settings), own.memory, args.context, own.min_target
    )
    held = Batches(
        Data(eval_eps, args.stride, args.size, settings), own.memory, args.context, own.min_target
    )
    diff = Diffusion(prediction=args.prediction)
    cdit, hybrid = build_models(args)
    pretrain(args, train.data, cdit, diff, settings)
    torch.manual_seed(seed + 2)
    load_cdit_weights(hybrid, cdit)
    cdit.eval()
    opt = optimizer(hybrid, args.lr, args.lr * args.memory_lr)
    gen = torch.Generator().manual_seed(seed + 100)
    samples = held.draw(own.eval_samples, torch.Generator().manual_seed(seed + 7))
    level = args.eval_t[-1]
    curve = [{"step": 0, **held_out_ratios(cdit, hybrid, held, diff, samples, level)}]
    hybrid.train()
    for step in range(1, own.finetune_steps + 1):
        set_warmup([opt], step, 50)
        episode, target = train.draw(args.batch, gen)
        inputs = model_inputs(train.data.frames, train.data.poses, episode, target, args.context)
        x_t, t, loss_target = diff.training_sample(inputs.x0, gen)
        memory = train.memory(episode, target)
        train_step(
            [(hybrid, opt)], x_t, t, loss_target, inputs.y, inputs.x_cond, inputs.rel_t, memory,
            clip=args.clip,
        )  # fmt: skip
        if step % own.eval_every == 0 or step == own.finetune_steps:
            row = {"step": step, **held_out_ratios(cdit, hybrid, held, diff, samples, level)}
            curve.append(row)
            print(
                f"[finetune {step:4d}/{own.finetune_steps}] held-out loss / CDiT at t={level}: "
                f"memory {row['memory']:.3f} withheld {row['withheld']:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    last = curve[-1]
    summary: dict[str, object] = {
        "memory": own.memory,
        "ratio_memory": round(last["memory"], 4),
        "ratio_withheld": round(last["withheld"], 4),
        "memory_gain": round(last["withheld"] - last["memory"], 4),
        "eval_t": level,
        "curve": curve,
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": own.finetune_steps,
        "top_k": args.top_k,
        "capacity": args.capacity,
        "scale": args.scale,
        "threshold": args.threshold,
        "memory_pose_encoding": args.memory_pose_encoding,
        "memory_time_embedding": args.memory_time_embedding,
        "memory_ray_alignment": args.memory_ray_alignment,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the last line printed is the JSON summary."""
    own, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size, seed, steps, workers = args.maze_size, args.seed, args.env_steps, args.workers
    train_eps = load_episodes(size, seed, args.train_episodes, steps, workers=workers)
    held = held_out_dataset("validation")  # a design study: never the test mazes
    eval_eps = load_episodes(size, held, args.eval_episodes, steps, workers=workers)
    summary = run(own, args, train_eps, eval_eps)
    print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
