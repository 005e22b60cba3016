"""Quickstart: an NWM CDiT checkpoint in a HybridCDiT, function preservation, memory.

1. A CDiT checkpoint: ``--checkpoint PATH`` (an NWM ``train.py`` file, a bare state dict or a
   ``.safetensors`` file), or by default a small random CDiT written in NWM's ``train.py``
   layout (``model``, ``ema``, ``opt``, ``args``, ``epoch``, ``train_steps``) to a temp dir.
2. ``HybridCDiT.from_cdit_checkpoint``: the configuration is read from the tensors' shapes,
   the EMA weights are loaded, with safe unpickling (``weights_only=True``).
3. Function preservation: with a memory attached, the fresh hybrid returns the CDiT's output.
4. One forward with memory retrieved by pose from a ``MemoryBuffer``, and what happens once the
   memory branch moves away from its zero initialisation (as training does).

Run: ``python examples/quickstart.py`` (about a second after imports on a CPU).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from hybrid_cdit import CDiT, HybridCDiT
from hybrid_cdit.memory import MemoryBuffer

TINY: dict[str, Any] = {
    "input_size": 8,  # latent side (NWM: 224 px // 8 = 28, 256 px // 8 = 32)
    "context_size": 2,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "depth": 6,
    "num_heads": 4,
}
"""A CDiT small enough for a CPU. Its width matches no NWM variant, so ``num_heads`` is passed
explicitly when loading (for NWM's XL/L/B/S it is inferred)."""


def write_random_nwm_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save a random CDiT the way NWM's ``train.py`` does and return ``path``."""
    torch.manual_seed(seed)
    model = CDiT(**TINY)
    with torch.no_grad():  # NWM's init zeroes adaLN and output layers: outputs would all be 0
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    checkpoint = {
        "model": model.state_dict(),
        "ema": model.state_dict(),
        "opt": opt.state_dict(),
        "args": argparse.Namespace(model="CDiT-tiny", context_size=TINY["context_size"]),
        "epoch": 0,
        "train_steps": 0,
    }
    torch.save(checkpoint, path)
    return path


def random_inputs(model: CDiT, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """NWM's forward inputs ``x, t, y, x_cond, rel_t`` for ``model``."""
    g = torch.Generator().manual_seed(seed)
    c, s, n = model.in_channels, model.input_size, model.context_size
    return {
        "x": torch.randn(batch, c, s, s, generator=g),  # noised target latent
        "t": torch.randint(0, 1000, (batch,), generator=g),  # diffusion step
        "y": torch.randn(batch, 3, generator=g),  # action (dx, dy, dyaw)
        "x_cond": torch.randn(batch, n, c, s, s, generator=g),  # context latents
        "rel_t": torch.ones(batch),  # relative time of the target
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="CDiT checkpoint (default: random)")
    parser.add_argument("--num-heads", type=int, help="heads, for widths of no NWM variant")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: 1 for the random model, torch's default with --checkpoint)",
    )
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.checkpoint is None else None)
    if threads is not None:
        torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint
        heads = args.num_heads
        if path is None:
            path = write_random_nwm_checkpoint(Path(tmp) / "cdit.pth.tar", args.seed)
            heads = TINY["num_heads"]
        overrides = {} if heads is None else {"num_heads": heads}
        cdit = CDiT.from_cdit_checkpoint(path, **overrides).eval()
        hybrid = HybridCDiT.from_cdit_checkpoint(path, **overrides).eval()
    print(f"checkpoint: {args.checkpoint or 'a random CDiT saved in NWM train.py layout'}")
    print(
        f"hybrid: memory layers {hybrid.memory_layers} of {hybrid.depth}, retrieval "
        f"{hybrid.retrieval!r}, top-k {hybrid.memory_top_k}"
    )

    # Two samples, each with its own memory: sample 0 has frames near the query pose, sample 1
    # only frames 30 m away (retrieval scores exp(-30 / 10) < 0.7: masked, memory inactive).
    batch, c, s = 2, hybrid.in_channels, hybrid.input_size
    inputs = random_inputs(hybrid, batch, args.seed)
    buffer = MemoryBuffer(batch_size=batch, capacity=8, frame_shape=(c, s, s), pose_dim=3)
    g = torch.Generator().manual_seed(args.seed + 1)
    for step in range(4):
        near = torch.tensor([step * 0.5, 0.0, 0.0])  # (x, y, yaw): metres, radians
        far = torch.tensor([30.0 + step, 0.0, math.pi])
        buffer.add(torch.randn(batch, c, s, s, generator=g), torch.stack([near, far]))
    query = torch.zeros(batch, 3)  # the pose of the frame being predicted
    memory = buffer.retrieve(query, k=hybrid.memory_top_k, threshold=0.7)
    print(
        f"retrieved slots per sample: {memory.mask.sum(1).tolist()}, activation "
        f"{[round(a, 3) for a in hybrid.activation(memory).tolist()]}, active "
        f"{hybrid.active_samples(memory).tolist()}"
    )

    with torch.no_grad():
        expected = cdit(**inputs)
        out = hybrid(**inputs, memory=memory)
    print(f"output shape: {tuple(out.shape)} (2C channels: noise and variance, as NWM)")
    diff = (out - expected).abs().max().item()
    print(f"function preservation: max |hybrid - CDiT| = {diff:.3e} with memory attached")
    if diff > 1e-5:
        raise SystemExit("the converted hybrid does not reproduce the CDiT")

    # What training does: move the memory branch (zero output gates at first) away from zero.
    with torch.no_grad():
        for param in hybrid.memory_parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=g))
        moved = hybrid(**inputs, memory=memory)
    per_sample = (moved - expected).flatten(1).abs().amax(1).tolist()
    print(
        "after perturbing the memory parameters, max |hybrid - CDiT| per sample: "
        + ", ".join(f"{d:.3e}" for d in per_sample)
        + " (sample 1 has no memory above the threshold: exactly the CDiT)"
    )


if __name__ == "__main__":
    main()
