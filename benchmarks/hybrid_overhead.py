"""HybridCDiT against CDiT with the same weights: time ratios of medians, interleaved runs.

    python benchmarks/hybrid_overhead.py            # B/2, 224-pixel images, batch 2, k=8, CPU
    python benchmarks/hybrid_overhead.py --device cuda --dtype bfloat16 --batch 16
    python benchmarks/hybrid_overhead.py --memory-time-embedding
    python benchmarks/hybrid_overhead.py --memory-pose-encoding frame --no-memory-ray-alignment

Prints, for the default memory settings and for full-resolution memory tokens
(``memory_patch_size = patch_size``), hybrid time / CDiT time for: one forward with a fresh
memory context; 10 forwards sharing one context (a denoising loop); a batch with no active
sample, at the library's memory defaults (rays, ray alignment). ``--memory-time-embedding``
turns the age embedding on (contexts then carry steps); ``--memory-pose-encoding frame`` and
``--no-memory-ray-alignment`` turn the defaults off; ``--only-default`` skips the
full-resolution rows, ``--only-full-resolution`` the default ones. Absolute times on shared
machines mean little: compare ratios measured side by side. ``--flops`` prints, instead of
times, the floating-point operations of one forward (``torch.utils.flop_counter``): the hybrid
with a fresh and with a cached context, the CDiT, and a memory layer's parts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext, create_model


def elapsed_s(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events on a CUDA device (after the work queued
    before it), ``time.perf_counter`` elsewhere."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def median_ratio(
    hybrid: Callable[[], object], cdit: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float, float]:
    """Interleave the two workloads; return (median hybrid s, median cdit s, ratio of medians)."""
    times: dict[str, list[float]] = {"h": [], "c": []}
    for i in range(repeats):
        order = (("h", hybrid), ("c", cdit)) if i % 2 == 0 else (("c", cdit), ("h", hybrid))
        for key, fn in order:
            times[key].append(elapsed_s(fn, device))
    h, c = statistics.median(times["h"]), statistics.median(times["c"])
    return h, c, h / c


def model_inputs(
    cdit: CDiT, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Random ``(x, t, y, x_cond, rel_t)`` for ``batch`` samples of ``cdit``'s shapes."""
    c, s, ctx = cdit.in_channels, cdit.input_size, cdit.context_size
    return (
        torch.randn(batch, c, s, s, device=device, dtype=dtype),
        torch.randint(0, 1000, (batch,), device=device),
        torch.randn(batch, 3, device=device, dtype=dtype),
        torch.randn(batch, ctx, c, s, s, device=device, dtype=dtype),
        torch.rand(batch, device=device, dtype=dtype),
    )


def memory_context(x: torch.Tensor, k: int, *, active: bool, timed: bool = False) -> MemoryContext:
    """A random context of ``k`` valid frames per sample of ``x`` ``(N, C, H, W)``, on its
    device and in its dtype: scores 0.9 (every sample active) or 0.1 (none); with ``timed``,
    frame steps and a query step for the age embedding."""
    n, device, dtype = x.shape[0], x.device, x.dtype
    return MemoryContext(
        frames=torch.randn(n, k, *x.shape[1:], device=device, dtype=dtype),
        poses=torch.randn(n, k, 3, device=device, dtype=dtype),
        scores=torch.full((n, k), 0.9 if active else 0.1, device=device, dtype=dtype),
        mask=torch.ones(n, k, dtype=torch.bool, device=device),
        query_pose=torch.zeros(n, 3, device=device, dtype=dtype),
        steps=torch.randint(0, 100, (n, k), device=device) if timed else None,
        query_step=torch.full((n,), 100, device=device) if timed else None,
    )


def trained_like_hybrid(cdit: CDiT, **options: object) -> HybridCDiT:
    """A HybridCDiT with ``cdit``'s weights, device and dtype and a memory branch set away
    from zero (open gates, as after training)."""
    param = next(cdit.parameters())
    hybrid = HybridCDiT(**cdit.get_config(), **options).to(param.device, param.dtype).eval()
    hybrid.load_state_dict(cdit.state_dict(), strict=False)
    with torch.no_grad():
        for p in hybrid.memory_parameters():
            p.normal_(0, 0.02)
    return hybrid


def measure_workloads(
    hybrid: HybridCDiT,
    cdit: CDiT,
    inputs: tuple[torch.Tensor, ...],
    context: Callable[[bool], MemoryContext],
    loop: int,
    repeats: int,
) -> list[tuple[str, float, float, float]]:
    """``(workload, hybrid s, CDiT s, ratio of medians)`` of the three workloads of
    :func:`_workloads`, each after one warm-up call of both models, without gradients."""
    device = inputs[0].device
    rows = []
    for workload, h_fn, c_fn, reps in _workloads(hybrid, cdit, inputs, context, loop, repeats):
        with torch.no_grad():
            h_fn()
            c_fn()
            rows.append((workload, *median_ratio(h_fn, c_fn, reps, device)))
    return rows


def add_workload_args(parser: argparse.ArgumentParser, *, repeats: int) -> None:
    """The model and workload flags: ``--variant``, ``--input-size``, ``--batch``, ``--k``,
    ``--repeats`` (default ``repeats``), ``--loop`` and ``--device``."""
    parser.add_argument("--variant", default="B/2")
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--loop", type=int, default=10, help="forwards sharing one context")
    parser.add_argument("--device", default="cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_workload_args(parser, repeats=15)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--memory-time-embedding", action="store_true")
    parser.add_argument(
        "--memory-pose-encoding",
        default="rays",
        choices=["frame", "rays"],
        help="library default: rays",
    )
    parser.add_argument(
        "--memory-ray-alignment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ray-aligned memory attention (the library's default)",
    )
    parser.add_argument("--only-default", action="store_true", help="skip full resolution")
    parser.add_argument(
        "--only-full-resolution", action="store_true", help="skip the default memory tokens"
    )
    parser.add_argument("--flops", action="store_true", help="count operations, do not time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cdit = create_model(f"CDiT-{args.variant}", input_size=args.input_size).to(device, dtype).eval()
    assert isinstance(cdit, CDiT)
    x, t, y, x_cond, rel_t = model_inputs(cdit, args.batch, device, dtype)
    n, s = args.batch, cdit.input_size

    timed = args.memory_time_embedding
    options = {
        "memory_time_embedding": timed,
        "memory_pose_encoding": args.memory_pose_encoding,
        "memory_ray_alignment": args.memory_ray_alignment,
    }

    def context(active: bool) -> MemoryContext:
        return memory_context(x, args.k, active=active, timed=timed)

    print(
        f"HybridCDiT-{args.variant} vs CDiT-{args.variant}: input {s}, batch {n}, k={args.k}, "
        f"{device.type} {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"options: {options}")
    print(f"{'memory tokens':<22}{'workload':<34}{'hybrid ms':>10}{'cdit ms':>10}{'ratio':>8}")
    rows = [("default", None), ("full resolution", cdit.patch_size)]
    if args.only_default:
        rows = rows[:1]
    if args.only_full_resolution:
        rows = rows[1:]
    for label, patch in rows:
        hybrid = trained_like_hybrid(cdit, memory_patch_size=patch, **options)
        name = f"{label} (p={hybrid.memory_patch_size})"
        if args.flops:
            _print_flops(name, hybrid, cdit, (x, t, y, x_cond, rel_t), context(True))
            continue
        measured = measure_workloads(
            hybrid, cdit, (x, t, y, x_cond, rel_t), context, args.loop, args.repeats
        )
        for workload, h, c_, ratio in measured:
            print(f"{name:<22}{workload:<34}{h * 1e3:>10.1f}{c_ * 1e3:>10.1f}{ratio:>8.3f}")


def _print_flops(
    name: str,
    hybrid: HybridCDiT,
    cdit: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    memory: MemoryContext,
) -> None:
    """GFLOP of one forward: hybrid with a fresh, then a cached context; CDiT; and, per memory
    layer, the key/value projection (once per context) and the rest of memory attention (every
    forward), each as a share of a CDiT layer."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn: Callable[[], object]) -> dict[str, float]:
        # the math backend decomposes attention into counted matrix products
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            fn()
        return {k: float(sum(v.values())) for k, v in fc.get_flop_counts().items()}

    fresh = count(lambda: hybrid(*inputs, memory=memory))
    cached = count(lambda: hybrid(*inputs, memory=memory))
    plain = count(lambda: cdit(*inputs))
    root, layer = type(hybrid).__name__, hybrid.memory_layers[0]
    attn = f"{root}.blocks.{layer}.memory_attn"
    block = plain[f"{type(cdit).__name__}.blocks.0"]
    kv = fresh[f"{attn}.kv_proj"]
    rest = cached[attn]  # query and output projections and attention, every forward
    g = 1e9
    print(
        f"{name:<22}GFLOP hybrid fresh {fresh['Global'] / g:.2f} "
        f"({fresh['Global'] / plain['Global']:.3f} x CDiT), cached {cached['Global'] / g:.2f} "
        f"({cached['Global'] / plain['Global']:.3f} x), CDiT {plain['Global'] / g:.2f}; per memory "
        f"layer: kv_proj {kv / block:.3f}, rest {rest / block:.3f} of a CDiT layer "
        f"({block / g:.2f})"
    )


def _workloads(
    hybrid: HybridCDiT,
    cdit: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    context: Callable[[bool], MemoryContext],
    loop: int,
    repeats: int,
) -> list[tuple[str, Callable[[], None], Callable[[], None], int]]:
    """(name, hybrid workload, CDiT workload, repetitions) for the three measured cases."""
    x, t, y, x_cond, rel_t = inputs
    shared = context(True)
    inactive = context(False)

    def fresh() -> None:
        hybrid(x, t, y, x_cond, rel_t, memory=context(True))

    def cdit_fresh() -> None:
        context(True)  # the same context-building cost on both sides
        cdit(x, t, y, x_cond, rel_t)

    def denoising_loop() -> None:
        memory = MemoryContext(
            shared.frames,
            shared.poses,
            shared.scores,
            shared.mask,
            shared.query_pose,
            steps=shared.steps,
            query_step=shared.query_step,
        )
        for i in range(loop):
            hybrid(x, t - i, y, x_cond, rel_t, memory=memory)

    def cdit_loop() -> None:
        for i in range(loop):
            cdit(x, t - i, y, x_cond, rel_t)

    def none_active() -> None:
        hybrid(x, t, y, x_cond, rel_t, memory=inactive)

    def cdit_once() -> None:
        cdit(x, t, y, x_cond, rel_t)

    return [
        ("one forward, fresh context", fresh, cdit_fresh, repeats),
        (f"{loop} forwards, one context", denoising_loop, cdit_loop, max(3, repeats // 3)),
        ("no active sample", none_active, cdit_once, repeats),
    ]


if __name__ == "__main__":
    main()
