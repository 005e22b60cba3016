"""Bytes that autograd saves for the backward, per sample, per CDiT block and per memory block.

    python benchmarks/activation_bytes.py                    # XL/2, input 32, k=8
    python benchmarks/activation_bytes.py --autocast          # bf16 autocast, as NWM trains
    python benchmarks/activation_bytes.py --bf16              # bf16 weights (FSDP2 param_dtype)

Builds the variant's geometry (width, heads, input size, context size, memory settings) with
three blocks, the second a memory block, runs training forwards of one and of two samples with
every memory slot valid, and records every tensor that autograd saves
(``saved_tensors_hooks``), counted once per storage, parameters excluded, under the block that
saves it first: the first block also holds what every block shares (the normalised context
tokens), the memory block and the last block (a CDiT block after a memory layer) only what
they save themselves. The full model, ``F`` blocks before its first memory layer, ``m`` memory
layers and ``A`` CDiT blocks after the first memory layer, saves per sample
``root + first + (F - 1) * before + A * cdit_block + m * memory_block + final``, where
``before`` is ``cdit_block``, or the first block's figure with ``--freeze-cdit`` (frozen
blocks before the first memory layer save nothing). With ``set_grad_checkpointing()`` it keeps
about the block inputs of every block plus one block's own activations (recomputed in the
backward). The figures are differences between the four-sample and the two-sample forward,
halved (with one sample some reshapes return views that keep a larger buffer alive); what
does not grow with the batch (under bf16 autocast, the bf16 copies of the weights kept for the
backward) is printed as "fixed". Attention runs on PyTorch's CPU kernels for
``F.scaled_dot_product_attention``: whatever they save is counted; fused CUDA kernels may save
less.
Prints a table and, last, a JSON line with the figures in bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

import torch

from hybrid_cdit import HybridCDiT, MemoryContext, create_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--variant", default="XL/2")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast, as NWM trains")
    parser.add_argument("--bf16", action="store_true", help="bf16 parameters and inputs")
    parser.add_argument("--freeze-cdit", action="store_true", help="memory-only fine-tuning")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"depth": 3, "memory_layers": [1]}
    if args.input_size is not None:
        overrides["input_size"] = args.input_size
    with torch.device("meta"):  # the full model's depth and memory layers, no weights
        full = create_model(f"HybridCDiT-{args.variant}")
    assert isinstance(full, HybridCDiT)
    depth, layers, first = full.depth, len(full.memory_layers), full.memory_layers[0]
    after = depth - first - layers
    torch.manual_seed(0)
    model = create_model(f"HybridCDiT-{args.variant}", **overrides).train()
    assert isinstance(model, HybridCDiT)
    del full
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model.to(dtype)

    c, s, ctx, k = model.in_channels, model.input_size, model.context_size, args.k
    names = dict(zip(map(id, model.blocks), ("first", "memory_block", "cdit_block"), strict=True))
    if args.freeze_cdit:
        model.freeze_cdit()
    where = ["root"]
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: where.__setitem__(0, names[id(m)]))
        block.register_forward_hook(lambda m, a, o: where.__setitem__(0, "final"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(n: int) -> dict[str, int]:
        """Bytes saved for the backward by a training forward of ``n`` samples, by owner."""
        g = torch.Generator().manual_seed(0)
        inputs = {
            "x": torch.randn(n, c, s, s, generator=g).to(dtype),
            "t": torch.randint(0, 1000, (n,), generator=g),
            "y": torch.randn(n, 3, generator=g).to(dtype),
            "x_cond": torch.randn(n, ctx, c, s, s, generator=g).to(dtype),
            "rel_t": torch.rand(n, generator=g).to(dtype),
        }
        memory = MemoryContext(
            frames=torch.randn(n, k, c, s, s, generator=g),
            poses=torch.randn(n, k, 3, generator=g),
            scores=torch.full((n, k), 0.9),
            mask=torch.ones(n, k, dtype=torch.bool),
            query_pose=torch.zeros(n, 3),
        )
        owner: dict[int, tuple[str, int]] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in params and ptr not in owner:
                owner[ptr] = (where[0], storage.nbytes())
            return tensor

        where[0] = "root"
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if args.autocast
            else contextlib.nullcontext()
        )
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**inputs, memory=memory)
        totals = dict.fromkeys(("root", "first", "memory_block", "cdit_block", "final"), 0)
        for name, size in owner.values():
            totals[name] += size
        del out
        return totals

    # per sample = (bytes(4 samples) - bytes(2 samples)) / 2: what does not grow with the batch
    # (under autocast, the bf16 copies of the weights) is reported as "fixed". No batch of one:
    # there some reshapes return views, and a saved view keeps its whole buffer alive (the
    # keys of the memory attention keep the fused key/value projection), which batches of two
    # and more copy per sample.
    two, four = saved_bytes(2), saved_bytes(4)
    totals = {key: (four[key] - two[key]) // 2 for key in two}
    fixed = {key: two[key] - 2 * totals[key] for key in two}

    def whole_model(parts: dict[str, int]) -> int:
        """Bytes of the full-depth model from the measured parts."""
        return (
            parts["root"]
            + parts["first"]
            + (first - 1) * parts["first" if args.freeze_cdit else "cdit_block"]
            + after * parts["cdit_block"]
            + layers * parts["memory_block"]
            + parts["final"]
        )

    per_sample, fixed_step = whole_model(totals), whole_model(fixed)
    tokens = model.num_patches
    # the residual stream is float32 under autocast too; bf16 with bf16 parameters
    block_input = tokens * model.hidden_size * (2 if args.bf16 else 4)
    checkpointed = (
        totals["root"]
        + max(0, totals["first"] - totals["cdit_block"])  # what the blocks share
        + depth * block_input
        + max(totals["cdit_block"], totals["memory_block"])
        + totals["final"]
    )
    precision = "bf16 autocast" if args.autocast else "float32"
    if args.bf16:
        precision = "bf16 parameters" + (" and autocast" if args.autocast else "")
    if args.freeze_cdit:
        precision += ", freeze_cdit"
    print(
        f"HybridCDiT-{args.variant}: input {s}, context {ctx}, k={k}, depth {depth}, "
        f"{layers} memory layers, {precision}"
    )
    for key, value in totals.items():
        print(f"  {key:<14}{value / 2**20:>10.2f} MiB per sample")
    print(f"  fixed         {fixed_step / 2**20:>10.1f} MiB per step, whole model (weight casts)")
    print(f"  per sample    {per_sample / 2**20:>10.1f} MiB (all blocks)")
    print(f"  checkpointed  {checkpointed / 2**20:>10.1f} MiB (approx.)")
    print(
        json.dumps(
            {
                "variant": args.variant,
                "precision": precision,
                **totals,
                "depth": depth,
                "memory_layers": layers,
                "per_sample": per_sample,
                "checkpointed_per_sample": checkpointed,
                "fixed_per_step": fixed_step,
            }
        )
    )


if __name__ == "__main__":
    main()
