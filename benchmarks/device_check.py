"""One command that measures the library on a GPU within a fixed time: forward cost, training
step, loading, and (if time remains) Memory Maze at a larger scale.

    PYTHONPATH=src python benchmarks/device_check.py --out $OUT      # one H200: at most 9 min
    python benchmarks/device_check.py --smoke --out DIR               # CPU, tiny sizes, seconds

Parts, each with its own time budget (:data:`BUDGET_S`, scaled by ``--budget-scale``):

1. ``forward``: CDiT and HybridCDiT (XL/2, input 28, context 4, k = 8) with the same CDiT
   weights and a trained-like memory branch, under bf16 autocast and in pure bf16, batch 1 and
   16: hybrid / CDiT time ratios (CUDA events after a warm-up) for one forward with a fresh
   context, ten forwards sharing one, and no active sample (``benchmarks/hybrid_overhead.py``'s
   workloads); the ``scaled_dot_product_attention`` backend each attention runs; the memory
   attention alone with its float ray-alignment bias, with only the key mask (the same layer
   without ray alignment), with no mask at all, and with ``flex_attention`` computing the bias
   in a ``score_mod`` (compiled on CUDA, eager elsewhere).
2. ``train``: HybridCDiT-XL/2 training steps (AdamW, bf16 autocast, every sample's memory
   active), plain, with ``set_grad_checkpointing`` and with ``freeze_cdit``: step time and
   ``torch.cuda.max_memory_allocated``. The batch starts at ``--train-batch`` and halves on
   out-of-memory.
3. ``load``: an XL/2 NWM-layout checkpoint made on the spot (``benchmarks/checkpoint_io.py``),
   ``HybridCDiT.from_cdit_checkpoint(..., device, dtype=torch.bfloat16)`` time and peak host
   anonymous memory; ``MemoryBuffer.retrieve`` of k = 8 frames for B = 16 to the device, and
   pinned against pageable copies of the same bytes.
4. ``maze``: ``python -m benchmarks.maze`` with :data:`MAZE_FLAGS` in a subprocess, given what
   remains of the total budget; its ``summary.json`` is kept under ``summary``.

A part runs unit by unit; before each unit the part's deadline is checked against an estimate
taken from the units already timed, and a unit that would overrun is skipped and listed in
``units_skipped``. Every key of :data:`SCHEMA` is always written (null where not measured) to
``device_check.json``, after each part and in a ``finally`` block, with ``device_check.md`` a
short table. A part that fails records the error in ``skipped`` and the run goes on; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark modules
import checkpoint_io
import hybrid_overhead
import training_memory

from hybrid_cdit import CDiT, HybridCDiT
from hybrid_cdit.attention import merge_heads, multihead_attention, split_heads
from hybrid_cdit.memory import MemoryBuffer
from hybrid_cdit.registry import VARIANTS

REPO = Path(__file__).resolve().parents[1]
JSON_NAME = "device_check.json"
TABLE_NAME = "device_check.md"

# ------------------------------------------------------------------------------ what is written

PARTS = ("forward", "train", "load", "maze")
TOTAL_S = 540.0
"""The whole run's budget in seconds (9 minutes), before ``--budget-scale``."""
BUDGET_S: dict[str, float | None] = {"forward": 150.0, "train": 150.0, "load": 90.0, "maze": None}
"""Each part's budget in seconds; None: what remains of :data:`TOTAL_S` (less
:data:`MARGIN_S`)."""
MARGIN_S = 15.0
"""Seconds kept back at the end of the total budget for writing the results."""
FLEX_COMPILE_S = 60.0
"""Seconds set aside for compiling ``flex_attention`` on CUDA (its estimate)."""
WRITE_BYTES_PER_S = 300e6
"""Assumed write speed of the scratch disk: the estimate of making the checkpoint file."""

MODES = ("autocast", "bf16")
BATCHES = (1, 16)
WORKLOADS = ("fresh", "loop", "inactive")
"""``hybrid_overhead``'s workloads, in its order: one forward with a fresh context, ``loop``
forwards sharing one, no active sample."""
ATTENTIONS = {"attn": "self", "cttn": "context", "memory_attn": "memory"}
"""Attention modules of a block, by attribute name, and their label."""
MEMORY_ATTENTION = ("bias", "key_mask", "no_mask", "flex")
TRAIN_SETTINGS = training_memory.SETTINGS

COMMON = ("skipped", "budget_s", "elapsed_s", "units_skipped")
SCHEMA: dict[str, tuple[str, ...]] = {
    "meta": (
        "smoke",
        "device",
        "device_name",
        "torch",
        "cuda",
        "commit",
        "budget_scale",
        "total_budget_s",
        "elapsed_s",
        "errors",
    ),
    "forward": (
        *COMMON,
        *("variant", "input_size", "context_size", "k", "repeats", "loop"),
        *(
            f"{mode}_b{batch}_{workload}_{what}"
            for mode in MODES
            for batch in BATCHES
            for workload in WORKLOADS
            for what in ("hybrid_ms", "cdit_ms", "ratio")
        ),
        *(f"backend_{label}" for label in ATTENTIONS.values()),
        "memory_attention_shape",
        *(f"memory_attention_{v}_{w}" for v in MEMORY_ATTENTION for w in ("ms", "backend")),
        "flex_max_abs_diff",
        "flex_error",
    ),
    "train": (
        *COMMON,
        *("variant", "batch", "amp", "steps"),
        *(
            f"{setting}_{what}"
            for setting in TRAIN_SETTINGS
            for what in ("step_ms", "max_memory_gib", "trainable_parameters")
        ),
        *("checkpointed_time_ratio", "checkpointed_memory_ratio"),
        *("memory_only_time_ratio", "memory_only_memory_ratio"),
    ),
    "load": (
        *COMMON,
        *("variant", "file_gb", "make_s", "load_s", "load_peak_host_gib", "model_gib"),
        *("transfer_batch", "transfer_k", "transfer_mib", "retrieve_ms"),
        *("pinned_copy_ms", "pageable_copy_ms", "pinned_skipped"),
    ),
    "maze": (*COMMON, "flags", "returncode", "seconds", "summary"),
}
"""Every key the JSON holds, part by part, in a smoke run and a full run alike."""

MAZE_FLAGS = ("--hidden", "384", "--steps", "5000", "--workers", "16", "--threads", "16")
"""Memory Maze at a larger scale than a CPU allows: hidden 384 (default 128), 5000 side-by-side
training steps (default 4000) after the default 2000 pretraining steps, episodes generated by 16
processes."""
MAZE_SMOKE_FLAGS = (
    *("--quick", "--train-episodes", "1", "--eval-episodes", "1", "--workers", "1"),
    *("--env-steps", "160", "--stride", "2", "--size", "8", "--steps", "2"),
    *("--pretrain-steps", "1", "--batch", "4", "--hidden", "32", "--depth", "2"),
    *("--heads", "2", "--patch-size", "2", "--ddim-steps", "2", "--max-revisit-targets", "4"),
    *("--rollout-length", "4", "--rollout-min-start", "10", "--rollouts-per-episode", "1"),
    *("--no-long-rollouts", "--curve-every", "2", "--curve-samples", "4", "--threads", "1"),
)
"""Tiny models on two short episodes: the maze part's plumbing in seconds."""


def empty_results() -> dict[str, dict[str, Any]]:
    """Every key of :data:`SCHEMA`, all None."""
    return {part: dict.fromkeys(keys) for part, keys in SCHEMA.items()}


# ------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    """What the parts measure: the full run's sizes, or the smoke run's tiny ones."""

    arch: dict[str, int]
    name: str
    repeats: int
    loop: int
    k: int
    train_batch: int
    train_steps: int


FULL = Sizes(
    arch={**VARIANTS["XL/2"], "input_size": 28, "context_size": 4},
    name="XL/2",
    repeats=10,
    loop=10,
    k=8,
    train_batch=128,
    train_steps=3,
)
SMOKE = Sizes(
    arch={
        "input_size": 8,
        "context_size": 4,
        "patch_size": 2,
        "in_channels": 4,
        "hidden_size": 64,
        "depth": 4,
        "num_heads": 4,
    },
    name="tiny (hidden 64, depth 4, input 8)",
    repeats=2,
    loop=2,
    k=8,
    train_batch=4,
    train_steps=1,
)


# ----------------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """A part's deadline: ``seconds`` from when it was made, on ``clock``."""

    seconds: float
    clock: Callable[[], float] = time.perf_counter
    start: float = field(init=False)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def allows(self, unit: str, estimate: float) -> bool:
        """Whether ``unit``, expected to take ``estimate`` seconds, ends before the deadline;
        when not, it is listed in :attr:`skipped`."""
        if self.elapsed() + estimate < self.seconds:
            return True
        self.skipped.append(unit)
        return False


@dataclass
class Run:
    """What every part is given."""

    sizes: Sizes
    device: torch.device
    args: argparse.Namespace

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _gib(nbytes: float) -> float:
    return round(nbytes / 2**30, 3)


def _median_s(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    return statistics.median(hybrid_overhead.elapsed_s(fn, device) for _ in range(repeats))


# ------------------------------------------------------------------------- attention backends

FUSED_SDPA = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}
"""Kernels ``scaled_dot_product_attention`` dispatches to, by aten name; with none of them,
attention ran as separate matrix products and a softmax (the math backend)."""


class SDPABackends(TorchDispatchMode):
    """Records, per label, the ``scaled_dot_product_attention`` kernels that run while a
    labelled module's forward is on the stack (:meth:`label`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, set[str]] = {}
        self._labels: list[str] = []

    @contextlib.contextmanager
    def label(self, name: str) -> Iterator[None]:
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    def hook(self, model: nn.Module) -> list[Any]:
        """Label the attention modules of ``model``'s blocks (:data:`ATTENTIONS`)."""
        handles = []
        for name, module in model.named_modules():
            label = ATTENTIONS.get(name.rsplit(".", 1)[-1])
            if label is None or not name.startswith("blocks."):
                continue
            handles.append(module.register_forward_pre_hook(self._enter(label)))
            handles.append(module.register_forward_hook(self._leave))
        return handles

    def _enter(self, label: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._labels.append(label)

        return hook

    def _leave(self, *_: Any) -> None:
        self._labels.pop()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self._labels:
            name = func.overloadpacket.__name__
            kind = FUSED_SDPA.get(name, "math" if name in ("_softmax", "softmax") else None)
            if kind is not None:
                self.seen.setdefault(self._labels[-1], set()).add(kind)
        return func(*args, **(kwargs or {}))

    def backend(self, label: str) -> str | None:
        """The fused kernels seen under ``label`` (``math`` when only a softmax ran)."""
        kinds = self.seen.get(label, set())
        fused = sorted(kinds - {"math"})
        return "+".join(fused) if fused else ("math" if kinds else None)


# ------------------------------------------------------------------------------- 1. forward


def part_forward(run: Run, rec: dict[str, Any], budget: Budget) -> None:
    sizes, device = run.sizes, run.device
    rec.update(
        variant=sizes.name,
        input_size=sizes.arch["input_size"],
        context_size=sizes.arch["context_size"],
        k=sizes.k,
        repeats=sizes.repeats,
        loop=sizes.loop,
    )
    if not budget.allows("models", 0.0):
        return
    torch.manual_seed(0)
    with torch.device(device):
        cdit = CDiT(**sizes.arch).eval()
        hybrid = hybrid_overhead.trained_like_hybrid(cdit)
    seconds: dict[int, float] = {}
    for mode in MODES:
        if mode == "bf16":
            cdit.to(torch.bfloat16)
            hybrid.to(torch.bfloat16)
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        for batch in BATCHES:
            unit = f"{mode}_b{batch}"
            known = max(seconds, default=None)
            estimate = seconds.get(batch, seconds[known] * batch / known if known else 0.0)
            if not budget.allows(unit, estimate):
                continue
            tick = time.perf_counter()
            inputs = hybrid_overhead.model_inputs(cdit, batch, device, dtype)

            def context(active: bool, x: torch.Tensor = inputs[0]) -> Any:
                return hybrid_overhead.memory_context(x, sizes.k, active=active)

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "autocast"):
                rows = hybrid_overhead.measure_workloads(
                    hybrid, cdit, inputs, context, sizes.loop, sizes.repeats
                )
            for workload, (_, h, c, ratio) in zip(WORKLOADS, rows, strict=True):
                rec[f"{unit}_{workload}_hybrid_ms"] = _ms(h)
                rec[f"{unit}_{workload}_cdit_ms"] = _ms(c)
                rec[f"{unit}_{workload}_ratio"] = round(ratio, 4)
            seconds[batch] = time.perf_counter() - tick
    estimate = min(seconds.values(), default=0.0)
    if budget.allows("backends", estimate):
        _record_backends(run, hybrid, rec)
    if budget.allows("memory_attention", estimate):
        _memory_attention(run, hybrid, rec, budget)


def _record_backends(run: Run, hybrid: HybridCDiT, rec: dict[str, Any]) -> None:
    """The SDPA kernels of each attention in one pure-bf16 forward with active memory."""
    batch = max(BATCHES)
    dtype = next(hybrid.parameters()).dtype
    inputs = hybrid_overhead.model_inputs(hybrid, batch, run.device, dtype)
    memory = hybrid_overhead.memory_context(inputs[0], run.sizes.k, active=True)
    recorder = SDPABackends()
    handles = recorder.hook(hybrid)
    try:
        with torch.no_grad(), recorder:
            hybrid(*inputs, memory=memory)
    finally:
        for handle in handles:
            handle.remove()
    for label in ATTENTIONS.values():
        rec[f"backend_{label}"] = recorder.backend(label)


def _memory_attention(run: Run, hybrid: HybridCDiT, rec: dict[str, Any], budget: Budget) -> None:
    """The first memory layer's attention alone, at its shapes in bf16, four ways."""
    from torch.nn.attention.flex_attention import flex_attention

    device, batch = run.device, max(BATCHES)
    layer = hybrid.hybrid_blocks()[hybrid.memory_layers[0]].memory_attn
    heads, width = layer.num_heads, layer.inner_dim
    queries = (layer.grid_size // layer.ratio) ** 2
    keys = run.sizes.k * hybrid.memory_tokens_per_frame
    rec["memory_attention_shape"] = (
        f"batch {batch}, heads {heads}, head dim {width // heads}, {queries} queries, {keys} keys"
    )
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16)

    q = rand(batch, queries, width)
    k, v = rand(batch, heads, keys, width // heads), rand(batch, heads, keys, width // heads)
    mask = torch.rand(batch, keys, generator=gen, device=device) > 0.25
    mask[:, 0] = True
    distance = 4 * torch.rand(batch, queries, keys, generator=gen, device=device)
    strength = torch.linspace(0.5, 2.0, heads, device=device)

    def bias() -> torch.Tensor:  # as SelectiveMemoryAttention builds it
        return multihead_attention(
            q, k, v, heads, mask, -strength[None, :, None, None] * distance[:, None]
        )

    def score_mod(score: Any, b: Any, h: Any, qi: Any, ki: Any) -> Any:
        aligned = score - strength[h] * distance[b, qi, ki]
        return torch.where(mask[b, ki], aligned, -float("inf"))

    flex_fn = flex_attention
    # eager flex_attention warns that it is unfused; the result records "eager"
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    if device.type == "cuda":
        flex_fn = torch.compile(flex_attention, dynamic=False)

    def flex() -> torch.Tensor:
        out: torch.Tensor = flex_fn(split_heads(q, heads), k, v, score_mod=score_mod)
        return merge_heads(out)

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "bias": bias,
        "key_mask": lambda: multihead_attention(q, k, v, heads, mask),
        "no_mask": lambda: multihead_attention(q, k, v, heads),
        "flex": flex,
    }
    recorder = SDPABackends()
    estimate = 0.0
    for name, fn in variants.items():
        is_flex = name == "flex"
        extra = FLEX_COMPILE_S * run.args.budget_scale if is_flex and device.type == "cuda" else 0
        if not budget.allows(f"memory_attention_{name}", estimate + extra):
            continue
        tick = time.perf_counter()
        try:
            with torch.no_grad():
                # the recorder cannot pass flex_attention's higher-order operator through
                with contextlib.nullcontext() if is_flex else recorder, recorder.label(name):
                    out = fn()
                rec[f"memory_attention_{name}_ms"] = _ms(_median_s(fn, run.sizes.repeats, device))
        except Exception as exc:  # a kernel that cannot run is a finding
            if not is_flex:
                raise
            rec["flex_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            continue
        if is_flex:
            compiled = "compiled" if device.type == "cuda" else "eager"
            rec["memory_attention_flex_backend"] = f"flex_attention ({compiled})"
            with torch.no_grad():
                rec["flex_max_abs_diff"] = float((out.float() - bias().float()).abs().max())
        else:
            rec[f"memory_attention_{name}_backend"] = recorder.backend(name)
        estimate = max(estimate, time.perf_counter() - tick)


# --------------------------------------------------------------------------------- 2. train


def part_train(run: Run, rec: dict[str, Any], budget: Budget) -> None:
    sizes, device = run.sizes, run.device
    batch = run.args.train_batch or sizes.train_batch
    rec.update(variant=sizes.name, amp="bfloat16 autocast", steps=sizes.train_steps)
    estimate = 0.0
    figures: dict[str, tuple[float, float | None]] = {}
    for setting in TRAIN_SETTINGS:
        if not budget.allows(setting, estimate):
            continue
        tick = time.perf_counter()
        while True:
            step: Callable[[], None] | None = None
            try:
                step, trainable = _train_setup(run, setting, batch)
                step()  # warm-up: gradients and optimizer state now exist
                break
            except torch.OutOfMemoryError:
                if batch == 1 or figures:  # the batch is set by the first setting
                    raise
            # out of memory: free the model (outside the except block, whose traceback
            # still refers to it) and try half the batch
            step = None
            run.free()
            batch //= 2
        rec["batch"] = batch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed = step
        step_s = statistics.median(
            hybrid_overhead.elapsed_s(timed, device) for _ in range(sizes.train_steps)
        )
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        figures[setting] = (step_s, peak)
        rec[f"{setting}_step_ms"] = _ms(step_s)
        rec[f"{setting}_max_memory_gib"] = None if peak is None else _gib(peak)
        rec[f"{setting}_trainable_parameters"] = trainable
        del step, timed
        run.free()
        estimate = time.perf_counter() - tick
    plain = figures.get("plain")
    for setting in ("checkpointed", "memory_only"):
        other = figures.get(setting)
        if plain is None or other is None:
            continue
        rec[f"{setting}_time_ratio"] = round(other[0] / plain[0], 4)
        if plain[1] is not None and other[1] is not None:
            rec[f"{setting}_memory_ratio"] = round(other[1] / plain[1], 4)


def _train_setup(run: Run, setting: str, batch: int) -> tuple[Callable[[], None], int]:
    """A HybridCDiT training step in ``setting`` (``training_memory``'s) at ``batch``, and the
    number of trainable parameters."""
    torch.manual_seed(0)
    with torch.device(run.device):
        model = HybridCDiT(**run.sizes.arch).train()
    training_memory.open_gates(model)
    if setting == "checkpointed":
        model.set_grad_checkpointing()
    if setting == "memory_only":
        model.freeze_cdit()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs, memory = training_memory.training_batch(model, batch, run.sizes.k)
    inputs = {key: value.to(run.device) for key, value in inputs.items()}
    side = model.input_size
    target = torch.randn(batch, model.out_channels, side, side, device=run.device)
    step = training_memory.training_step(
        model, optimizer, inputs, memory.to(run.device), target, amp=torch.bfloat16
    )
    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------- 3. load


def part_load(run: Run, rec: dict[str, Any], budget: Budget) -> None:
    sizes, device = run.sizes, run.device
    rec["variant"] = sizes.name
    with torch.device("meta"):
        numel = sum(p.numel() for p in CDiT(**sizes.arch).parameters())
    file_bytes = 2 * 4 * numel  # model and ema, float32
    scratch = run.args.scratch
    with tempfile.TemporaryDirectory(prefix="device-check-", dir=scratch) as tmp:
        path = Path(tmp) / "cdit.pth.tar"
        if budget.allows("make_file", file_bytes / WRITE_BYTES_PER_S):
            tick = time.perf_counter()
            checkpoint_io.make_checkpoint(path, "XL/2", with_opt=False, arch=sizes.arch)
            rec["make_s"] = round(time.perf_counter() - tick, 3)
            rec["file_gb"] = round(path.stat().st_size / 1e9, 3)
        if path.exists() and budget.allows("from_cdit_checkpoint", rec["make_s"]):
            with checkpoint_io.AnonSampler() as sampler:
                baseline = sampler.peak
                tick = time.perf_counter()
                model = HybridCDiT.from_cdit_checkpoint(
                    path, device=device, dtype=torch.bfloat16, num_heads=sizes.arch["num_heads"]
                )
                run.sync()
                rec["load_s"] = round(time.perf_counter() - tick, 3)
            rec["load_peak_host_gib"] = _gib(sampler.peak - baseline)
            rec["model_gib"] = _gib(sum(t.nbytes for t in model.state_dict().values()))
            del model
            run.free()
    if budget.allows("transfers", 0.0):
        _transfers(run, rec)


def _transfers(run: Run, rec: dict[str, Any]) -> None:
    """``MemoryBuffer.retrieve`` of k frames for B samples to the device; pinned against
    pageable copies of the same bytes (CUDA only)."""
    device, k, batch = run.device, run.sizes.k, max(BATCHES)
    side, channels = run.sizes.arch["input_size"], run.sizes.arch.get("in_channels", 4)
    capacity = 50
    buffer = MemoryBuffer(
        batch, capacity, frame_shape=(channels, side, side), pose_dim=3, index_device=device
    )
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(capacity, batch, channels, side, side, generator=gen)
    poses = torch.zeros(capacity, batch, 3)
    poses[:, :, 0] = torch.arange(capacity, dtype=torch.float32)[:, None]
    for frame, pose in zip(frames, poses, strict=True):  # fill the buffer (set-up, not timed)
        buffer.add(frame, pose.to(device))
    query = poses[capacity // 2].to(device)
    rec.update(transfer_batch=batch, transfer_k=k)
    rec["transfer_mib"] = round(batch * k * channels * side * side * 4 / 2**20, 3)

    def retrieve() -> None:
        buffer.retrieve(query, k, threshold=0.0, device=device)

    rec["retrieve_ms"] = _ms(_median_s(retrieve, run.sizes.repeats, device))
    if device.type != "cuda":
        rec["pinned_skipped"] = "pinned memory needs CUDA"
        return
    pageable = torch.randn(batch * k, channels, side, side, generator=gen)
    pinned = pageable.pin_memory()
    for name, source in (("pinned", pinned), ("pageable", pageable)):
        rec[f"{name}_copy_ms"] = _ms(
            _median_s(lambda s=source: s.to(device), run.sizes.repeats, device)
        )


# ---------------------------------------------------------------------------------- 4. maze


def maze_available() -> str | None:
    """Why the Memory Maze benchmark cannot run here, or None when it can."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for module in ("memory_maze", "benchmarks.maze"):
        try:
            found = importlib.util.find_spec(module)
        except ImportError:
            found = None
        if found is None:
            return f"{module} is not importable"
    return None


def part_maze(run: Run, rec: dict[str, Any], budget: Budget) -> None:
    flags = MAZE_SMOKE_FLAGS if run.args.smoke else MAZE_FLAGS
    out = run.args.out / "maze"
    command = [*flags, "--out", str(out)]
    if run.args.maze_cache is not None:
        command += ["--cache-dir", str(run.args.maze_cache)]
    rec["flags"] = " ".join(command)
    reason = maze_available()
    if reason is not None:
        rec["skipped"] = reason
        return
    if not budget.allows("maze", 0.0):
        return
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    tick = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.maze", *command],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, budget.seconds - budget.elapsed()),
        )
    except subprocess.TimeoutExpired:
        rec["seconds"] = round(time.perf_counter() - tick, 1)
        rec["skipped"] = f"timed out after {rec['seconds']} s (the time left of the budget)"
        return
    rec["seconds"] = round(time.perf_counter() - tick, 1)
    rec["returncode"] = done.returncode
    if done.returncode != 0:
        rec["skipped"] = f"exit status {done.returncode}: {done.stderr[-500:]}"
        return
    summary = out / "summary.json"
    if summary.exists():
        rec["summary"] = json.loads(summary.read_text())
    else:
        rec["summary"] = json.loads(done.stdout.strip().splitlines()[-1])


PART_FUNCTIONS: dict[str, Callable[[Run, dict[str, Any], Budget], None]] = {
    "forward": part_forward,
    "train": part_train,
    "load": part_load,
    "maze": part_maze,
}


# ---------------------------------------------------------------------------------- output


def write(out: Path, results: dict[str, dict[str, Any]]) -> None:
    """``device_check.json`` (every key) and ``device_check.md`` (a short table)."""
    out.mkdir(parents=True, exist_ok=True)
    partial = out / (JSON_NAME + ".partial")
    partial.write_text(json.dumps(results, indent=1, default=str))
    os.replace(partial, out / JSON_NAME)
    (out / TABLE_NAME).write_text(table(results))


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def table(results: dict[str, dict[str, Any]]) -> str:
    """A short Markdown table of the headline figures of each part."""
    meta, fwd, train, load, maze = (results[p] for p in ("meta", *PARTS))
    lines = [
        f"device check: {_fmt(meta['device_name'])}, torch {meta['torch']}, "
        f"smoke {meta['smoke']}, {_fmt(meta['elapsed_s'])} s of {meta['total_budget_s']} s",
        "",
        "| part | status | s / budget | figures |",
        "|---|---|---:|---|",
    ]
    ratios = ", ".join(
        f"{w} {_fmt(fwd[f'{m}_b{b}_{w}_ratio'])}" for m in ("bf16",) for b in BATCHES[-1:]
        for w in WORKLOADS
    )  # fmt: skip
    attention = ", ".join(
        f"{v} {_fmt(fwd[f'memory_attention_{v}_ms'])} ms" for v in MEMORY_ATTENTION
    )
    rows = {
        "forward": f"hybrid/CDiT bf16 b{BATCHES[-1]}: {ratios}; memory attention {attention}",
        "train": "; ".join(
            f"{s} {_fmt(train[f'{s}_step_ms'])} ms {_fmt(train[f'{s}_max_memory_gib'])} GiB"
            for s in TRAIN_SETTINGS
        )
        + f" (batch {_fmt(train['batch'])})",
        "load": f"from_cdit {_fmt(load['load_s'])} s, host peak "
        f"{_fmt(load['load_peak_host_gib'])} GiB; retrieve {_fmt(load['retrieve_ms'])} ms",
        "maze": f"exit {_fmt(maze['returncode'])}, {_fmt(maze['seconds'])} s",
    }
    for part in PARTS:
        rec = results[part]
        status = "ok" if rec["skipped"] is None else f"skipped: {rec['skipped']}"
        if rec["units_skipped"]:
            status += f" (units skipped: {', '.join(rec['units_skipped'])})"
        lines.append(
            f"| {part} | {status} | {_fmt(rec['elapsed_s'])} / {_fmt(rec['budget_s'])} | "
            f"{rows[part]} |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    return done.stdout.strip() or None


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and table")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device, seconds")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every time budget by this"
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--train-batch", type=int, default=None, help="first training batch")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the checkpoint")
    parser.add_argument("--maze-cache", type=Path, default=None, help="Memory Maze episode cache")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: 1 with --smoke, else as is)"
    )
    args = parser.parse_args(argv)
    if args.budget_scale < 0 or not math.isfinite(args.budget_scale):
        parser.error(f"--budget-scale must be a finite number >= 0, got {args.budget_scale}")
    return args


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """Run the parts; ``started`` (``time.perf_counter()``) is when the total budget began,
    by default now. Returns 1 when a part failed, else 0."""
    args = parse_args(argv)
    # a command killed at its time limit still writes what it measured (the finally below)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    threads = args.threads or (1 if args.smoke else 0)  # one thread: the tiny models' fastest
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = Run(SMOKE if args.smoke else FULL, device, args)
    results = empty_results()
    total = TOTAL_S * args.budget_scale
    meta = results["meta"]
    meta.update(
        smoke=args.smoke,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        commit=_commit(),
        budget_scale=args.budget_scale,
        total_budget_s=total,
        errors=[],
    )
    started = time.perf_counter() if started is None else started
    try:
        for part in PARTS:
            rec = results[part]
            share = BUDGET_S[part]
            left = total - MARGIN_S * args.budget_scale - (time.perf_counter() - started)
            seconds = max(0.0, left if share is None else min(share * args.budget_scale, left))
            rec["budget_s"] = round(seconds, 1)
            if part not in args.parts:
                rec["skipped"] = "not requested (--parts)"
                continue
            budget = Budget(seconds)
            try:
                PART_FUNCTIONS[part](run, rec, budget)
            except Exception as exc:  # recorded; the other parts still run
                rec["skipped"] = f"error: {type(exc).__name__}: {str(exc)[:500]}"
                meta["errors"].append(part)
            finally:
                run.free()
            rec["elapsed_s"] = round(budget.elapsed(), 2)
            rec["units_skipped"] = budget.skipped
            if rec["skipped"] is None and budget.skipped and not _measured(part, rec):
                rec["skipped"] = f"time budget: nothing fitted in {rec['budget_s']} s"
            meta["elapsed_s"] = round(time.perf_counter() - started, 2)
            write(args.out, results)
    finally:
        meta["elapsed_s"] = round(time.perf_counter() - started, 2)
        write(args.out, results)
        signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(threads_before)
    print(table(results), end="")
    print(f"wrote {args.out / JSON_NAME} and {args.out / TABLE_NAME}")
    return 1 if meta["errors"] else 0


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where unavailable)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def _measured(part: str, rec: dict[str, Any]) -> bool:
    """Whether any figure of ``part`` was measured (beyond its description)."""
    described = set(COMMON) | {"variant", "input_size", "context_size", "k", "repeats", "loop"}
    described |= {"amp", "steps", "flags", "memory_attention_shape"}
    return any(rec[key] is not None for key in SCHEMA[part] if key not in described)


if __name__ == "__main__":
    # the process's start-up (imports) counts against the total budget
    sys.exit(main(started=time.perf_counter() - process_age_s()))
