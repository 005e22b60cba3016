"""The ``hybrid-cdit demo``: an autoregressive rollout with memory along a looping trajectory.

A HybridCDiT converted from a CDiT (a checkpoint's, or a small random one) generates frames along
a square loop that revisits places, with a short DDIM sampler. Each finished frame goes to the
model's memory and retrieval is by pose; the CDiT samples the same frames alongside, so the table
shows when memory is active and that the converted model still matches the CDiT. Its times are
wall-clock times of the model it runs, at batch 1: for the small random model they are dominated
by work whose cost does not grow with the model (retrieval, memory tokens, Python calls), and say
nothing of the memory branch's cost at NWM's sizes, which ``benchmarks/hybrid_overhead.py``
measures (``docs/performance.md``). Entry point: :func:`run_demo`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_positive_int
from .checkpoint import (
    HubOptions,
    build_from_cdit_checkpoint,
    infer_cdit_config,
    save_nwm_checkpoint,
)
from .checkpoint.files import PathArg
from .checkpoint.loading import resolve_checkpoint
from .memory import MemoryContext, poses_from_actions, select_memory
from .models import CDiT, HybridCDiT

__all__ = [
    "DEMO_ARCH",
    "SIDE_STEPS",
    "STEP_LENGTH",
    "DemoError",
    "ddim_sample",
    "loop_actions",
    "run_demo",
]


class DemoError(ValueError):
    """The demo cannot run with the given arguments (a bad device, a model it cannot build)."""


DEMO_ARCH: dict[str, Any] = {
    "input_size": 8,
    "context_size": 2,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "depth": 4,
    "num_heads": 4,
}
"""The random CDiT the demo builds without ``--checkpoint``."""

STEP_LENGTH = 4.0
"""Metres per step of the demo trajectory (retrieval scores ``exp(-d / 10)``, masked under 0.7:
the previous frame, 4 m away, scores 0.67 and is not retrieved; a revisited place scores 1)."""

SIDE_STEPS = 3
"""Steps per side of the demo's square loop (12 steps a lap)."""


def loop_actions(steps: int, side: int = SIDE_STEPS, length: float = STEP_LENGTH) -> Tensor:
    """``(steps, 3)`` NWM actions ``(dx, dy, dyaw)`` driving square laps (left turn each side)."""
    actions = torch.zeros(steps, 3)
    actions[:, 0] = length
    actions[side - 1 :: side, 2] = math.pi / 2
    return actions


def ddim_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    steps: int,
    *,
    clip: float = 3.0,
) -> Tensor:
    """A short deterministic DDIM loop over a 1000-step linear beta schedule.

    ``denoise(x, t)`` returns the model output; its first ``C`` channels are the predicted
    noise. The clean estimate is clipped to ``[-clip, clip]`` at each step.
    """
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = torch.cumprod(1.0 - betas, dim=0)
    times = torch.linspace(999, 0, steps).round().long().tolist()
    x = noise
    channels = noise.shape[1]
    for i, step in enumerate(times):
        a = float(alphas[step])
        a_prev = float(alphas[times[i + 1]]) if i + 1 < len(times) else 1.0
        t = torch.full((noise.shape[0],), float(step), device=noise.device)
        eps = denoise(x, t)[:, :channels]
        x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-clip, clip)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def run_demo(
    *,
    checkpoint: PathArg | None = None,
    steps: int = 24,
    denoise_steps: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    threads: int | None = None,
    num_heads: int | None = None,
    source: str = "ema",
    trust_checkpoint: bool = False,
    hub: HubOptions | None = None,
) -> None:
    """Run the demo, printing the model, the trajectory, one table row a frame and a summary.

    Args:
        checkpoint: CDiT checkpoint (a path or an ``hf-hub:ORG/REPO/FILE`` name) to convert;
            None builds a random :data:`DEMO_ARCH` CDiT.
        steps: frames to generate, ``>= 1``.
        denoise_steps: DDIM steps a frame, ``>= 1``.
        device: torch device to run on.
        seed: seed of the random model, the context frames and the noise.
        threads: CPU threads while the demo runs (restored afterwards); None means 1 for the
            random model and torch's current setting with a ``checkpoint``.
        num_heads: attention heads of ``checkpoint``, when its shapes do not determine them.
        source: state dict of ``checkpoint`` to read, ``"ema"``, ``"model"`` or ``"auto"``.
        trust_checkpoint: allow unrestricted unpickling of ``checkpoint`` (trusted files only).
        hub: how an ``hf-hub:`` ``checkpoint`` is downloaded (revision, cache, offline); None
            uses :class:`~hybrid_cdit.checkpoint.HubOptions`' defaults.

    Raises:
        DemoError: ``device`` is not usable, ``num_heads`` is needed, or the model has no memory.
    """
    check_positive_int("steps", steps)
    check_positive_int("denoise_steps", denoise_steps)
    if threads is not None:
        check_positive_int("threads", threads)
    threads = threads or (1 if checkpoint is None else None)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # one thread is fastest for the small random model
    try:
        _demo(
            checkpoint=checkpoint,
            steps=steps,
            denoise_steps=denoise_steps,
            device=device,
            seed=seed,
            num_heads=num_heads,
            source=source,
            trust_checkpoint=trust_checkpoint,
            hub=hub,
        )
    finally:
        torch.set_num_threads(before)


def _demo(
    *,
    checkpoint: PathArg | None,
    steps: int,
    denoise_steps: int,
    device: str | torch.device,
    seed: int,
    num_heads: int | None,
    source: str,
    trust_checkpoint: bool,
    hub: HubOptions | None,
) -> None:
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise DemoError(f"--device {device!r} is not a torch device: {exc}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DemoError(f"--device {device}: CUDA is not available on this machine")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hybrid-cdit-demo-") as tmp:
        cdit, hybrid, origin = _demo_models(
            checkpoint,
            Path(tmp),
            seed=seed,
            num_heads=num_heads,
            source=source,
            trust_checkpoint=trust_checkpoint,
            hub=hub,
        )
    cdit = cdit.to(target).eval()
    hybrid = hybrid.to(target).eval()
    hybrid.reset_memory()
    if not hybrid.memory_enabled:
        raise DemoError("the demo needs a HybridCDiT with memory_enabled=True")
    print(f"model: {origin}")
    print(f"size: {describe_size(hybrid, cdit)}")
    print(
        f"converted to HybridCDiT: memory layers {hybrid.memory_layers}, retrieval "
        f"{hybrid.retrieval!r}, top-k {hybrid.memory_top_k}, similarity threshold "
        f"{hybrid.spatial_similarity_threshold}, activation threshold "
        f"{hybrid.memory_activation_threshold}"
    )
    lap = 4 * SIDE_STEPS
    print(
        f"trajectory: square loop of {SIDE_STEPS} steps of {STEP_LENGTH:g} m a side "
        f"({lap} steps a lap), {steps} steps, {denoise_steps} denoising steps a frame"
    )
    rows, largest = _rollout(
        cdit, hybrid, target, steps=steps, denoise_steps=denoise_steps, seed=seed
    )
    _print_summary(rows, largest)
    print(timing_caveat(hybrid, target, denoise_steps, random_model=checkpoint is None))
    print(f"  total time {time.perf_counter() - started:.1f} s")


def _demo_models(
    checkpoint: PathArg | None,
    workdir: Path,
    *,
    seed: int,
    num_heads: int | None,
    source: str,
    trust_checkpoint: bool,
    hub: HubOptions | None,
) -> tuple[CDiT, HybridCDiT, str]:
    """The CDiT and its converted HybridCDiT, and a line saying where they came from."""
    if checkpoint is not None:
        resolved = resolve_checkpoint(
            checkpoint, source=source, trust_checkpoint=trust_checkpoint, hub=hub
        )
        state_dict, used, path = resolved.state_dict, resolved.source, resolved.path
        inferred = infer_cdit_config(state_dict)
        heads = inferred.get("num_heads") if num_heads is None else num_heads
        if heads is None:
            raise DemoError(
                f"num_heads cannot be inferred: hidden_size {inferred['hidden_size']} and depth "
                f"{inferred['depth']} match no NWM variant; pass --num-heads N"
            )
        cdit = build_from_cdit_checkpoint(CDiT, state_dict, num_heads=heads)
        hybrid = build_from_cdit_checkpoint(HybridCDiT, state_dict, num_heads=heads)
        return cdit, hybrid, f"CDiT checkpoint {path} ({used})"
    torch.manual_seed(seed)
    cdit = CDiT(**DEMO_ARCH)
    with torch.no_grad():
        for param in cdit.parameters():  # random everywhere: adaLN-Zero would output zeros
            param.normal_(0.0, 0.05)
    saved = save_nwm_checkpoint(cdit, workdir / "cdit_demo.pth.tar", args={"demo": True})
    cdit = build_from_cdit_checkpoint(CDiT, saved, num_heads=DEMO_ARCH["num_heads"])
    hybrid = build_from_cdit_checkpoint(HybridCDiT, saved, num_heads=DEMO_ARCH["num_heads"])
    arch = ", ".join(f"{k} {v}" for k, v in DEMO_ARCH.items())
    return cdit, hybrid, f"random CDiT ({arch}), saved as an NWM train.py checkpoint and reloaded"


def describe_size(hybrid: HybridCDiT, cdit: CDiT) -> str:
    """One line: the models' widths, tokens a frame and parameter counts."""
    tokens = (hybrid.input_size // hybrid.patch_size) ** 2
    h_params = sum(p.numel() for p in hybrid.parameters())
    c_params = sum(p.numel() for p in cdit.parameters())
    return (
        f"hidden {hybrid.hidden_size}, depth {len(hybrid.blocks)}, {tokens} tokens a frame, "
        f"{hybrid.context_size} context frames; CDiT {c_params / 1e6:.3g} M parameters, "
        f"HybridCDiT {h_params / 1e6:.3g} M"
    )


def timing_caveat(
    hybrid: HybridCDiT, device: torch.device, denoise_steps: int, *, random_model: bool
) -> str:
    """What the demo's times measure, and what they do not."""
    threads = torch.get_num_threads()
    lines = [
        "  what the times mean: wall-clock time to sample one frame "
        f"({denoise_steps} forwards at batch 1, {device.type}, {threads} "
        f"thread{'' if threads == 1 else 's'}) with this model, the hybrid's own retrieval "
        "from its buffer included.",
    ]
    if random_model:
        tokens = (hybrid.input_size // hybrid.patch_size) ** 2
        lines.append(
            f"  this is the demo's small random model ({tokens} tokens a frame, hidden "
            f"{hybrid.hidden_size}): the memory branch's work that does not grow with the model "
            "(retrieval, building memory tokens, Python calls) is a large share of its time, "
            "so the difference above is not the library's overhead at NWM's sizes."
        )
    lines.append(
        "  the memory branch's cost at NWM's sizes, hybrid / CDiT time for one forward, a "
        "denoising loop and a batch with no active sample: benchmarks/hybrid_overhead.py, "
        "figures in docs/performance.md."
    )
    return "\n".join(lines)


def _denoiser(
    model: nn.Module, y: Tensor, x_cond: Tensor, rel_t: Tensor, **memory: Any
) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> model(x, t, y, x_cond, rel_t, **memory)`` for :func:`ddim_sample`."""

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        out: Tensor = model(x, t, y, x_cond, rel_t, **memory)
        return out

    return denoise


def _peek_retrieval(model: HybridCDiT, pose: Tensor) -> tuple[int, float, bool]:
    """What the model's own retrieval finds for ``pose``: ``(frames, best score, active)``,
    read from the buffer without refreshing it."""
    buffer = model.memory_buffer
    if buffer is None:
        return 0, 0.0, False
    state = buffer.state_dict()
    selection = select_memory(
        state["poses"],
        pose.to(state["poses"]),
        model.memory_top_k,
        valid=state["valid"],
        steps=state["steps"],
        strategy=model.retrieval,
        threshold=model.spatial_similarity_threshold,
        scale=model.memory_retrieval_scale,
    )
    k = selection.mask.shape[1]
    context = MemoryContext(
        frames=torch.zeros(1, k, 1, 1, 1),
        poses=state["poses"][:, :1].expand(-1, k, -1).clone(),
        scores=selection.scores,
        mask=selection.mask,
        query_pose=pose.to(state["poses"]),
    )
    count = int(selection.mask.sum())
    best = float(selection.scores.masked_fill(~selection.mask, 0).max()) if count else 0.0
    return count, best, bool(model.active_samples(context).all())


def _format_pose(pose: Tensor) -> str:
    """``( x, y, yaw°)`` with yaw in ``(-180, 180]`` and no negative zeros."""
    x, y, yaw = (float(v) for v in pose[:3])
    degrees = -math.degrees(math.remainder(-yaw, 2 * math.pi))
    return f"({round(x, 1) + 0.0:6.1f}, {round(y, 1) + 0.0:6.1f}, {round(degrees) + 0:4d}°)"


@dataclass
class _Step:
    """One generated frame of the demo rollout."""

    revisit: bool
    retrieved: int
    best: float
    active: bool
    hybrid_s: float
    cdit_s: float


def _timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    tick = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tick


def _rollout(
    cdit: CDiT,
    hybrid: HybridCDiT,
    device: torch.device,
    *,
    steps: int,
    denoise_steps: int,
    seed: int,
) -> tuple[list[_Step], float]:
    """Generate ``steps`` frames with both models and print a row each; returns the rows and
    the largest difference between the two models' frames."""
    gen = torch.Generator().manual_seed(seed)
    c, size, context_size = hybrid.in_channels, hybrid.input_size, hybrid.context_size
    actions = loop_actions(steps)
    poses = poses_from_actions(actions)
    start = torch.zeros(1, 3)
    frames = [torch.randn(1, c, size, size, generator=gen) for _ in range(context_size)]
    hybrid.update_memory(frames[-1].to(device), start.to(device))  # the observed start frame
    visited = [start[0]]
    rows: list[_Step] = []
    largest = 0.0
    print(
        f"{'step':>6}  {'pose (x, y, yaw)':<22} {'retrieved':>9} {'best':>6}  {'memory':<8} "
        f"{'hybrid ms':>9} {'cdit ms':>8}"
    )
    for i in range(steps):
        pose = poses[i : i + 1]
        x_cond = torch.stack(frames[-context_size:], dim=1).to(device)
        y = actions[i : i + 1].to(device)
        rel_t = torch.ones(1, device=device)
        noise = torch.randn(1, c, size, size, generator=gen).to(device)
        count, best, active = _peek_retrieval(hybrid, pose)
        hybrid_fn = _denoiser(hybrid, y, x_cond, rel_t, current_pose=pose.to(device))
        cdit_fn = _denoiser(cdit, y, x_cond, rel_t)
        with torch.inference_mode():
            runs = [
                ("hybrid", partial(ddim_sample, hybrid_fn, noise, denoise_steps)),
                ("cdit", partial(ddim_sample, cdit_fn, noise, denoise_steps)),
            ]
            if i % 2:  # alternate which model runs first, so neither always finds warm caches
                runs.reverse()
            results = {name: _timed(run) for name, run in runs}
        frame, hybrid_s = results["hybrid"]
        plain, cdit_s = results["cdit"]
        largest = max(largest, float((frame - plain).abs().max()))
        revisit = min(float((pose[0, :2] - p[:2]).norm()) for p in visited) < STEP_LENGTH / 2
        rows.append(_Step(revisit, count, best, active, hybrid_s, cdit_s))
        hybrid.update_memory(frame, pose.to(device))
        frames.append(frame.cpu())
        visited.append(pose[0])
        score = f"{best:.2f}" if count else "-"
        state = "active" if active else "inactive"
        tag = "  revisit" if revisit else ""
        print(
            f"{i + 1:>3}/{steps:<3} {_format_pose(pose[0]):<22} {count:>9} {score:>6}  "
            f"{state:<8} {hybrid_s * 1e3:>9.1f} {cdit_s * 1e3:>8.1f}{tag}",
            flush=True,
        )
    return rows, largest


def _times(steps: list[_Step]) -> str:
    """Mean frame times of both models and their difference, in milliseconds."""
    if not steps:
        return "n/a"
    hybrid = 1e3 * sum(s.hybrid_s for s in steps) / len(steps)
    cdit = 1e3 * sum(s.cdit_s for s in steps) / len(steps)
    return f"{hybrid:.1f} vs {cdit:.1f} ms ({hybrid - cdit:+.1f} ms)"


def _print_summary(steps: list[_Step], largest: float) -> None:
    revisits = [s for s in steps if s.revisit]
    first = [s for s in steps if not s.revisit]
    print("summary:")
    print(
        f"  memory active on {sum(s.active for s in revisits)}/{len(revisits)} revisits and on "
        f"{sum(s.active for s in first)}/{len(first)} first visits"
    )
    active = [s for s in steps if s.active]
    inactive = [s for s in steps if not s.active]
    print(
        f"  mean time a frame, HybridCDiT vs CDiT side by side: {_times(steps)} overall; "
        f"memory active {_times(active)}; inactive {_times(inactive)}"
    )
    print(
        f"  largest |HybridCDiT - CDiT| over the rollout: {largest:.3e} "
        "(memory output gates start at zero: the converted model is the CDiT until trained)"
    )
