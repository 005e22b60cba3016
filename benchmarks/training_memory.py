"""Memory and time of one HybridCDiT training step: plain, checkpointed, memory-only.

    python benchmarks/training_memory.py                 # B/2, input 28, batch 4, k=8, CPU
    python benchmarks/training_memory.py --rounds 5 --steps 3

One AdamW training step (forward, MSE loss, backward, optimizer step) of HybridCDiT-B/2 with
every sample's memory active (k frames, all valid, score 0.9), in these settings:

- ``plain``: every parameter trains, no activation checkpointing;
- ``checkpointed``: the same with ``model.set_grad_checkpointing()``;
- ``memory_only``: ``model.freeze_cdit()``, no checkpointing.

Each setting runs in a fresh Python subprocess (nothing allocated by one setting can lower or
raise another's figures): a warm-up step, then ``--steps`` measured steps. The settings take
turns for ``--rounds`` rounds; figures are medians over steps and rounds.

How memory is measured (CPU, no tracemalloc, no allocator hooks): each subprocess runs with
glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB, so every tensor buffer is its own ``mmap``
and is returned to the OS the moment it is freed; the process's resident set then follows the
bytes held by tensors closely. Before a measured step the subprocess resets the kernel's
resident-set high-water mark (``echo 5 > /proc/self/clear_refs``) and reads ``VmRSS``; after
the step it reads ``VmHWM``. ``activation peak = VmHWM - VmRSS before the step``. A warm-up
step runs first and gradients are zeroed in place (``zero_grad(set_to_none=False)``), so what
is held before a measured step already includes parameters, gradients and optimizer state: the
peak above it is what the step itself allocates (activations saved for the backward and the
temporaries of the backward), which is what checkpointing trades for compute.
``optimizer_state`` is the bytes of the AdamW state tensors after the steps.

How time is measured: the step's user CPU time (``getrusage``, all threads of the subprocess;
one torch thread by default, ``--threads``) and its wall-clock time. User CPU time is what the
step computes: it hardly depends on other processes sharing the machine, and it leaves out the
kernel's work of mapping fresh pages that the memory method above adds. ``time_ratio`` uses it;
``wall_time_ratio`` is printed too (on a dedicated, idle machine with the default allocator the
two agree).

The last line is JSON with ``activation_peak_ratio`` (checkpointed / plain), ``time_ratio``
(checkpointed / plain step CPU time) and ``optimizer_state_ratio`` (memory-only / plain), plus
every measured figure. Absolute times on shared machines mean little: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hybrid_cdit import HybridCDiT, MemoryContext, create_model

SETTINGS = ("plain", "checkpointed", "memory_only")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _user_cpu_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def training_batch(
    model: HybridCDiT, batch: int, k: int
) -> tuple[dict[str, torch.Tensor], MemoryContext]:
    """Seeded random CPU inputs for ``batch`` samples of ``model`` and a context of ``k``
    valid frames a sample, all active (score 0.9)."""
    g = torch.Generator().manual_seed(0)
    c, s, ctx = model.in_channels, model.input_size, model.context_size
    inputs = {
        "x": torch.randn(batch, c, s, s, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "y": torch.randn(batch, 3, generator=g),
        "x_cond": torch.randn(batch, ctx, c, s, s, generator=g),
        "rel_t": torch.rand(batch, generator=g),
    }
    poses = torch.randn(batch, k, 3, generator=g)
    memory = MemoryContext(
        frames=torch.randn(batch, k, c, s, s, generator=g),
        poses=poses,
        scores=torch.full((batch, k), 0.9),
        mask=torch.ones(batch, k, dtype=torch.bool),
        query_pose=poses[:, 0] + 0.1,
    )
    return inputs, memory


def open_gates(model: HybridCDiT) -> None:
    """Set the zero-initialised adaLN and final layers away from zero, so that memory shapes
    every gradient (as in a model being trained)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(std=0.02)


def training_step(
    model: HybridCDiT,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    memory: MemoryContext,
    target: torch.Tensor,
    amp: torch.dtype | None = None,
) -> Callable[[], None]:
    """One step: zero the gradients in place, forward (under autocast to ``amp`` if given),
    MSE loss against ``target``, backward, optimizer step."""
    device_type = target.device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
            out: torch.Tensor = model(**inputs, memory=memory)
            loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One setting: a warm-up step, then ``--steps`` measured steps."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(f"HybridCDiT-{args.variant}", input_size=args.input_size).train()
    assert isinstance(model, HybridCDiT)
    open_gates(model)
    if args.setting == "checkpointed":
        model.set_grad_checkpointing()
    if args.setting == "memory_only":
        model.freeze_cdit()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, memory = training_batch(model, args.batch, args.k)
    target = torch.randn(args.batch, model.out_channels, args.input_size, args.input_size)
    step = training_step(model, optimizer, inputs, memory, target)
    step()  # warm-up: gradients and optimizer state now exist
    times, cpu_times, peaks = [], [], []
    for _ in range(args.steps):
        _reset_peak()
        before = _status_kib("VmRSS")
        start, cpu_start = time.perf_counter(), _user_cpu_s()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(_user_cpu_s() - cpu_start)
        peaks.append(_status_kib("VmHWM") - before)
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "setting": args.setting,
        "step_s": statistics.median(times),
        "step_cpu_s": statistics.median(cpu_times),
        "activation_peak_mib": max(peaks) / 1024,
        "optimizer_state_mib": state_bytes / 2**20,
        "trainable_parameters": trainable,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _run_child(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        setting,
        "--variant",
        args.variant,
        "--input-size",
        str(args.input_size),
        "--batch",
        str(args.batch),
        "--k",
        str(args.k),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--variant", default="B/2")
    parser.add_argument("--input-size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="turns of all settings")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per subprocess")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--child", choices=SETTINGS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        args.setting = args.child
        print(json.dumps(_child(args)))
        return

    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    for round_ in range(args.rounds):
        order = SETTINGS if round_ % 2 == 0 else tuple(reversed(SETTINGS))
        for setting in order:
            runs[setting].append(_run_child(args, setting))
    keys = (
        "step_s",
        "step_cpu_s",
        "activation_peak_mib",
        "optimizer_state_mib",
        "trainable_parameters",
        "parameters",
    )
    summary: dict[str, dict[str, float]] = {
        setting: {key: statistics.median(float(r[key]) for r in results) for key in keys}
        for setting, results in runs.items()
    }
    print(f"HybridCDiT-{args.variant}, input {args.input_size}, batch {args.batch}, k={args.k}")
    print(
        f"{'setting':<14}{'step s':>9}{'CPU s':>9}{'act. peak MiB':>15}{'optim. MiB':>12}"
        f"{'trainable':>13}"
    )
    for setting, s in summary.items():
        print(
            f"{setting:<14}{s['step_s']:>9.3f}{s['step_cpu_s']:>9.3f}"
            f"{s['activation_peak_mib']:>15.1f}"
            f"{s['optimizer_state_mib']:>12.1f}{int(s['trainable_parameters']):>13,}"
        )
    plain, ckpt, frozen = (summary[s] for s in SETTINGS)
    report = {
        "variant": args.variant,
        "input_size": args.input_size,
        "batch": args.batch,
        "k": args.k,
        "rounds": args.rounds,
        "activation_peak_ratio": ckpt["activation_peak_mib"] / plain["activation_peak_mib"],
        "time_ratio": ckpt["step_cpu_s"] / plain["step_cpu_s"],
        "wall_time_ratio": ckpt["step_s"] / plain["step_s"],
        "optimizer_state_ratio": frozen["optimizer_state_mib"] / plain["optimizer_state_mib"],
        "memory_only_time_ratio": frozen["step_cpu_s"] / plain["step_cpu_s"],
        "settings": summary,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
